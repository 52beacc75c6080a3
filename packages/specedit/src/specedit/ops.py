"""Tensor operations of SpecEdit: packing, pooling/lifting, the coarse view and the Haar pair (spec §2.1, §2.4).

Latent grids are ``(B, C, H, W)``; token sequences are ``(B, h·w, 4C)`` with ``h = H/2``, ``w = W/2`` in the packing
of ``FluxPipeline._pack_latents`` / ``QwenImageEditPipeline._pack_latents`` (channel-major, then the 2×2 offset).
``P_r`` is r×r mean pooling, ``U_r`` r× nearest upsampling, ``B_r`` r× bilinear upsampling (``align_corners=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flowcore.images import PadInfo, pad_to_multiple

__all__ = [
    "bilinear_up",
    "coarse_view",
    "crop_grid",
    "haar_analysis",
    "haar_synthesis",
    "lift_velocity",
    "nearest_up",
    "pack",
    "pad_reflect",
    "pool",
    "unit_normalise",
    "unpack",
]


def pack(grid: Tensor) -> Tensor:
    """``(B, C, H, W)`` latents → ``(B, (H/2)(W/2), 4C)`` tokens (the FLUX/Qwen 2×2 packing)."""
    b, c, hh, ww = grid.shape
    if hh % 2 or ww % 2:
        raise ValueError(f"latent grids must have even sides to be packed into 2×2 tokens, got {hh}×{ww}")
    x = grid.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (hh // 2) * (ww // 2), c * 4)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """``(B, h·w, 4C)`` tokens on an ``h×w`` token grid → ``(B, C, 2h, 2w)`` latents (inverse of :func:`pack`)."""
    b, n, d = tokens.shape
    if n != h * w or d % 4:
        raise ValueError(f"cannot unpack {n} tokens of width {d} onto a {h}×{w} token grid")
    c = d // 4
    x = tokens.view(b, h, w, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, 2 * h, 2 * w)


def pool(grid: Tensor, r: int) -> Tensor:
    """``P_r``: r×r mean pooling of ``(B, C, H, W)`` (sides must be multiples of r)."""
    if r == 1:
        return grid
    if grid.shape[-2] % r or grid.shape[-1] % r:
        raise ValueError(f"cannot pool a {grid.shape[-2]}×{grid.shape[-1]} grid by {r}: pad it first")
    return F.avg_pool2d(grid, r)


def nearest_up(grid: Tensor, r: int) -> Tensor:
    """``U_r``: r× nearest upsampling; ``pool(nearest_up(a, r), r) == a`` exactly."""
    if r == 1:
        return grid
    return grid.repeat_interleave(r, dim=-2).repeat_interleave(r, dim=-1)


def bilinear_up(grid: Tensor, r: int) -> Tensor:
    """``B_r``: r× bilinear upsampling with ``align_corners=False`` (computed in float32)."""
    if r == 1:
        return grid
    return F.interpolate(grid.float(), scale_factor=r, mode="bilinear", align_corners=False)


def pad_reflect(grid: Tensor, multiple: int) -> tuple[Tensor, PadInfo]:
    """Reflect-pad the bottom/right of ``(B, C, H, W)`` to multiples of ``multiple`` (flowcore's padding)."""
    return pad_to_multiple(grid, multiple, mode="reflect")


def crop_grid(grid: Tensor, height: int, width: int) -> Tensor:
    """The top-left ``height×width`` region (padding is always bottom/right)."""
    return grid[..., :height, :width]


def coarse_view(x_region: Tensor, eps_pooled: Tensor, sigma: float | Tensor) -> Tensor:
    """The coarse state the network sees (spec §2.4 step 1): ``y = P_2(x) + σ·P_2(ε)``.

    ``x_region``: ``(B, C, 4h_c, 4w_c)`` carrier over the complete cells (float32); ``eps_pooled``: ``P_2(ε)`` of the
    same region, ``(B, C, 2h_c, 2w_c)``. At σ = 1 (``x = ε``) this is ``ε̄ = 2·P_2(ε)``.
    """
    return pool(x_region, 2) + sigma * eps_pooled


def lift_velocity(u: Tensor, eps_bar: Tensor, eps_region: Tensor) -> Tensor:
    """Coarse velocity → fine velocity of the carrier (spec §2.4 step 3): ``v = U_2(u − ε̄) + ε``.

    ``u``, ``eps_bar``: ``(B, C, 2h_c, 2w_c)``; ``eps_region``: ``(B, C, 4h_c, 4w_c)``. Keeps the carrier's Haar
    detail coefficients at exactly ``σ·detail(ε)`` and makes ``P_2`` of the carrier follow the coarse Euler step.
    """
    return nearest_up(u - eps_bar, 2) + eps_region


def haar_analysis(grid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Orthonormal 2×2 Haar transform: ``(LL, LH, HL, HH)``, each ``(B, C, H/2, W/2)``; ``LL = 2·P_2(grid)``."""
    a, b = grid[..., 0::2, 0::2], grid[..., 0::2, 1::2]
    c, d = grid[..., 1::2, 0::2], grid[..., 1::2, 1::2]
    return (a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2


def haar_synthesis(ll: Tensor, lh: Tensor, hl: Tensor, hh: Tensor) -> Tensor:
    """Inverse of :func:`haar_analysis`."""
    a = (ll + lh + hl + hh) / 2
    b = (ll - lh + hl - hh) / 2
    c = (ll + lh - hl - hh) / 2
    d = (ll - lh - hl + hh) / 2
    bsz, ch, h2, w2 = ll.shape
    out = ll.new_empty(bsz, ch, 2 * h2, 2 * w2)
    out[..., 0::2, 0::2], out[..., 0::2, 1::2] = a, b
    out[..., 1::2, 0::2], out[..., 1::2, 1::2] = c, d
    return out


def unit_normalise(features: Tensor, dim: int = 1) -> Tensor:
    """``f / sqrt(‖f‖² + 1e-10)`` over ``dim`` (the channel axis)."""
    return features / torch.sqrt((features * features).sum(dim=dim, keepdim=True) + 1e-10)
