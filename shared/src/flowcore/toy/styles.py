"""Exact style filters of the toy world and the measurements that read them back (toyworld.md §4).

Four filter families, each with a base look that is on at λ = 0 and one attribute that λ moves:

- ``outline``: ``q_12(x)`` plus ink lines along the edges, width ``0.6 + 2.4λ`` px;
- ``contrast``: ``b = 0.9x + 0.05`` with its detail (``b − G_2 b``) amplified by ``1 + 3λ``;
- ``watercolor``: ``G_0.5 x`` on paper, then wobble, edge darkening, granulation and splatter, each with its own λ;
- ``pattern``: ``q_8(x)`` darkened by a line or dot screen anchored to the canvas (variants ``hatch``,
  ``stripes``, ``halftone``), line width ``0.4 + 1.2λ`` px / dot radius ``(0.15 + 0.2λ)·4`` px.

All filters run in numpy/scipy float64. Every length is given at the 32-px reference and scales by
``s = min(H, W) / 32``; noise fields are drawn on a ``round(H/s) × round(W/s)`` grid from ``seed`` only (never from
the content) and resized bilinearly, so λ moves one attribute over a fixed "paper". Splat centres live in canvas
units. At 32×32 nothing is resized.

``measure_style`` returns, per image, a number that increases with λ (gate F1 of toyworld §9 checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from flowcore.toy.constants import INK, PATTERN_VARIANTS, STYLE_FILTERS, WATERCOLOR_COMPONENTS
from flowcore.toy.seeding import rng_for

__all__ = ["apply_style", "edge_set", "measure_style", "style_scale"]

LUMA = np.array([0.299, 0.587, 0.114])  # Rec.601
INK_RGB = np.array(INK, dtype=np.float64) / 255.0
EDGE_THRESHOLD = 0.35
_DIFF = np.array([-1.0, 0.0, 1.0])
_SMOOTH = np.array([1.0, 2.0, 1.0])
N_SPLATS = 32
LAM_MAX = 1.3  # the largest λ the filters are specified for (extrapolation is tested up to here)

# Noise-field identifiers: the ``index`` passed to ``rng_for(seed, index, "train", "style")``, one generator per
# field so that a field never depends on the grid size of another.
_FIELD_INDEX = {"paper": 0, "wobble_x": 1, "wobble_y": 2, "grain": 3, "splats": 4}


# ----------------------------------------------------------------------------------------------------------
# Argument handling
# ----------------------------------------------------------------------------------------------------------
def style_scale(height: int, width: int) -> float:
    """The length scale ``s = min(H, W) / 32`` of toyworld §4: every 32-px length is multiplied by it."""
    return min(height, width) / 32.0


def _as_numpy_batch(img: Any) -> tuple[np.ndarray, bool]:
    """(B,3,H,W) or (3,H,W) tensor/array in [0,1] -> float64 (B,3,H,W) array, and whether a batch dim was added."""
    if isinstance(img, torch.Tensor):
        arr = img.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(img, dtype=np.float64)
    squeeze = arr.ndim == 3
    if squeeze:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"expected an RGB image batch of shape (B,3,H,W) or (3,H,W), got {tuple(arr.shape)}")
    if arr.shape[2] < 4 or arr.shape[3] < 4:
        raise ValueError(f"images must be at least 4×4 pixels, got {arr.shape[2]}×{arr.shape[3]}")
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"image values must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); rescale, e.g. (x+1)/2")
    return np.clip(arr, 0.0, 1.0), squeeze


def _back_to_input(out: np.ndarray, like: Any, squeeze: bool) -> Any:
    """Return ``out`` with the type, dtype, device and rank of the input image."""
    if squeeze:
        out = out[0]
    if isinstance(like, torch.Tensor):
        dtype = like.dtype if like.dtype.is_floating_point else torch.float32
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=like.device, dtype=dtype)
    return out


def _lam_array(lam: Any, batch: int, n_params: int, name: str) -> np.ndarray:
    """Normalise ``lam`` to a (B, n_params) float64 array.

    float / 0-d tensor: the same value everywhere. Tensor (B,) or (B,1): one value per image (all components).
    Tensor (B,P): per image and component. A list/tuple/ndarray: per image for one-parameter filters; for
    ``watercolor`` a 4-vector of component values shared by all images.
    """
    if isinstance(lam, torch.Tensor):
        arr = lam.detach().to("cpu", torch.float64).numpy()
        if arr.ndim == 0:
            out = np.full((batch, n_params), float(arr))
        elif arr.ndim == 1 and arr.shape[0] == batch:
            out = np.repeat(arr[:, None], n_params, axis=1)
        elif arr.ndim == 2 and arr.shape[0] == batch and arr.shape[1] in (1, n_params):
            out = np.broadcast_to(arr, (batch, n_params)).copy()
        else:
            raise ValueError(
                f"{name}: a λ tensor must have shape (), ({batch},), ({batch},1) or ({batch},{n_params}); got "
                f"{tuple(arr.shape)}" + ("; pass a list/tuple for one 4-vector of components" if n_params > 1 else "")
            )
    elif isinstance(lam, (int, float, np.floating, np.integer)):
        out = np.full((batch, n_params), float(lam))
    elif isinstance(lam, (Sequence, np.ndarray)):
        arr = np.asarray(lam, dtype=np.float64)
        if arr.ndim == 0:
            out = np.full((batch, n_params), float(arr))
        elif n_params > 1 and arr.shape == (n_params,):
            out = np.broadcast_to(arr, (batch, n_params)).copy()
        elif n_params == 1 and arr.shape == (batch,):
            out = arr[:, None].copy()
        elif arr.shape == (batch, n_params):
            out = arr.copy()
        else:
            want = f"({n_params},) components" if n_params > 1 else f"({batch},) per-image values"
            raise ValueError(f"{name}: λ sequence must have shape {want}; got {arr.shape}")
    else:
        raise TypeError(f"{name}: λ must be a float, a tensor or a sequence of floats, got {type(lam).__name__}")
    if not np.isfinite(out).all():
        raise ValueError(f"{name}: λ must be finite")
    return out


def _seed_list(seed: Any, batch: int) -> list[int]:
    if isinstance(seed, torch.Tensor):
        seed = seed.detach().cpu().reshape(-1).tolist() if seed.ndim else int(seed)
    if isinstance(seed, (int, np.integer)):
        seeds = [int(seed)] * batch
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch} images; pass one int or one per image")
    if any(s < 0 for s in seeds):
        raise ValueError(f"style seeds must be non-negative integers, got {seeds}")
    return seeds


# ----------------------------------------------------------------------------------------------------------
# Shared image operations
# ----------------------------------------------------------------------------------------------------------
def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the last two axes (reflecting borders)."""
    sig = (0.0,) * (x.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(x, sigma=sig, mode="reflect")


def _luminance(x: np.ndarray) -> np.ndarray:
    """(B,3,H,W) -> (B,H,W) Rec.601 luminance."""
    return np.einsum("bchw,c->bhw", x, LUMA)


def _quantize(x: np.ndarray, levels: int) -> np.ndarray:
    return np.round(x * (levels - 1)) / (levels - 1)


def edge_set(img: Any) -> np.ndarray:
    """The edge set E of ``outline`` (and of ``edge_map``): Sobel magnitude of ``G_0.5 x`` above 0.35.

    img: (B,3,H,W) or (3,H,W) in [0,1]. The Sobel operator is the unnormalised 3×3 one (weights 1,2,1 ×
    central difference) per channel, the magnitude is ``sqrt(Σ_c gx_c² + gy_c²)``; at other sizes σ is ``0.5·s``
    and the magnitude is multiplied by ``s`` (a per-32-px-reference-pixel slope). Returns a bool (B,H,W) array.
    """
    x, _ = _as_numpy_batch(img)
    return _edge_set(x, style_scale(*x.shape[-2:]))


def _edge_set(x: np.ndarray, s: float) -> np.ndarray:
    g = _blur(x, 0.5 * s)
    # scipy's ``sobel`` smooths along *every* other axis (batch and channel too), so build it from 1-D passes.
    gx = ndimage.correlate1d(ndimage.correlate1d(g, _DIFF, axis=3, mode="reflect"), _SMOOTH, axis=2, mode="reflect")
    gy = ndimage.correlate1d(ndimage.correlate1d(g, _DIFF, axis=2, mode="reflect"), _SMOOTH, axis=3, mode="reflect")
    magnitude = np.sqrt((gx**2 + gy**2).sum(axis=1)) * s
    return magnitude > EDGE_THRESHOLD


def _resize_bilinear(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (h,w) array (half-pixel centres, edge clamped)."""
    h, w = field.shape
    if (h, w) == (height, width):
        return field

    def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    ylo, yhi, wy = axis_weights(h, height)
    xlo, xhi, wx = axis_weights(w, width)
    rows = field[ylo] * (1 - wy)[:, None] + field[yhi] * wy[:, None]
    return rows[:, xlo] * (1 - wx)[None] + rows[:, xhi] * wx[None]


@lru_cache(maxsize=512)
def _noise_field(seed: int, field: str, height: int, width: int) -> np.ndarray:
    """A unit-std noise field of one kind, drawn on the 32-px reference grid and resized to (height, width)."""
    s = style_scale(height, width)
    grid = (max(1, round(height / s)), max(1, round(width / s)))
    rng = rng_for(seed, _FIELD_INDEX[field], "train", "style")
    noise = rng.standard_normal(grid)
    if field == "paper":
        noise = ndimage.gaussian_filter(noise, 1.0, mode="wrap")
    elif field in ("wobble_x", "wobble_y"):
        noise = ndimage.gaussian_filter(noise, 3.0, mode="wrap")
    if field != "grain":
        noise = (noise - noise.mean()) / max(float(noise.std()), 1e-12)
    out = _resize_bilinear(noise, height, width)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=512)
def _splats(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """32 splat centres (canvas units, (32,2) as (x,y)) and radii (32-px reference pixels), fixed order."""
    rng = rng_for(seed, _FIELD_INDEX["splats"], "train", "style")
    centres = rng.random((N_SPLATS, 2))
    radii = rng.uniform(0.6, 1.4, N_SPLATS)
    centres.setflags(write=False)
    radii.setflags(write=False)
    return centres, radii


# ----------------------------------------------------------------------------------------------------------
# outline
# ----------------------------------------------------------------------------------------------------------
def _edge_distance(edges: np.ndarray, s: float) -> tuple[np.ndarray | None, int]:
    """Distance (32-px reference units) from each point of a finer grid to the edge set; None if no edges.

    The grid has ``f = max(1, round(4/s))`` points per pixel side: the 4× grid at 32 px, whose spacing (1/4 of a
    reference pixel) scales with s; from s ≈ 3 on it is the pixel grid, which is already finer than that.
    """
    if not edges.any():
        return None, 1
    f = max(1, round(4 / s))
    fine = np.repeat(np.repeat(edges, f, axis=0), f, axis=1)
    dist = ndimage.distance_transform_edt(~fine, sampling=1.0 / f)
    return dist / s, f


def _outline(x: np.ndarray, lam: np.ndarray, s: float) -> np.ndarray:
    base = _quantize(x, 12)
    edges = _edge_set(x, s)
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        dist, f = _edge_distance(edges[b], s)
        if dist is None:
            out[b] = base[b]
            continue
        width = 0.6 + 2.4 * lam[b, 0]
        alpha_fine = 0.85 * np.clip(width / 2 - dist + 0.5, 0.0, 1.0)
        h, w = edges.shape[1:]
        alpha = alpha_fine.reshape(h, f, w, f).mean(axis=(1, 3))
        out[b] = (1 - alpha) * base[b] + alpha * INK_RGB[:, None, None]
    return out


# ----------------------------------------------------------------------------------------------------------
# contrast
# ----------------------------------------------------------------------------------------------------------
def _contrast(x: np.ndarray, lam: np.ndarray, s: float) -> np.ndarray:
    b = 0.9 * x + 0.05
    local_mean = _blur(b, 2.0 * s)
    gain = (1 + 3 * lam[:, 0])[:, None, None, None]
    return np.clip(local_mean + gain * (b - local_mean), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# watercolor
# ----------------------------------------------------------------------------------------------------------
def _warp(y: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Bilinear backward warp of one (3,H,W) image by a displacement field in pixels."""
    h, w = y.shape[1:]
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    coords = np.stack([rows + dy, cols + dx])
    return np.stack([ndimage.map_coordinates(ch, coords, order=1, mode="nearest") for ch in y])


def _gradient_magnitude(y: np.ndarray, s: float) -> np.ndarray:
    """|∇y| per 32-px reference pixel, Euclidean over channels and directions; y (3,H,W) or (B,3,H,W)."""
    gy, gx = np.gradient(y, axis=(-2, -1))
    return np.sqrt((gx**2 + gy**2).sum(axis=-3)) * s


def _splatter(y: np.ndarray, lam_s: float, seed: int, s: float) -> np.ndarray:
    """Composite the first splats of the fixed order; splat i has opacity ``0.8·clip(32λ/1.3 − i, 0, 1)``.

    A splat is a drop of the pigment already on the paper: where it lies, the pixel is pulled towards 0.55 × its
    own value (a transparent, multiplicative darkening). The spec's "0.55 × the pixel under its centre" as one flat
    colour is not used: a splat straddling an edge would then move a rim pixel by up to 0.8·|Δ| within
    Δλ = 1.3/32, i.e. ≈ 0.2 per 0.01 of λ, breaking the continuity bound ``max|F(λ+0.01) − F(λ)| ≤ 0.1`` of
    toyworld §10.1; pulling towards the pixel's own value bounds the step by 0.197·0.45 ≈ 0.089.
    """
    opacities = 0.8 * np.clip(N_SPLATS * lam_s / LAM_MAX - np.arange(N_SPLATS), 0.0, 1.0)
    if not opacities.any():
        return y
    h, w = y.shape[1:]
    centres, radii = _splats(seed)
    cx, cy = centres[:, 0] * w, centres[:, 1] * h
    rows = np.arange(h)[:, None] + 0.5
    cols = np.arange(w)[None, :] + 0.5
    keep = np.ones((h, w))
    for i in np.flatnonzero(opacities):
        dist = np.sqrt((rows - cy[i]) ** 2 + (cols - cx[i]) ** 2)
        cover = opacities[i] * np.clip(radii[i] * s - dist + 0.5, 0.0, 1.0)
        keep *= 1 - 0.45 * cover
    return y * keep


def _watercolor(x: np.ndarray, lam: np.ndarray, seeds: list[int], s: float) -> np.ndarray:
    h, w = x.shape[-2:]
    blurred = _blur(x, 0.5 * s)
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        lam_w, lam_e, lam_g, lam_s = lam[b]
        y = blurred[b] * (1 - 0.03 * _noise_field(seeds[b], "paper", h, w))
        if lam_w != 0:
            amp = 1.5 * lam_w * s
            y = _warp(y, amp * _noise_field(seeds[b], "wobble_x", h, w), amp * _noise_field(seeds[b], "wobble_y", h, w))
        if lam_e != 0:
            slope = _gradient_magnitude(_blur(y, 0.7 * s), s)
            y = y * (1 - 0.5 * lam_e * np.clip(slope / 2, 0.0, 1.0))
        if lam_g != 0:
            grain = np.clip(0.5 + 0.25 * _noise_field(seeds[b], "grain", h, w), 0.0, 1.0)
            y = y * (1 - 0.3 * lam_g * grain)
        y = _splatter(y, lam_s, seeds[b], s)
        out[b] = np.clip(y, 0.0, 1.0)
    return out


# ----------------------------------------------------------------------------------------------------------
# pattern
# ----------------------------------------------------------------------------------------------------------
def _band_integral(u: np.ndarray, period: float, width: float) -> np.ndarray:
    """B(u) = ∫_0^u band, for bands of ``width`` centred on multiples of ``period``; u ≥ 0."""
    half = width / 2
    k = np.floor(u / period)
    r = u - k * period
    return k * width + np.minimum(r, half) + np.maximum(r - (period - half), 0.0)


def _band_integral2(u: np.ndarray, period: float, width: float) -> np.ndarray:
    """∫_0^u B(v) dv for the band integral B above; u ≥ 0."""
    half = width / 2
    k = np.floor(u / period)
    r = u - k * period
    rise = np.where(r <= half, r**2 / 2, half**2 / 2 + half * (r - half))
    g_r = rise + 0.5 * np.maximum(r - (period - half), 0.0) ** 2
    g_period = half**2 / 2 + half * (period - half) + 0.5 * half**2
    return width * period * k * (k - 1) / 2 + k * g_period + k * width * r + g_r


def _line_coverage(h: int, w: int, width: float, period: float, variant: str) -> np.ndarray:
    """Exact pixel coverage (H,W) of the line screen: 45° lines (``hatch``) or horizontal lines (``stripes``)."""
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    if variant == "stripes":
        u = ys + period  # shift by one period keeps u − ½ ≥ 0; coverage is periodic
        return _band_integral(u + 0.5, period, width) - _band_integral(u - 0.5, period, width)
    # hatch: the pixel square projects onto u = (x+y)/√2 as a triangle of half-width a = 1/√2.
    a = 1 / np.sqrt(2)
    u = (xs + ys) / np.sqrt(2) + period
    b2 = _band_integral2
    return (b2(u + a, period, width) - 2 * b2(u, period, width) + b2(u - a, period, width)) / a**2


@lru_cache(maxsize=64)
def _lattice_distance(h: int, w: int, s: float, sub: int) -> np.ndarray:
    """Distance (px) from sub-pixel samples (sub×sub per pixel) to the nearest node of the 45° dot lattice."""
    period = 4 * s
    off = (np.arange(sub) + 0.5) / sub
    ys = (np.arange(h)[:, None] + off[None, :]).reshape(-1)
    xs = (np.arange(w)[:, None] + off[None, :]).reshape(-1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    u = (xx + yy) / np.sqrt(2)
    v = (xx - yy) / np.sqrt(2)
    du = u - period * np.round(u / period)
    dv = v - period * np.round(v / period)
    dist = np.sqrt(du**2 + dv**2)
    dist.setflags(write=False)
    return dist


def _dot_coverage(h: int, w: int, radius: float, s: float) -> np.ndarray:
    """Pixel coverage (H,W) of dots of ``radius`` px on the 45° lattice of period 4s, anti-aliased per sample."""
    sub = max(2, int(np.ceil(8 / s)))
    dist = _lattice_distance(h, w, s, sub)
    cover = np.clip((radius - dist) * sub + 0.5, 0.0, 1.0)
    return cover.reshape(h, sub, w, sub).mean(axis=(1, 3))


def _pattern_coverage(h: int, w: int, lam: float, s: float, variant: str) -> np.ndarray:
    if variant == "halftone":
        return _dot_coverage(h, w, (0.15 + 0.2 * lam) * 4 * s, s)
    return np.clip(_line_coverage(h, w, (0.4 + 1.2 * lam) * s, 4 * s, variant), 0.0, 1.0)  # round-off


def _pattern(x: np.ndarray, lam: np.ndarray, s: float, variant: str) -> np.ndarray:
    base = _quantize(x, 8)
    h, w = x.shape[-2:]
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        cover = _pattern_coverage(h, w, lam[b, 0], s, variant)
        out[b] = base[b] * (1 - 0.45 * cover)
    return out


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def _check_variant(name: str, variant: str | None) -> str:
    if variant is None:
        return "hatch"
    if name != "pattern":
        raise ValueError(f"variant= applies to the 'pattern' filter only, not {name!r}")
    if variant not in PATTERN_VARIANTS:
        raise ValueError(f"unknown pattern variant {variant!r}; use one of {PATTERN_VARIANTS}")
    return variant


def apply_style(img: Any, name: str, lam: Any, seed: Any = 0, **kw: Any) -> Any:
    """Apply toy-world style filter ``name`` at strength ``lam`` (toyworld §4).

    Args:
        img: (B,3,H,W) or (3,H,W) RGB in [0,1], any size (lengths scale by ``min(H,W)/32``); tensor or array.
        name: one of ``STYLE_FILTERS`` (``outline``, ``contrast``, ``watercolor``, ``pattern``).
        lam: float, (B,) tensor, or (B,P) tensor; for ``watercolor`` also a 4-vector (list/tuple) of component
            values in the order ``wobble, edge_darkening, granulation, splatter`` (a scalar sets all four).
            Defined on [0,1]; values up to 1.3 are supported.
        seed: int or one int per image: selects the noise fields / splats (``watercolor``); others ignore it.
        variant: ``pattern`` only: ``hatch`` (default), ``stripes`` or ``halftone``.

    Returns:
        The filtered images, same shape, type, dtype and device as ``img``, values in [0,1].
    """
    variant = _check_variant(name, kw.pop("variant", None))
    if kw:
        raise TypeError(f"apply_style got unexpected keyword arguments {sorted(kw)}; only variant= is accepted")
    if name not in STYLE_FILTERS:
        raise ValueError(f"unknown style filter {name!r}; use one of {STYLE_FILTERS}")
    x, squeeze = _as_numpy_batch(img)
    batch, _, h, w = x.shape
    s = style_scale(h, w)
    n_params = len(WATERCOLOR_COMPONENTS) if name == "watercolor" else 1
    lam_arr = _lam_array(lam, batch, n_params, name)
    if name == "outline":
        out = _outline(x, lam_arr, s)
    elif name == "contrast":
        out = _contrast(x, lam_arr, s)
    elif name == "watercolor":
        out = _watercolor(x, lam_arr, _seed_list(seed, batch), s)
    else:
        out = _pattern(x, lam_arr, s, variant)
    return _back_to_input(np.clip(out, 0.0, 1.0), img, squeeze)


def _pigment_deficit(y: np.ndarray) -> np.ndarray:
    return 1.0 - _luminance(y).mean(axis=(1, 2))


def _granulation_measure(y: np.ndarray, s: float) -> np.ndarray:
    """mean |L − G_1 L| over the flatter half of the pixels (flatness: slope of G_1 L at or below its median)."""
    lum = _luminance(y)
    smooth = _blur(lum, 1.0 * s)
    gy, gx = np.gradient(smooth, axis=(-2, -1))
    slope = np.sqrt(gx**2 + gy**2).reshape(lum.shape[0], -1)
    detail = np.abs(lum - smooth).reshape(lum.shape[0], -1)
    flat = slope <= np.median(slope, axis=1, keepdims=True)
    return (detail * flat).sum(axis=1) / flat.sum(axis=1)


def _fourier_ratio(y: np.ndarray, s: float, variant: str) -> np.ndarray:
    """|mean(L·e^{−2πi·u/P})| / mean L with P = 4s along u = (x+y)/√2 (hatch) or u = y (stripes)."""
    lum = _luminance(y)
    h, w = lum.shape[1:]
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    u = ys if variant == "stripes" else (xs + ys) / np.sqrt(2)
    wave = np.exp(-2j * np.pi * u / (4 * s))
    amplitude = np.abs((lum * wave).mean(axis=(1, 2)))
    return amplitude / np.maximum(lum.mean(axis=(1, 2)), 1e-12)


def _halftone_measure(y: np.ndarray, s: float) -> np.ndarray:
    """Dot darkening ``1 − mean L / mean L_holes``.

    The holes are the pixels that no dot reaches for λ ≤ 1.3 (whole pixel farther than the largest radius from
    every lattice node); their luminance is the undotted content, so the ratio grows strictly with the dot area
    whatever the content. The Fourier ratio used for the line screens is too fragile here: a disc's fundamental
    ``∝ r·J1(πr/2)`` peaks at r ≈ 1.53 px (λ ≈ 1.16), so above it only the falling mean L keeps the ratio rising
    (by ~1% from λ = 1.2 to 1.3 on a flat image), a margin any content could undo.
    """
    lum = _luminance(y)
    h, w = lum.shape[1:]
    node_dist = _lattice_distance(h, w, s, 1)
    r_max = (0.15 + 0.2 * LAM_MAX) * 4 * s
    holes = node_dist >= r_max + np.sqrt(0.5) + 0.1  # whole pixel (and its anti-aliasing) clear of every dot
    if not holes.any():
        raise ValueError(f"image of {h}×{w} px is too small to measure the halftone screen")
    hole_lum = lum[:, holes].mean(axis=1)
    return 1.0 - lum.mean(axis=(1, 2)) / np.maximum(hole_lum, 1e-12)


def measure_style(img: Any, name: str, ref: Any = None, component: str | None = None) -> torch.Tensor:
    """Read the strength of style ``name`` back from images: a (B,) float64 tensor that increases with λ.

    - ``outline``: ink proximity ``mean exp(−‖out − ink‖²/0.045)``.
    - ``contrast``: detail RMS ``sqrt(mean (out − G_2 out)²)``.
    - ``watercolor``: pigment deficit ``1 − mean L`` (component None, ``edge_darkening``, ``splatter``);
      ``granulation``: ``mean |L − G_1 L|`` over the flatter half of the pixels; ``wobble``: ``mean |out − ref|``
      with ``ref`` the same rendition at ``λ_wobble = 0`` (required).
    - ``pattern``: component = variant (``hatch`` default, ``stripes``): the screen's Fourier amplitude over
      ``mean L``; ``halftone``: dot darkening relative to the never-dotted hole pixels.

    img and ref: (B,3,H,W) or (3,H,W) in [0,1]; lengths scale by ``min(H,W)/32``.
    """
    if name not in STYLE_FILTERS:
        raise ValueError(f"unknown style filter {name!r}; use one of {STYLE_FILTERS}")
    y, _ = _as_numpy_batch(img)
    s = style_scale(*y.shape[-2:])
    allowed: tuple[str | None, ...] = (None,)
    if name == "watercolor":
        allowed = (None, *WATERCOLOR_COMPONENTS)
    elif name == "pattern":
        allowed = (None, *PATTERN_VARIANTS)
    if component not in allowed:
        raise ValueError(f"component {component!r} is not defined for {name!r}; use one of {allowed}")
    if ref is not None and component != "wobble":
        raise ValueError("ref is used only by measure_style(..., 'watercolor', component='wobble')")

    if name == "outline":
        dist2 = ((y - INK_RGB[None, :, None, None]) ** 2).sum(axis=1)
        value = np.exp(-dist2 / 0.045).mean(axis=(1, 2))
    elif name == "contrast":
        value = np.sqrt(((y - _blur(y, 2.0 * s)) ** 2).mean(axis=(1, 2, 3)))
    elif name == "watercolor":
        if component == "wobble":
            if ref is None:
                raise ValueError("the wobble measurement needs ref= (the same rendition with λ_wobble = 0)")
            r, _ = _as_numpy_batch(ref)
            if r.shape != y.shape:
                raise ValueError(f"ref shape {r.shape} differs from image shape {y.shape}")
            value = np.abs(y - r).mean(axis=(1, 2, 3))
        elif component == "granulation":
            value = _granulation_measure(y, s)
        else:
            value = _pigment_deficit(y)
    else:
        variant = component or "hatch"
        value = _halftone_measure(y, s) if variant == "halftone" else _fourier_ratio(y, s, variant)
    return torch.from_numpy(np.asarray(value, dtype=np.float64))
