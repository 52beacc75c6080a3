"""Feature extractors and the discrepancy map of the verification stage (spec §2.3, §2.3.1).

Every extractor turns latents ``(B, C, H, W)`` into a list of ``L`` feature maps ``(B, C_ℓ, H_ℓ, W_ℓ)``. The
per-layer discrepancy is ``D_ℓ = ‖n(Φ_ℓ(A)) − n(Φ_ℓ(R))‖²`` with ``n`` the unit normalisation over channels (each term
in ``[0, 4]``); maps are resized to the latent grid (area when shrinking, bilinear when enlarging) and averaged.

- ``vae_decoder``: the VAE decoder run on the latents (converted to VAE space) with forward hooks on
  ``mid_block``, ``up_blocks.0``, ``up_blocks.1``; the decoder stops after the last tap.
- ``color_pyramid`` (our choice, for identity codecs such as the toy's pixel VAE): images in ``[−1, 1]`` at 1, ½
  and ¼ resolution, per pixel ``(Y, RG, BY, κ)`` with ``Y = (r+g+b)/3``, ``RG = (r−g)/2``, ``BY = (r+g−2b)/4``,
  ``κ = 0.5``. White vs black scores 3.2, red vs blue ≈ 2.19, grey 0.0 vs 0.1 ≈ 0.039.
- ``latent``: the latent channel vector itself (``L = 1``, term ``2 − 2·cos``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specedit.ops import unit_normalise

__all__ = [
    "KAPPA",
    "color_pyramid",
    "discrepancy",
    "discrepancy_map",
    "latent_features",
    "resolve_extractor",
    "score_draft",
    "vae_decoder_features",
]

KAPPA = 0.5


def color_pyramid(images: Tensor) -> list[Tensor]:
    """Images ``(B, 3, H, W)`` in ``[−1, 1]`` → three maps ``(B, 4, H/2^ℓ, W/2^ℓ)`` of ``(Y, RG, BY, κ)``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"color_pyramid needs RGB images (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    levels = []
    x = images.float()
    for level in range(3):
        if level:
            if x.shape[-1] < 2 or x.shape[-2] < 2:
                break
            x = F.avg_pool2d(x, 2)
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        feats = torch.stack([(r + g + b) / 3, (r - g) / 2, (r + g - 2 * b) / 4, torch.full_like(r, KAPPA)], 1)
        levels.append(feats)
    return levels


def latent_features(latents: Tensor) -> list[Tensor]:
    """The latents themselves as one feature map."""
    return [latents.float()]


class _StopDecoding(Exception):
    """Raised by the last tap to end the decoder pass early."""


def vae_decoder_features(vae: nn.Module, vae_latents: Tensor, taps: Sequence[str]) -> list[Tensor]:
    """Run ``vae.decode`` on ``vae_latents`` (already in VAE space; 5-D for Qwen's VAE) and return the outputs of
    the ``taps`` (module names under ``vae.decoder``) as ``(B, C_ℓ, H_ℓ, W_ℓ)``; stops after the last tap."""
    decoder = getattr(vae, "decoder", None)
    if decoder is None:
        raise ValueError(f"{type(vae).__name__} has no .decoder: use feature_extractor='color_pyramid' or 'latent'")
    modules = []
    for name in taps:
        try:
            modules.append(decoder.get_submodule(name))
        except AttributeError as err:
            raise ValueError(f"vae_taps entry {name!r} is not a module of {type(decoder).__name__}") from err
    found: dict[int, Tensor] = {}
    handles = []

    def make_hook(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if out.ndim == 5:  # Qwen's causal video VAE: (B, C, T, H, W), the single frame
                out = out[:, :, 0]
            found.setdefault(index, out.float())
            if len(found) == len(modules):
                raise _StopDecoding

        return hook

    for index, module in enumerate(modules):
        handles.append(module.register_forward_hook(make_hook(index)))
    try:
        with torch.no_grad():
            vae.decode(vae_latents.to(dtype=vae.dtype))
    except _StopDecoding:
        pass
    finally:
        for handle in handles:
            handle.remove()
        clear = getattr(vae, "clear_cache", None)
        if callable(clear):
            clear()
    missing = [taps[i] for i in range(len(modules)) if i not in found]
    if missing:
        raise RuntimeError(f"the VAE decoder never ran the taps {missing}; check vae_taps")
    return [found[i] for i in range(len(modules))]


def discrepancy(fa: Tensor, fb: Tensor) -> Tensor:
    """``‖n(fa) − n(fb)‖²`` over channels: ``(B, C, H, W)`` pair → ``(B, H, W)`` in ``[0, 4]``."""
    diff = unit_normalise(fa.float()) - unit_normalise(fb.float())
    return (diff * diff).sum(dim=1)


def _resize(d: Tensor, hw: tuple[int, int]) -> Tensor:
    if tuple(d.shape[-2:]) == tuple(hw):
        return d
    x = d[:, None]
    if d.shape[-2] * d.shape[-1] > hw[0] * hw[1]:
        return F.adaptive_avg_pool2d(x, hw)[:, 0]
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)[:, 0]


