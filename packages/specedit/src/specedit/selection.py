"""Token selection (spec §2.3 steps 4–6): cell scores, the edit set, the uniform grid and the union.

Cells are 2×2 tokens = 4×4 latent pixels. ``M_edit = {s > τ}`` (strict) or the top ``ratio`` of cells; optional 3×3
dilation; ``M_unif = {I mod k = 0 and J mod k = 0}``; ragged tokens (outside complete cells) are handled by the
layout and always stay fine. With a batch, the union over rows gives one layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from specedit.layout import Grid

__all__ = ["Selection", "cell_scores", "select_cells", "uniform_cells"]


def cell_scores(score_map: Tensor, grid: Grid, reduce: str = "max") -> Tensor:
    """``(B, H, W)`` discrepancy at latent resolution → ``(B, h_c, w_c)`` cell scores (max or mean over the 4×4
    latent pixels of each complete cell)."""
    region = score_map[:, : 4 * grid.hc, : 4 * grid.wc].float()[:, None]
    if reduce == "max":
        return F.max_pool2d(region, 4)[:, 0]
    if reduce == "mean":
        return F.avg_pool2d(region, 4)[:, 0]
    raise ValueError(f"cell_reduce must be 'max' or 'mean', got {reduce!r}")


def uniform_cells(grid: Grid, stride: int) -> Tensor:
    """``(h_c, w_c)`` bool: cells with ``I mod k = 0`` and ``J mod k = 0`` (``⌈h_c/k⌉·⌈w_c/k⌉`` cells; none for k=0)."""
    out = torch.zeros(grid.hc, grid.wc, dtype=torch.bool)
    if stride:
        out[::stride, ::stride] = True
    return out


def _dilate(mask: Tensor, iterations: int) -> Tensor:
    x = mask.float()[None, None]
    for _ in range(iterations):
        x = F.max_pool2d(x, 3, stride=1, padding=1)
    return x[0, 0] > 0


@dataclass(frozen=True)
class Selection:
    """The selected cells: ``edit`` (from scores, after dilation), ``uniform``, ``union`` (all ``(h_c, w_c)`` bool),
    ``rho`` = fraction of target tokens kept fine (ragged tokens included)."""

    edit: Tensor
    uniform: Tensor
    union: Tensor
    rho: float

    @staticmethod
    def from_union(grid: Grid, edit: Tensor, uniform: Tensor) -> Selection:
        union = edit | uniform
        fine_tokens = 4 * int(union.sum()) + int(grid.ragged_tokens.sum())
        return Selection(edit, uniform, union, fine_tokens / grid.n_tokens)


def select_cells(scores: Tensor, grid: Grid, *, tau: float = 0.75, ratio: float | None = None,
                 uniform_stride: int = 3, dilate: int = 0) -> Selection:
    """Cells kept fine from ``(B, h_c, w_c)`` scores (batch rows are united).

    ``ratio`` (when given) keeps the ``⌈ratio·h_c·w_c⌉`` highest-scoring cells instead of thresholding at ``tau``.
    """
    if scores.ndim == 2:
        scores = scores[None]
    if tuple(scores.shape[-2:]) != (grid.hc, grid.wc):
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not match the {grid.hc}×{grid.wc} coarse grid")
    if ratio is not None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
        top = scores.amax(0).reshape(-1)
        k = min(top.numel(), math.ceil(ratio * top.numel()))
        order = torch.argsort(top, descending=True, stable=True)
        edit = torch.zeros(top.numel(), dtype=torch.bool)
        edit[order[:k].cpu()] = True
        edit = edit.reshape(grid.hc, grid.wc)
    else:
        edit = (scores > tau).any(0).cpu()
    if dilate:
        edit = _dilate(edit, dilate)
    return Selection.from_union(grid, edit, uniform_cells(grid, uniform_stride))
