"""Mixed-resolution sequence layouts: index maps, positions and the attention key bias (spec §2.5).

A *cell* is 2×2 tokens. For an ``h×w`` token grid the coarse grid is ``h_c×w_c = ⌊h/2⌋×⌊w/2⌋``; tokens outside the
complete cells (odd ``h`` or ``w``) are *ragged* and always stay fine. A segment (target or reference) is sent as
its fine tokens (stock row-major order) followed by the coarse tokens of its unselected cells (row-major cell
order), so with every cell selected the order is exactly the stock one.

Positions are ``(row, col)`` in one frame per segment: the fine frame (fine token ``(i, j)`` → ``(i, j)``, coarse cell
``(I, J)`` → ``(2I + ½, 2J + ½)``, the mean of its four fine positions) or, for calls that are a plain
half-resolution edit, the native coarse grid (``(I, J)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

__all__ = ["CallPlan", "Grid", "SegmentPlan", "plan_call", "plan_segment"]

LOG4 = math.log(4.0)


@dataclass(frozen=True)
class Grid:
    """An ``h×w`` token grid (latent grid ``2h×2w``)."""

    h: int
    w: int

    def __post_init__(self) -> None:
        if self.h < 1 or self.w < 1:
            raise ValueError(f"token grids must be at least 1×1, got {self.h}×{self.w}")

    @property
    def hc(self) -> int:
        return self.h // 2

    @property
    def wc(self) -> int:
        return self.w // 2

    @property
    def n_tokens(self) -> int:
        return self.h * self.w

    @property
    def n_cells(self) -> int:
        return self.hc * self.wc

    @property
    def ragged(self) -> bool:
        return bool(self.h % 2 or self.w % 2)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return 2 * self.h, 2 * self.w

    def check_poolable(self) -> None:
        if self.hc < 1 or self.wc < 1:
            raise ValueError(
                f"a {self.h}×{self.w} token grid holds no complete 2×2 cell, so it cannot be pooled: SpecEdit needs "
                "at least 2 tokens per side (use a larger image)"
            )

    @cached_property
    def ragged_tokens(self) -> Tensor:
        """``(h·w,)`` bool: tokens outside the complete cells."""
        rows = torch.arange(self.h)[:, None] >= 2 * self.hc
        cols = torch.arange(self.w)[None, :] >= 2 * self.wc
        return (rows | cols).reshape(-1)

    @cached_property
    def cell_tokens(self) -> Tensor:
        """``(h_c·w_c, 4)`` long: the row-major token indices of each cell's tokens (TL, TR, BL, BR)."""
        rows = torch.arange(self.hc) * 2
        cols = torch.arange(self.wc) * 2
        top = rows[:, None] * self.w + cols[None, :]
        stack = torch.stack([top, top + 1, top + self.w, top + self.w + 1], dim=-1)
        return stack.reshape(-1, 4)

    def token_cells(self, cell_mask: Tensor) -> Tensor:
        """``(h_c, w_c)`` bool cell mask → ``(h·w,)`` bool token mask of the tokens in those cells."""
        out = torch.zeros(self.n_tokens, dtype=torch.bool)
        out[self.cell_tokens[cell_mask.reshape(-1).cpu()].reshape(-1)] = True
        return out


@dataclass(frozen=True)
class SegmentPlan:
    """How one image segment is sent: ``fine_idx`` (token indices, in sending order), ``coarse_idx`` (cell
    indices, row-major), ``positions`` ``(n, 2)`` float32 rows/cols in ``frame`` (``frame_grid`` is the grid the
    positions refer to, used by Qwen's centred rotary)."""

    fine_idx: Tensor
    coarse_idx: Tensor
    positions: Tensor
    frame_grid: tuple[int, int]
    native: bool

    @property
    def n_fine(self) -> int:
        return int(self.fine_idx.numel())

    @property
    def n_coarse(self) -> int:
        return int(self.coarse_idx.numel())

    @property
    def n(self) -> int:
        return self.n_fine + self.n_coarse