def discrepancy_map(features_a: Sequence[Tensor], features_r: Sequence[Tensor], hw: tuple[int, int]) -> Tensor:
    """``S = (1/L) Σ_ℓ resize(D_ℓ)`` → ``(B, H, W)`` float32."""
    if len(features_a) != len(features_r) or not features_a:
        raise ValueError("feature lists must be non-empty and of equal length")
    maps = [_resize(discrepancy(a, r), hw) for a, r in zip(features_a, features_r)]
    return torch.stack(maps).mean(0)


def resolve_extractor(name: str, vae: nn.Module | None, latent_channels: int) -> str:
    """``auto`` → ``vae_decoder`` for a VAE with a decoder, ``color_pyramid`` for 3-channel identity codecs, else
    ``latent``; explicit names are checked against what the model offers."""
    has_decoder = vae is not None and getattr(vae, "decoder", None) is not None
    if name == "auto":
        if has_decoder:
            return "vae_decoder"
        return "color_pyramid" if latent_channels == 3 else "latent"
    if name == "vae_decoder" and not has_decoder:
        raise ValueError("feature_extractor='vae_decoder' needs a VAE with a decoder (bind one with vae=...)")
    if name == "color_pyramid" and latent_channels != 3:
        raise ValueError(
            f"feature_extractor='color_pyramid' needs pixel-space latents (3 channels), got {latent_channels}; "
            "use 'vae_decoder' or 'latent'"
        )
    return name


def score_draft(draft: Tensor, reference_pooled: Tensor, reference: Tensor, *, factor: int, source_view: str,
                extractor: str, vae: nn.Module | None, to_vae_space: Callable[[Tensor], Tensor],
                taps: Sequence[str] = ("mid_block", "up_blocks.0", "up_blocks.1")) -> Tensor:
    """The discrepancy map ``S`` ``(B, H, W)`` of a draft (spec §2.3 steps 1–3).

    ``draft``: ``(B, C, H_pad/f, W_pad/f)`` latents at σ = 0; ``reference_pooled``: ``P_f`` of the padded reference
    (same grid); ``reference``: the reference latents ``(B, C, H, W)``. ``A = B_f(d)`` is compared with
    ``R = B_f(P_f(z_ref))`` (``source_view="matched"``) or ``R = z_ref`` (``"full"``), both cropped to ``H×W``.
    ``extractor`` is a resolved name (see :func:`resolve_extractor`).
    """
    from specedit.ops import bilinear_up, crop_grid

    hh, ww = reference.shape[-2:]
    a = crop_grid(bilinear_up(draft, factor), hh, ww)
    if source_view == "matched":
        r = crop_grid(bilinear_up(reference_pooled, factor), hh, ww)
    elif source_view == "full":
        r = reference.float()
    else:
        raise ValueError(f"source_view must be 'matched' or 'full', got {source_view!r}")
    batch = a.shape[0]
    if extractor == "vae_decoder":
        feats = vae_decoder_features(vae, to_vae_space(torch.cat([a, r])), taps)  # type: ignore[arg-type]
    elif extractor == "color_pyramid":
        feats = color_pyramid(to_vae_space(torch.cat([a, r])))
    elif extractor == "latent":
        feats = latent_features(torch.cat([a, r]))
    else:
        raise ValueError(f"unknown feature extractor {extractor!r}")
    return discrepancy_map([f[:batch] for f in feats], [f[batch:] for f in feats], (hh, ww))
