"""Orthogonal Fashion Removal (spec §2.2): project the worn garment's direction out of the person latent.

``d = z_g − z_w`` is the garment direction (garment-on-white minus white latents) and ``û = d/‖d‖``;
``z̃ = z_p − α·⟨z_p − c₀, û⟩·û`` with the centre ``c₀ = z_w`` (``"white"``, our default: the garment moves onto
the white latent) or ``c₀ = 0`` (``"origin"``, the formula as the paper's summary states it). Norms and inner
products run over C·h·w per sample. The per-pixel variant projects each latent pixel over its channels, gated by
the latent garment mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["OFRResult", "garment_on_white", "orthogonal_removal"]

RHO_WARN = 0.8
BETA_WARN = 0.25


@dataclass
class OFRResult:
    """The attenuated latent and its per-sample diagnostics.

    Attributes:
        latent: ``z̃``, same shape and dtype as ``z_p``.
        beta: (B,) ``β = ⟨z_p − c₀, d⟩/‖d‖²`` (0 for no-op samples).
        d_norm: (B,) ``‖d‖``.
        inside_mass: (B,) ``ρ_in = ‖d⊙M̄_p‖²/‖d‖²`` (NaN without a mask or for no-op samples).
        noop: (B,) bool, ``‖d‖ ≤ ε·√(Chw)``: the latent is returned bit for bit.
        warnings: human-readable notes (``ρ_in < 0.8``: bad mask or a spreading VAE; ``β < 0.25``); returned, not
            raised, so loops stay quiet; the pipelines copy them into the sidecar.
    """

    latent: Tensor
    beta: Tensor
    d_norm: Tensor
    inside_mass: Tensor
    noop: Tensor
    warnings: list[str]

    def to_dict(self) -> dict:
        return {"beta": self.beta.tolist(), "d_norm": self.d_norm.tolist(),
                "inside_mass": self.inside_mass.tolist(), "noop": self.noop.tolist(), "warnings": self.warnings}


def garment_on_white(person: Tensor, garment_mask: Tensor, white: float = 1.0) -> Tensor:
    """``g = M_p ⊙ x_p + (1 − M_p) ⊙ w``: the person inside the garment mask, ``white`` elsewhere.

    person: (B,3,H,W) in [0,1] (pass ``white=1.0``) or [−1,1] (also ``white=1.0``: white is +1 there too).
    garment_mask: (B|1,1,H,W) in [0,1]; soft values blend.
    """
    if person.ndim != 4 or garment_mask.ndim != 4 or garment_mask.shape[1] != 1:
        raise ValueError(f"need person (B,3,H,W) and garment_mask (B,1,H,W), got {tuple(person.shape)} and "
                         f"{tuple(garment_mask.shape)}")
    if garment_mask.shape[-2:] != person.shape[-2:]:
        raise ValueError(f"garment mask is {garment_mask.shape[-1]}×{garment_mask.shape[-2]} (W×H) but the person "
                         f"image is {person.shape[-1]}×{person.shape[-2]}: pass the mask made for this image")
    m = garment_mask.to(person.dtype)
    return torch.where(m >= 1, person, m * person + (1 - m) * white)


def _per_sample(x: Tensor) -> Tensor:
    return x.flatten(1).sum(dim=1)


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def orthogonal_removal(
    z_p: Tensor,
    z_g: Tensor,
    z_w: Tensor,
    *,
    alpha: float = 1.0,
    mode: Literal["global", "per_pixel"] = "global",
    center: Literal["white", "origin"] = "white",
    mask: Tensor | None = None,
    eps: float = 1e-6,
) -> OFRResult:
    """Project the garment direction out of the person latent.

    Args:
        z_p, z_g: (B,C,h,w) latents of the person and of the garment on white.
        z_w: (B|1,C,h,w) latent of the white image.
        alpha: removal strength (1 = full projection; the result is then orthogonal to ``û`` around ``c₀``).
        mode: ``"global"`` (one direction per sample over C·h·w) or ``"per_pixel"`` (over channels per pixel).
        center: ``"white"`` (``c₀ = z_w``) or ``"origin"`` (``c₀ = 0``).
        mask: (B|1,1,h,w) latent garment mask: gates the per-pixel projection (default all ones) and gives
            ``inside_mass``.
        eps: the no-op threshold ``‖d‖ ≤ eps·√(Chw)`` (and the per-pixel ``‖d_hw‖ > eps``).
    Returns:
        :class:`OFRResult`. Where the correction is exactly zero (outside the garment of a local encoder, or a
        no-op sample) the person latent is returned bit for bit.
    """
    if z_p.shape != z_g.shape or z_p.ndim != 4:
        raise ValueError(f"z_p {tuple(z_p.shape)} and z_g {tuple(z_g.shape)} must be equal (B,C,h,w) latents")
    if z_w.shape[1:] != z_p.shape[1:] or z_w.shape[0] not in (1, z_p.shape[0]):
        raise ValueError(f"z_w {tuple(z_w.shape)} does not match the latents {tuple(z_p.shape)}")
    if mode not in ("global", "per_pixel"):
        raise ValueError(f"mode must be 'global' or 'per_pixel', got {mode!r}")
    if center not in ("white", "origin"):
        raise ValueError(f"center must be 'white' or 'origin', got {center!r}")
    z_w = z_w.expand_as(z_p)
    d = z_g - z_w
    c0 = z_w if center == "white" else torch.zeros_like(z_p)
    rel = z_p - c0
    numel = z_p[0].numel()
    d_sq = _per_sample(d * d)
    d_norm = d_sq.sqrt()
    noop = d_norm <= eps * math.sqrt(numel)
    safe_sq = torch.where(noop, torch.ones_like(d_sq), d_sq)
    beta = torch.where(noop, torch.zeros_like(d_sq), _per_sample(rel * d) / safe_sq)
    if mode == "global":
        delta = alpha * _view(beta, d) * d
    else:
        delta = alpha * _per_pixel_correction(rel, d, mask, eps)
    delta = torch.where(_view(noop, delta), torch.zeros_like(delta), delta)
    # Evaluated as c₀ + ((z_p − c₀) − δ) so that a full projection lands exactly on c₀; untouched entries keep
    # z_p's bits (adding a zero correction through c₀ would round).
    latent = torch.where(delta == 0, z_p, c0 + (rel - delta))
    inside = torch.full_like(d_sq, float("nan"))
    if mask is not None:
        m = _latent_mask(mask, z_p)
        inside = torch.where(noop, inside, _per_sample((d * m) ** 2) / safe_sq)
    return OFRResult(latent, beta, d_norm, inside, noop, _diagnose(beta, inside, noop))


def _latent_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"the OFR mask must be (B,1,h,w) on the latent grid {tuple(like.shape[-2:])}, got "
                         f"{tuple(mask.shape)}")
    return mask.to(like.dtype).expand(like.shape[0], 1, *like.shape[-2:])


def _per_pixel_correction(rel: Tensor, d: Tensor, mask: Tensor | None, eps: float) -> Tensor:
    """``m_hw·⟨rel_hw, û_hw⟩·û_hw`` with ``û_hw = d_hw/‖d_hw‖`` where ``‖d_hw‖ > eps``, else 0."""
    norm = d.norm(dim=1, keepdim=True)
    active = norm > eps
    unit = torch.where(active, d / torch.where(active, norm, torch.ones_like(norm)), torch.zeros_like(d))
    coeff = (rel * unit).sum(dim=1, keepdim=True)
    if mask is not None:
        coeff = coeff * _latent_mask(mask, rel)
    return coeff * unit


def _diagnose(beta: Tensor, inside: Tensor, noop: Tensor) -> list[str]:
    notes = []
    for b in range(beta.shape[0]):
        if bool(noop[b]):
            continue
        rho = float(inside[b])
        if not math.isnan(rho) and rho < RHO_WARN:
            notes.append(f"sample {b}: only {rho:.0%} of the garment direction lies inside the garment mask "
                         "(ρ_in < 0.8): check the mask, or the VAE spreads the garment beyond it")
        if float(beta[b]) < BETA_WARN:
            notes.append(f"sample {b}: β = {float(beta[b]):.3f} < 0.25, little of the garment is removed "
                         "(a garment close to the projection centre; try center='white')")
    return notes
