"""Masks (spec §2.1): the filled sketch, the operating area and the three latent regions.

Pixel masks are (B,1,H,W) floats in {0,1}. On the latent grid (h, w) = (H/f, W/f):

- ``M̄``   (``op``)      = max-pool of ``M = dilate(M_p ∪ M_s, r)`` (any coverage counts);
- ``M̄_s`` (``new``)     = (area-average of ``M_s`` ≥ 0.5) ∧ ``M̄``;
- ``M̄_r`` (``removal``) = ``M̄ − M̄_s``;  ``M̄_k`` (``keep``) = ``1 − M̄``.

When nothing is worn (``M_p = ∅``, an accessory is added) ``M̄_s := M̄`` and ``M̄_r := ∅`` (our choice: there is
nothing to remove, so the dilation margin joins the sketch pass and the no-ControlNet pass is skipped).

``M̄_s``, ``M̄_r`` and ``M̄_k`` are disjoint and sum to 1. Pooling and morphology are flowcore's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from flowcore.images import dilate, erode, mask_to_grid

__all__ = ["RegionMasks", "control_image", "default_close_px", "default_dilate_px", "fill_sketch", "region_masks"]

_FOUR = ndimage.generate_binary_structure(2, 1)


def default_dilate_px(height: int, width: int) -> int:
    """``r = max(1, round(0.01·min(H, W)))`` (our choice)."""
    return max(1, round(0.01 * min(height, width)))


def default_close_px(height: int, width: int) -> int:
    """The largest closing kernel tried for an open sketch: 2% of the short side, at least 3 (our choice)."""
    return max(3, round(0.02 * min(height, width)))


def _as_mask(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor (B,1,H,W); load files with flowcore.images.load_mask")
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None] if x.shape[0] == 1 else x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must be (B,1,H,W), got shape {tuple(x.shape)}")
    return x.float() if not x.is_floating_point() else x


def _lines(sketch: np.ndarray) -> np.ndarray:
    """Binarise the strokes: the median is the paper, strokes lie on the other side of 0.5."""
    bright_paper = float(np.median(sketch)) >= 0.5
    return sketch < 0.5 if bright_paper else sketch >= 0.5


def _enclosed(lines: np.ndarray) -> np.ndarray:
    """Everything not reached by a 4-connected flood fill of the non-line pixels from the border."""
    labels, _ = ndimage.label(~lines, structure=_FOUR)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    return ~outside


def _fill_one(sketch: np.ndarray, close_max: int) -> tuple[np.ndarray, int]:
    lines = _lines(sketch)
    if not lines.any():
        raise ValueError("the sketch has no strokes (it is uniform): draw the new item's outline, or pass "
                         "sketch_mask= with the filled region")
    filled = _enclosed(lines)
    if (filled & ~lines).any():
        return filled, 1
    line_area = int(lines.sum())
    for kernel in range(3, close_max + 1, 2):
        closed = ndimage.binary_closing(lines, structure=np.ones((kernel, kernel), bool), border_value=0)
        filled = _enclosed(closed)
        if int((filled & ~closed).sum()) > 2 * line_area:
            return filled, kernel
    raise ValueError(
        f"the sketch has no closed region, even after closing gaps with kernels up to {close_max} px: close the "
        "outline, raise close_max_px, or pass sketch_mask= (the filled region of the new item)"
    )


def fill_sketch(sketch: Tensor, *, close_max_px: int | None = None, return_kernel: bool = False):
    """``M_s`` from a sketch: the region the strokes enclose, strokes included (spec §2.1).

    sketch: (B,1,H,W) or (B,3,H,W) in [0,1], dark strokes on white or white strokes on black (the polarity comes
    from the median). An open contour is closed with square kernels 3, 5, 7, … up to ``close_max_px`` (default
    2% of the short side, at least 3) until the enclosed area exceeds twice the stroke area; otherwise a
    ``ValueError`` asks for ``sketch_mask``. Returns (B,1,H,W) float {0,1} (and the closing kernel used per
    sample, 1 = none, with ``return_kernel``).
    """
    if isinstance(sketch, Tensor) and sketch.ndim == 4 and sketch.shape[1] == 3:
        sketch = sketch.mean(dim=1, keepdim=True)
    s = _as_mask(sketch, "sketch")
    close_max = default_close_px(*s.shape[-2:]) if close_max_px is None else int(close_max_px)
    arr = s.detach().to("cpu", torch.float64).numpy()[:, 0]
    masks, kernels = [], []
    for b in range(arr.shape[0]):
        m, k = _fill_one(arr[b], close_max)
        masks.append(m)
        kernels.append(k)
    out = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)).to(s.device)
    return (out, kernels) if return_kernel else out


@dataclass
class RegionMasks:
    """Pixel and latent masks of one batch.

    Pixel (B,1,H,W): ``garment`` (``M_p``), ``sketch`` (``M_s``), ``operating`` (``M``, dilated).
    Latent (B,1,h,w): ``op`` (``M̄``), ``new`` (``M̄_s``), ``removal`` (``M̄_r``), ``keep`` (``M̄_k``),
    and ``garment_latent`` (``M̄_p``, any coverage; OFR's ``ρ_in``).
    """

    garment: Tensor
    sketch: Tensor
    operating: Tensor
    op: Tensor
    new: Tensor
    removal: Tensor
    keep: Tensor
    garment_latent: Tensor
    dilate_px: int
    pooling: str
    info: dict = field(default_factory=dict)

    @property
    def removal_empty(self) -> Tensor:
        """(B,) bool: no removal cell."""
        return self.removal.flatten(1).amax(dim=1) == 0

    @property
    def new_empty(self) -> Tensor:
        return self.new.flatten(1).amax(dim=1) == 0

    @property
    def op_empty(self) -> Tensor:
        return self.op.flatten(1).amax(dim=1) == 0

    def areas(self) -> dict[str, list[float]]:
        """Fractions of the canvas per region, pixel and latent (for the sidecar)."""
        def frac(m: Tensor) -> list[float]:
            return m.flatten(1).mean(dim=1).tolist()

        return {"pixel": {"garment": frac(self.garment), "sketch": frac(self.sketch), "op": frac(self.operating)},
                "latent": {"op": frac(self.op), "new": frac(self.new), "removal": frac(self.removal),
                           "keep": frac(self.keep)}}


def _pool(mask: Tensor, grid: tuple[int, int], how: str) -> Tensor:
    if how == "max":
        return (mask_to_grid(mask, grid, mode="any") > 0).float()
    if how == "area":
        return (mask_to_grid(mask, grid, mode="area") >= 0.5).float()
    if how == "nearest":
        return (mask_to_grid(mask, grid, mode="nearest") >= 0.5).float()
    raise ValueError(f"unknown pooling {how!r}")


def region_masks(
    garment_mask: Tensor | None,
    sketch_mask: Tensor | None,
    latent_hw: tuple[int, int],
    *,
    dilate_px: int | None = None,
    pooling: Literal["auto", "area", "nearest", "max"] = "auto",
    operating_area: Literal["union", "sketch"] = "union",
    size: tuple[int, int] | None = None,
) -> RegionMasks:
    """The operating area and the latent regions (spec §2.1, steps 3–4).

    Args:
        garment_mask: ``M_p`` (B,1,H,W) or ``None`` (= empty: an accessory is added).
        sketch_mask: ``M_s`` (B,1,H,W) or ``None`` (= ``M_p``: edit in place). Masks are binarised at 0.5.
        latent_hw: the latent grid (h, w); H and W must be multiples of it.
        dilate_px: the disk radius ``r`` of the operating area (default 1% of the short side, at least 1).
        pooling: ``auto`` (op: max, new: area ≥ 0.5), or one rule for both (``area`` ≥ 0.5, ``nearest``, ``max``).
        operating_area: ``union`` (``M_p ∪ M_s``) or ``sketch`` (``M_s`` only; the baseline_sketch_region row).
        size: (H, W) when both masks are ``None``.
    """
    if garment_mask is None and sketch_mask is None:
        if size is None:
            raise ValueError("pass a garment mask, a sketch mask or size=(H, W)")
        garment_mask = torch.zeros(1, 1, *size)
    if garment_mask is not None:
        garment_mask = _as_mask(garment_mask, "garment_mask")
    if sketch_mask is not None:
        sketch_mask = _as_mask(sketch_mask, "sketch_mask")
    if garment_mask is None:
        assert sketch_mask is not None
        garment_mask = torch.zeros_like(sketch_mask)
    if sketch_mask is None:
        sketch_mask = garment_mask
    if garment_mask.shape[-2:] != sketch_mask.shape[-2:]:
        raise ValueError(f"the garment mask is {garment_mask.shape[-1]}×{garment_mask.shape[-2]} (W×H) but the sketch "
                         f"mask is {sketch_mask.shape[-1]}×{sketch_mask.shape[-2]}: both must match the person image")
    batch = max(garment_mask.shape[0], sketch_mask.shape[0])
    mp = (garment_mask >= 0.5).float().expand(batch, -1, -1, -1)
    ms = (sketch_mask >= 0.5).float().to(mp.device).expand(batch, -1, -1, -1)
    height, width = mp.shape[-2:]
    grid = (int(latent_hw[0]), int(latent_hw[1]))
    if height % grid[0] or width % grid[1]:
        raise ValueError(f"image {width}×{height} (W×H) is not a multiple of the latent grid {grid[1]}×{grid[0]}")
    r = default_dilate_px(height, width) if dilate_px is None else int(dilate_px)
    base = ms if operating_area == "sketch" else torch.maximum(mp, ms)
    operating = dilate(base, r, shape="disk") if r > 0 else base.clone()
    op_rule, new_rule = ("max", "area") if pooling == "auto" else (pooling, pooling)
    op = _pool(operating, grid, op_rule)
    new = _pool(ms, grid, new_rule) * op
    # Nothing is worn there (accessory added): nothing to remove, so the sketch pass covers the whole operating
    # area, the dilation margin included, and the no-ControlNet pass is skipped (our choice; spec §6.3 item 6).
    nothing_worn = (mp.flatten(1).amax(dim=1) == 0).view(-1, 1, 1, 1)
    new = torch.where(nothing_worn, op, new)
    removal = op - new
    keep = 1.0 - op
    garment_latent = (mask_to_grid(mp, grid, mode="any") > 0).float()
    return RegionMasks(mp, ms, operating, op, new, removal, keep, garment_latent, r, pooling)


def control_image(
    mode: str,
    sketch: Tensor | None,
    sketch_mask: Tensor,
    *,
    user: Tensor | None = None,
) -> Tensor:
    """The ControlNet image (B,3,H,W) in [0,1].

    ``filled``: ``M_s`` white on black, edges blurred with σ = 0.5% of the short side. ``outline``: the sketch
    strokes white on black (``M_s``'s 1-px inner outline when no sketch was given). ``toy``: ``edge_map`` of the
    filled region, the format toy-unet's edge ControlNet was trained on. ``user``: ``user`` as given.
    """
    ms = _as_mask(sketch_mask, "sketch_mask")
    if mode == "user":
        if user is None:
            raise ValueError("control_image_mode='user' needs control_image=")
        from flowcore.images import check_image

        img = check_image(user, name="control_image")
        if img.shape[-2:] != ms.shape[-2:]:
            raise ValueError(f"the control image is {img.shape[-1]}×{img.shape[-2]} (W×H) but the person image is "
                             f"{ms.shape[-1]}×{ms.shape[-2]}")
        return img.to(ms.device)
    if mode == "filled":
        from feat_tryon.cspe import gaussian_blur

        sigma = 0.005 * min(ms.shape[-2:])
        return gaussian_blur(ms, sigma).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    if mode == "outline":
        if sketch is not None:
            s = sketch.mean(dim=1, keepdim=True) if sketch.shape[1] == 3 else _as_mask(sketch, "sketch")
            lines = torch.from_numpy(_lines(s.detach().cpu().double().numpy())).to(ms.device)
            return lines.float().expand(-1, 3, -1, -1).contiguous()
        return (ms - erode(ms, 1)).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    if mode == "toy":
        from flowcore.toy import edge_map

        return edge_map(ms.expand(-1, 3, -1, -1).contiguous())
    raise ValueError(f"unknown control image mode {mode!r}; use filled, outline, toy or user")
