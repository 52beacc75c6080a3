"""Anti-aliased rendering of toy scenes (toyworld.md §2.1) and the edge map of §8.4.

Coverage primitives
-------------------
The inside-tests below are small functions of *sub-pixel coordinate* arrays ``x`` and ``y`` (canvas units,
origin top left, y down) and shape parameters, all broadcastable (typically ``x (..., 1, X)``, ``y (..., Y, 1)``,
parameters ``(..., 1, 1)``). They only use arithmetic operators and ``abs``, so they work on torch tensors (any
device) and on numpy arrays alike, and return boolean arrays. Sample points come from :func:`subpixel_centers`;
:func:`pool_coverage` averages the ``ss × ss`` samples of each pixel into a coverage in ``{0, 1/ss², …, 1}``.

- :func:`rect_inside` — axis-aligned rectangle ``[x0, x1) × [y0, y1)`` (half-open, so abutting rectangles
  partition the plane);
- :func:`disc_inside` — disc of radius ``r``;
- the five scene shapes, parametrised by bounding-box centre ``(cx, cy)`` and side ``s``
  (:data:`SHAPE_INSIDE`): :func:`circle_inside`, :func:`square_inside`, :func:`triangle_inside`,
  :func:`diamond_inside`, :func:`cross_inside`.

Rendering
---------
:func:`render` evaluates each object's inside-test at the ``ss × ss`` sub-pixel centres ``(j + 0.5)/(W·ss)``
of a square window (its bounding box plus ≥ 1 px), batched over all objects of all scenes, pools to coverage
``α`` and composites. The background is evaluated at the same sub-samples, so every pixel is exactly the mean of
its per-sample colours (sample colour = the object containing it, else ``bg(y_sample)``). Because objects of a
valid scene never overlap, this equals ``img ← (1−α)·img + α·colour`` in object order, with the background under
an object taken at the covered samples. Consequences:

- the pooling identities of §2.1 hold exactly (up to float rounding), gradient included;
- the gradient is ``bg(y)`` at pixel centres ``y = (i + 0.5)/H`` where no object is, so the top row is
  ``bg(0.5/H)``: it differs from ``c`` by ``g·|t − c|/(2H)`` ≤ 0.004 at 32 px (0 without a gradient).

Geometry (sample coordinates and inside-tests) is always computed in float64 (float32 only on devices without
float64, e.g. MPS), so coverage counts are identical on every device and compute dtype; ``dtype`` sets the
compositing precision. float32 compositing agrees with the float64 reference to ~1e-7.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from flowcore.toy.constants import PALETTE, SHAPES

__all__ = [
    "SHAPE_INSIDE",
    "circle_inside",
    "cross_inside",
    "diamond_inside",
    "disc_inside",
    "edge_map",
    "object_coverage",
    "pool_coverage",
    "rect_inside",
    "render",
    "sobel_magnitude",
    "square_inside",
    "subpixel_centers",
    "triangle_inside",
]

Array = Any  # torch.Tensor or numpy.ndarray (the primitives are duck-typed)


# --------------------------------------------------------------------------------------------------------------
# coverage primitives
# --------------------------------------------------------------------------------------------------------------
def subpixel_centers(size: int, supersample: int = 8, *, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sub-pixel sample centres ``(i + (k + 0.5)/ss)/size`` for all pixels i and sub-samples k, as one sorted
    ``(size·ss,)`` vector ``(j + 0.5)/(size·ss)``. Renders at ``W/2, 2·ss`` use the very same points."""
    n = size * supersample
    return (torch.arange(n, device=device, dtype=dtype) + 0.5) / n