def plan_segment(grid: Grid, fine_cells: Tensor | None, *, native: bool = False, order: str = "row") -> SegmentPlan:
    """Plan one segment.

    ``fine_cells``: ``(h_c, w_c)`` bool (True = the cell's 4 tokens are sent fine); ``None`` = every cell fine (the
    stock segment). ``native``: positions on the coarse grid (only for all-coarse segments of unragged grids).
    ``order="cell"`` sends fine tokens cell by cell (a test of the index maps; attention is order-free).
    """
    if fine_cells is None:
        n = grid.n_tokens
        rows = torch.arange(grid.h, dtype=torch.float32).repeat_interleave(grid.w)
        cols = torch.arange(grid.w, dtype=torch.float32).repeat(grid.h)
        return SegmentPlan(torch.arange(n), torch.zeros(0, dtype=torch.long), torch.stack([rows, cols], 1),
                           (grid.h, grid.w), False)
    fine_cells = fine_cells.to("cpu", torch.bool)
    if tuple(fine_cells.shape) != (grid.hc, grid.wc):
        raise ValueError(f"cell mask of shape {tuple(fine_cells.shape)} does not match the {grid.hc}×{grid.wc} "
                         f"coarse grid of a {grid.h}×{grid.w} token grid")
    fine_tokens = grid.ragged_tokens | grid.token_cells(fine_cells)
    if order == "cell":
        fine_idx = torch.cat([grid.cell_tokens[fine_cells.reshape(-1)].reshape(-1),
                              torch.nonzero(grid.ragged_tokens).reshape(-1)])
    elif order == "row":
        fine_idx = torch.nonzero(fine_tokens).reshape(-1)
    else:
        raise ValueError(f"unknown token order {order!r}; use 'row' or 'cell'")
    coarse_idx = torch.nonzero(~fine_cells.reshape(-1)).reshape(-1)
    if native:
        if fine_idx.numel():
            raise ValueError("native coarse positions need an all-coarse segment without ragged tokens")
        pos = torch.stack([(coarse_idx // grid.wc).float(), (coarse_idx % grid.wc).float()], 1)
        return SegmentPlan(fine_idx, coarse_idx, pos, (grid.hc, grid.wc), True)
    fine_pos = torch.stack([(fine_idx // grid.w).float(), (fine_idx % grid.w).float()], 1)
    coarse_pos = torch.stack([(coarse_idx // grid.wc).float() * 2 + 0.5, (coarse_idx % grid.wc).float() * 2 + 0.5], 1)
    return SegmentPlan(fine_idx, coarse_idx, torch.cat([fine_pos, coarse_pos]), (grid.h, grid.w), False)


@dataclass(frozen=True)
class CallPlan:
    """One main-trajectory call: the target and reference plans, the key bias over the image rows
    (``None`` when every image token has one resolution) and bookkeeping."""

    stage: str
    target: SegmentPlan
    reference: SegmentPlan | None
    image_bias: Tensor | None
    reference_mode: str

    @property
    def n_target(self) -> int:
        return self.target.n

    @property
    def n_reference(self) -> int:
        return 0 if self.reference is None else self.reference.n

    @property
    def passthrough(self) -> bool:
        """True when the call is exactly the stock call (no coarse token anywhere, stock order)."""
        ref_ok = self.reference is None or self.reference.n_coarse == 0
        stock_order = torch.equal(self.target.fine_idx, torch.arange(self.target.n_fine))
        return self.target.n_coarse == 0 and ref_ok and stock_order


def plan_call(stage: str, target_grid: Grid, reference_grid: Grid | None, fine_cells: Tensor, *,
              reference_policy: str, coarse_positions: str, proportional_attention: bool,
              order: str = "row") -> CallPlan:
    """The plan of a ``"coarse"`` or ``"mixed"`` call.

    ``fine_cells``: the target's fine cells for this call (all False in coarse-only steps). The reference is sent
    per ``reference_policy`` (spec §2.5 table); ``mirror_mask`` with unequal grids behaves like ``coarse`` (the
    caller warns). Coarse-only steps use native coarse positions when ``coarse_positions`` is ``"native"``, or
    ``"auto"`` with a pooled reference, and the grids have no ragged tokens.
    """
    if stage not in ("coarse", "mixed"):
        raise ValueError(f"plan_call plans coarse or mixed calls, got stage {stage!r}")
    mode = "full"
    if reference_grid is not None:
        if reference_policy == "coarse":
            mode = "pooled" if stage == "coarse" else "full"
        elif reference_policy == "mirror_mask":
            same = reference_grid == target_grid
            if stage == "coarse":
                mode = "pooled"
            else:
                mode = "mirror" if same else "full"
    all_coarse = not bool(fine_cells.any()) and not target_grid.ragged
    native = False
    if stage == "coarse" and all_coarse and coarse_positions != "fine_frame":
        pooled_ok = reference_grid is None or (mode == "pooled" and not reference_grid.ragged)
        native = pooled_ok or (coarse_positions == "native" and mode == "full")
    target = plan_segment(target_grid, fine_cells, native=native, order=order)
    reference = None
    if reference_grid is not None:
        if mode == "full":
            reference = plan_segment(reference_grid, None)
        elif mode == "pooled":
            no_cells = torch.zeros(reference_grid.hc, reference_grid.wc, dtype=torch.bool)
            reference = plan_segment(reference_grid, no_cells, native=native and not reference_grid.ragged)
        else:
            reference = plan_segment(reference_grid, fine_cells, order=order)
    bias = None
    has_fine = target.n_fine > 0 or (reference is not None and reference.n_fine > 0)
    has_coarse = target.n_coarse > 0 or (reference is not None and reference.n_coarse > 0)
    if proportional_attention and has_fine and has_coarse:
        parts = [torch.zeros(target.n_fine), torch.full((target.n_coarse,), LOG4)]
        if reference is not None:
            parts += [torch.zeros(reference.n_fine), torch.full((reference.n_coarse,), LOG4)]
        bias = torch.cat(parts)
    return CallPlan(stage, target, reference, bias, mode)
