"""Metrics that need no downloaded network: PSNR, masked PSNR/MSE, SSIM, Spearman ρ and bootstrap CIs.

Image metrics take ``(B,C,H,W)`` tensors (``(C,H,W)`` is treated as ``B = 1``) and return one value per sample
as a float64 tensor of shape ``(B,)``; errors are accumulated in float64 so that 100+ dB reconstructions are
resolved. Masks are ``(B,1,H,W)`` (or anything broadcastable to the images), 1 = pixels that count.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bootstrap_ci", "masked_mse", "masked_psnr", "psnr", "spearman", "ssim"]


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"metrics take tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"images must be (B,C,H,W) or (C,H,W), got shape {tuple(a.shape)}")
    return a.to(torch.float64), b.to(torch.float64)


def _to_db(mse: Tensor, data_range: float, max_db: float | None) -> Tensor:
    db = 10.0 * torch.log10(float(data_range) ** 2 / mse)  # mse = 0 gives inf (float64 division, no error)
    if max_db is not None:
        db = db.clamp(max=float(max_db))
    return db


def psnr(a: Tensor, b: Tensor, *, data_range: float = 1.0, max_db: float | None = None) -> Tensor:
    """Per-sample PSNR in dB, ``(B,)`` float64: ``10·log10(data_range² / mean((a−b)²))`` over C, H, W.

    Identical samples give ``inf`` unless ``max_db`` caps the value.
    """
    a, b = _pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return _to_db(mse, data_range, max_db)


def _masked_mse(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    a, b = _pair(a, b)
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a tensor, got {type(mask).__name__}")
    weights = mask.to(torch.float64, copy=False)
    if weights.ndim == 3:
        weights = weights[None]
    try:
        weights = torch.broadcast_to(weights, (a.shape[0], weights.shape[1], *a.shape[2:]))
    except RuntimeError as err:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(a.shape)}") from err
    if weights.shape[1] not in (1, a.shape[1]):
        raise ValueError(f"mask must have 1 or {a.shape[1]} channels, got shape {tuple(mask.shape)}")
    channels_per_weight = a.shape[1] // weights.shape[1]
    squared = (a - b).pow(2) * weights
    total_weight = weights.flatten(1).sum(dim=1) * channels_per_weight
    if bool((total_weight == 0).any()):
        warnings.warn("masked metric over an empty mask is undefined; those samples are NaN", stacklevel=3)
    return squared.flatten(1).sum(dim=1) / total_weight


def masked_mse(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Per-sample MSE over the selected pixels (mask-weighted mean over channels and pixels), ``(B,)`` float64.

    Soft masks weight pixels; an empty mask gives NaN (with a warning).
    """
    return _masked_mse(a, b, mask)


def masked_psnr(
    a: Tensor,
    b: Tensor,
    mask: Tensor,
    *,
    data_range: float = 1.0,
    mse_floor: float = 1e-10,
    max_db: float | None = None,
) -> Tensor:
    """Per-sample PSNR over the selected pixels, ``(B,)`` float64.

    The MSE is floored at ``mse_floor`` (so identical regions give ``10·log10(data_range²/mse_floor)``, 100 dB by
    default, instead of ``inf``); ``max_db`` caps the result. An empty mask gives NaN (with a warning).
    """
    mse = _masked_mse(a, b, mask)
    mse = torch.where(torch.isnan(mse), mse, mse.clamp(min=mse_floor))
    return _to_db(mse, data_range, max_db)