def pool_coverage(inside: torch.Tensor, supersample: int) -> torch.Tensor:
    """Average ``(..., Y·ss, X·ss)`` sub-sample values into ``(..., Y, X)`` pixel coverage."""
    *lead, ys, xs = inside.shape
    blocks = inside.reshape(*lead, ys // supersample, supersample, xs // supersample, supersample)
    return blocks.sum(dim=(-3, -1)) / (supersample * supersample)


def rect_inside(x: Array, y: Array, x0: Array, y0: Array, x1: Array, y1: Array) -> Array:
    """Axis-aligned rectangle ``x0 ≤ x < x1`` and ``y0 ≤ y < y1``."""
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def disc_inside(x: Array, y: Array, cx: Array, cy: Array, r: Array) -> Array:
    """Closed disc of radius ``r`` around ``(cx, cy)``."""
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def circle_inside(x: Array, y: Array, cx: Array, cy: Array, s: Array) -> Array:
    """Circle of diameter ``s`` (area fraction π/4)."""
    return disc_inside(x, y, cx, cy, s / 2)


def square_inside(x: Array, y: Array, cx: Array, cy: Array, s: Array) -> Array:
    """Square of side ``s`` (area fraction 1)."""
    half = s / 2
    return (abs(x - cx) <= half) & (abs(y - cy) <= half)


def triangle_inside(x: Array, y: Array, cx: Array, cy: Array, s: Array) -> Array:
    """Apex ``(cx, cy − s/2)``, base at ``cy + s/2`` from ``cx − s/2`` to ``cx + s/2`` (area fraction 1/2;
    centroid ``s/6`` below the box centre)."""
    dy = y - cy
    half = s / 2
    return (dy <= half) & (abs(x - cx) <= (dy + half) / 2)


def diamond_inside(x: Array, y: Array, cx: Array, cy: Array, s: Array) -> Array:
    """``|dx| + |dy| ≤ s/2`` (area fraction 1/2)."""
    return abs(x - cx) + abs(y - cy) <= s / 2


def cross_inside(x: Array, y: Array, cx: Array, cy: Array, s: Array) -> Array:
    """Two ``s × s/3`` bars, horizontal and vertical (area fraction 5/9)."""
    ax, ay = abs(x - cx), abs(y - cy)
    half, bar = s / 2, s / 6
    return ((ax <= half) & (ay <= bar)) | ((ax <= bar) & (ay <= half))


SHAPE_INSIDE: dict[str, Callable[..., Array]] = {
    "circle": circle_inside,
    "square": square_inside,
    "triangle": triangle_inside,
    "diamond": diamond_inside,
    "cross": cross_inside,
}
assert tuple(SHAPE_INSIDE) == SHAPES

# --------------------------------------------------------------------------------------------------------------
# scene rendering
# --------------------------------------------------------------------------------------------------------------
_PALETTE01 = {name: tuple(v / 255.0 for v in rgb) for name, rgb in PALETTE.items()}


def _geometry_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_sizes(size: int, supersample: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (the models are trained at 32), got {size!r}")
    if not isinstance(supersample, int) or supersample < 1:
        raise ValueError(f"supersample must be a positive int, got {supersample!r}")


def _windows(objs: Sequence[Any], size: int, supersample: int, device: torch.device,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coverage of each object inside its window.

    Returns ``alpha (N,P,P)`` and ``y_moment (N,P,P)`` (the mean over each pixel's samples of ``y·inside``) in
    ``dtype``, and the windows' top-left pixel ``(row0, col0)`` as ``(N,)`` int64 tensors.
    """
    gdtype = _geometry_dtype(device)
    params = torch.tensor([(*o.center, o.side) for o in objs], dtype=gdtype, device=device)
    cx, cy, side = params.unbind(1)
    window = min(size, math.ceil(max(o.side for o in objs) * size) + 3)  # bbox + ≥ 1 px each side
    col0 = (torch.floor((cx - side / 2) * size).long() - 1).clamp(0, size - window)
    row0 = (torch.floor((cy - side / 2) * size).long() - 1).clamp(0, size - window)
    n_samples = size * supersample
    offsets = torch.arange(window * supersample, device=device)
    xs = ((col0[:, None] * supersample + offsets) + 0.5) / n_samples  # (N, P·ss): the global sample centres
    ys = ((row0[:, None] * supersample + offsets) + 0.5) / n_samples
    alpha = torch.empty(len(objs), window, window, dtype=dtype, device=device)
    y_moment = torch.empty_like(alpha)
    shape_names = [o.shape for o in objs]
    for shape in dict.fromkeys(shape_names):
        idx = torch.tensor([i for i, name in enumerate(shape_names) if name == shape], device=device)
        x, y = xs[idx][:, None, :], ys[idx][:, :, None]
        inside = SHAPE_INSIDE[shape](x, y, cx[idx, None, None], cy[idx, None, None], side[idx, None, None])
        # per pixel and sub-row: how many samples are inside -> coverage and the y-moment of the coverage
        row_counts = inside.reshape(len(idx), window, supersample, window, supersample).sum(-1).to(gdtype)
        y_rows = ys[idx].reshape(len(idx), window, supersample, 1)
        norm = supersample * supersample
        alpha[idx] = (row_counts.sum(2) / norm).to(dtype)
        y_moment[idx] = ((row_counts * y_rows).sum(2) / norm).to(dtype)
    return alpha, y_moment, row0, col0


def _scatter(windows: torch.Tensor, row0: torch.Tensor, col0: torch.Tensor, size: int) -> torch.Tensor:
    """Place ``(N,P,P)`` windows into zero ``(N,size,size)`` canvases."""
    n, window, _ = windows.shape
    out = windows.new_zeros(n, size, size)
    ar = torch.arange(window, device=windows.device)
    rows = (row0[:, None] + ar)[:, :, None]
    cols = (col0[:, None] + ar)[:, None, :]
    out[torch.arange(n, device=windows.device)[:, None, None], rows, cols] = windows
    return out


def object_coverage(objs: Sequence[Any], size: int = 32, supersample: int = 8, *,
                    device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Coverage ``(N, size, size)`` of each object (anything with ``shape``, ``center``, ``side``) alone."""
    _check_sizes(size, supersample)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not objs:
        return torch.zeros(0, size, size, dtype=dtype, device=device)
    alpha, _, row0, col0 = _windows(objs, size, supersample, device, dtype)
    return _scatter(alpha, row0, col0, size)


def render(scenes: Any, size: int = 32, supersample: int = 8, *, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Render one scene or a sequence of scenes to ``(B, 3, size, size)`` float32 in [0, 1].

    ``dtype`` is the compositing precision (float64 = the reference; float32 agrees to ~1e-7); ``device`` is
    where the work happens and where the result lives (default CPU). Pure: the same scenes give the same pixels.
    """
    _check_sizes(size, supersample)
    scenes = [scenes] if hasattr(scenes, "objects") else list(scenes)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not scenes:
        return torch.zeros(0, 3, size, size, dtype=torch.float32, device=device)
    bg = torch.tensor(
        [(*_PALETTE01[s.background.color], *_PALETTE01[s.background.toward], s.background.gradient) for s in scenes],
        dtype=dtype, device=device,
    )
    base, target, gradient = bg[:, 0:3, None, None], bg[:, 3:6, None, None], bg[:, 6, None, None, None]
    y_centers = ((torch.arange(size, device=device, dtype=dtype) + 0.5) / size)[None, None, :, None]
    slope = gradient * (target - base)  # (B,3,1,1): d bg / d y
    img = (base + slope * y_centers).expand(-1, -1, -1, size).clone()
    objs = [o for s in scenes for o in s.objects]
    if objs:
        owner = torch.tensor([b for b, s in enumerate(scenes) for _ in s.objects], device=device)
        colors = torch.tensor([_PALETTE01[o.color] for o in objs], dtype=dtype, device=device)
        alpha, y_moment, row0, col0 = _windows(objs, size, supersample, device, dtype)
        # per sample: object colour where covered, bg(y_sample) elsewhere; pixel = mean over its samples
        delta = (colors - base[owner, :, 0, 0])[:, :, None, None] * alpha[:, None]
        delta = delta - slope[owner] * y_moment[:, None]
        window = alpha.shape[-1]
        ar = torch.arange(window, device=device)
        rows = (row0[:, None] + ar)[:, None, :, None]
        cols = (col0[:, None] + ar)[:, None, None, :]
        chans = torch.arange(3, device=device)[None, :, None, None]
        img.index_put_((owner[:, None, None, None], chans, rows, cols), delta, accumulate=True)
    return img.clamp_(0.0, 1.0).to(torch.float32)


# --------------------------------------------------------------------------------------------------------------
# edges (§8.4): Sobel magnitude of G_0.5(img) > 0.35
# --------------------------------------------------------------------------------------------------------------
def _symmetric_pad_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of scipy's ``mode="reflect"`` padding (``d c b a | a b c d | d c b a``)."""
    idx = torch.arange(-pad, n + pad, device=device)
    period = 2 * n
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - 1 - idx, idx)


def _separable(img: torch.Tensor, along_x: torch.Tensor, along_y: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of ``(B,C,H,W)`` with ``along_y ⊗ along_x`` (odd 1-D kernels), reflect padding."""
    b, c, h, w = img.shape
    px, py = along_x.numel() // 2, along_y.numel() // 2
    x = img.index_select(3, _symmetric_pad_index(w, px, img.device))
    x = F.conv2d(x.reshape(b * c, 1, h, w + 2 * px), along_x.reshape(1, 1, 1, -1)).reshape(b, c, h, w)
    x = x.index_select(2, _symmetric_pad_index(h, py, img.device))
    return F.conv2d(x.reshape(b * c, 1, h + 2 * py, w), along_y.reshape(1, 1, -1, 1)).reshape(b, c, h, w)


def sobel_magnitude(img: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """``(B,1,H,W)`` colour Sobel magnitude ``sqrt(Σ_c (S_x G_σ x_c)² + (S_y G_σ x_c)²)``.

    Matches ``scipy.ndimage``: ``gaussian_filter(sigma, truncate=4)`` then ``sobel`` (unnormalised kernels
    ``[1,2,1] ⊗ [-1,0,1]``), both with ``mode="reflect"``. ``img`` is ``(B,3,H,W)`` (any channel count works).
    """
    if img.ndim != 4:
        raise ValueError(f"expected (B,C,H,W) images, got shape {tuple(img.shape)}")
    x = img if img.is_floating_point() else img.float()
    radius = int(4.0 * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float64)
    gauss = torch.exp(-0.5 * (taps / sigma) ** 2)
    gauss = (gauss / gauss.sum()).to(x.dtype)
    x = _separable(x, gauss, gauss)
    smooth = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
    diff = torch.tensor([-1.0, 0.0, 1.0], device=x.device, dtype=x.dtype)
    gx = _separable(x, diff, smooth)
    gy = _separable(x, smooth, diff)
    return (gx.square() + gy.square()).sum(1, keepdim=True).sqrt()


def edge_map(img: torch.Tensor, threshold: float = 0.35, sigma: float = 0.5) -> torch.Tensor:
    """ControlNet control image: ``(B,3,H,W)`` white (1) edges on black (0), same dtype/device as ``img``.

    Edges are pixels whose :func:`sobel_magnitude` of ``G_0.5(img)`` (computed in float64) exceeds 0.35; this is
    the edge set ``E`` of the ``outline`` filter. ``(3,H,W)`` input gives ``(3,H,W)``.
    """
    single = img.ndim == 3
    x = img[None] if single else img
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"edge_map expects (B,3,H,W) or (3,H,W) RGB images, got shape {tuple(img.shape)}")
    # threshold a float64 magnitude (float32 only where float64 is unsupported) so that float32 inputs give the
    # same edges as the float64 / scipy definition used by the outline filter
    magnitude = sobel_magnitude(x.to(_geometry_dtype(x.device)), sigma)
    edges = (magnitude > threshold).to(x.dtype if x.is_floating_point() else torch.float32)
    out = edges.expand(-1, 3, -1, -1).contiguous()
    return out[0] if single else out