# ---------------------------------------------------------------------------------------------------- SSIM
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def _gaussian_taps(dtype: torch.dtype, device: torch.device) -> Tensor:
    offsets = torch.arange(_SSIM_WINDOW, dtype=torch.float64) - _SSIM_WINDOW // 2
    taps = torch.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def _symmetric_index(size: int, pad: int, device: torch.device) -> Tensor:
    """Indices of a half-sample symmetric extension (``d c b a | a b c d | d c b a``, scipy's ``reflect``)."""
    index = torch.arange(-pad, size + pad, device=device) % (2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def _blur(x: Tensor) -> Tensor:
    """Separable 11-tap Gaussian (σ 1.5) per channel, symmetric borders, same size as ``x``."""
    channels = x.shape[1]
    taps = _gaussian_taps(x.dtype, x.device)
    pad = _SSIM_WINDOW // 2
    x = x.index_select(-1, _symmetric_index(x.shape[-1], pad, x.device))
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = x.index_select(-2, _symmetric_index(x.shape[-2], pad, x.device))
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def ssim(
    a: Tensor,
    b: Tensor,
    *,
    mask: Tensor | None = None,
    return_map: bool = False,
    data_range: float = 1.0,
) -> Tensor:
    """SSIM (Wang et al. 2004): Gaussian window 11×11, σ 1.5, ``K1 = 0.01``, ``K2 = 0.03``.

    Local statistics use a symmetric (mirror) border, so the SSIM map has the image's size and lines up with
    masks pixel for pixel (this equals ``scipy.ndimage.gaussian_filter(..., mode="reflect", truncate=3.5)``
    statistics; skimage additionally crops a 5-px border before averaging, which we do not). The map is averaged
    over channels: ``(B,1,H,W)``. Returns the map with ``return_map=True``; otherwise per-sample means ``(B,)``
    float64, over the whole map or, with ``mask``, the mask-weighted mean of the map (NaN for an empty mask).
    """
    a, b = _pair(a, b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _blur(a), _blur(b)
    var_a = _blur(a * a) - mu_a**2
    var_b = _blur(b * b) - mu_b**2
    cov = _blur(a * b) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    ssim_map = (numerator / denominator).mean(dim=1, keepdim=True)
    if return_map:
        return ssim_map
    if mask is None:
        return ssim_map.flatten(1).mean(dim=1)
    weights = mask.to(torch.float64)
    if weights.ndim == 3:
        weights = weights[None]
    if weights.shape[1] != 1:
        weights = weights.mean(dim=1, keepdim=True)
    weights = torch.broadcast_to(weights, ssim_map.shape)
    total = weights.flatten(1).sum(dim=1)
    if bool((total == 0).any()):
        warnings.warn("masked SSIM over an empty mask is undefined; those samples are NaN", stacklevel=2)
    return (ssim_map * weights).flatten(1).sum(dim=1) / total


# ---------------------------------------------------------------------------------------------- statistics
def _as_vector(values, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop or cap them first")
    return arr


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    start = 0
    while start < values.size:
        stop = start + 1
        while stop < values.size and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0  # mean of start+1 .. stop
        start = stop
    return ranks


def spearman(x, y) -> float:
    """Spearman's ρ: the Pearson correlation of the (tie-averaged) ranks. NaN when either input is constant."""
    x_arr, y_arr = _as_vector(x, "x"), _as_vector(y, "y")
    if x_arr.size != y_arr.size:
        raise ValueError(f"spearman needs equal lengths, got {x_arr.size} and {y_arr.size}")
    if x_arr.size < 2:
        raise ValueError("spearman needs at least two points")
    rx, ry = _average_ranks(x_arr), _average_ranks(y_arr)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    if denominator == 0.0:
        warnings.warn("spearman: an input is constant, the correlation is undefined (NaN)", stacklevel=2)
        return math.nan
    return float((rx * ry).sum() / denominator)


def bootstrap_ci(
    values: Sequence[float] | Tensor | np.ndarray,
    *,
    paired: Sequence[float] | Tensor | np.ndarray | None = None,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap of the mean: ``(mean, lo, hi)`` with a ``1 − alpha`` interval.

    With ``paired`` (same length), the statistic is the mean *difference* ``values − paired``, resampling pairs
    together (the paired difference to a baseline on the same items). Resamples come from
    ``numpy.random.default_rng(seed)``: deterministic, no global state touched.
    """
    data = _as_vector(values, "values")
    if paired is not None:
        other = _as_vector(paired, "paired")
        if other.size != data.size:
            raise ValueError(f"paired needs the same length as values: {other.size} vs {data.size}")
        data = data - other
    if n < 1:
        raise ValueError(f"n (the number of resamples) must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // data.size)  # bounded memory for long inputs
    means = np.concatenate(
        [data[rng.integers(0, data.size, size=(min(chunk, n - start), data.size))].mean(axis=1)
         for start in range(0, n, chunk)]
    )
    lo, hi = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(data.mean()), float(lo), float(hi)
