"""Token layouts the linearized models hand to their processors (spec §4.2 "Token layout").

SD3 and FLUX layouts come from flowcore's ``TokenLayout.from_sd3`` / ``TokenLayout.from_flux_ids``; this module only
adds the FLUX fallback the spec asks for: an image segment whose ids do not form a full row-major grid keeps its
rows but loses its grid (so the locality conv is skipped for it), with one warning. A uniformly *strided* row-major
grid (specedit's coarse-only calls put an 8×8 coarse grid at half-integer positions 2I+½, 2J+½) keeps its
(rows, cols) grid: its conv neighbours are the adjacent coarse tokens (our choice; the spec disables the conv).
A segment whose tokens *tile* the fine frame with squares of side 1 (integer ids) and 2 (half-integer ids: the
mean position of a 2×2 block), i.e. specedit's mixed-resolution calls, keeps its conv too: the returned
:class:`MixedTokenLayout` lists it in ``scattered`` and the TTT module convolves the canvas the tokens tile
(``operator.dwconv_residual_scattered``; our choice, measured in the monorepo's ``tests/test_specedit_t5.py``).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import Tensor

from flowcore.layout import TokenLayout, TokenSegment

__all__ = ["MixedTokenLayout", "ScatteredSegment", "flux_layout", "sd3_layout"]

_WARNED: set[tuple] = set()


@dataclasses.dataclass(frozen=True, eq=False)
class ScatteredSegment:
    """An image segment whose ``length`` tokens (rows ``start …``) tile an (h, w) canvas of fine cells; ``cover``
    [h·w] gives the segment-relative token covering each cell, row-major."""

    start: int
    length: int
    canvas: tuple[int, int]
    cover: Tensor


@dataclasses.dataclass(frozen=True)
class MixedTokenLayout(TokenLayout):
    """A :class:`TokenLayout` whose grid-less image segments may be tilings (``scattered``), convolved on their
    canvas by the TTT locality module."""

    scattered: tuple[ScatteredSegment, ...] = ()


def sd3_layout(hidden_states: Tensor, n_text: int, patch_size: int) -> TokenLayout:
    """``[image (h·w), text]`` with (h, w) = latent (H, W) / patch, from ``hidden_states`` (B, C, H, W)."""
    height, width = hidden_states.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"latent size {height}x{width} is not a multiple of the patch size {patch_size}")
    return TokenLayout.from_sd3((height // patch_size, width // patch_size), n_text)


def flux_layout(txt_ids: Tensor, img_ids: Tensor) -> TokenLayout:
    """``[text, target(, reference)]`` from FLUX position ids; non-grid image segments get ``grid=None``."""
    txt = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
    img = img_ids[0] if img_ids.ndim == 3 else img_ids
    try:
        layout = TokenLayout.from_flux_ids(txt, img)
    except ValueError:
        layout = None
    if layout is not None and all(_row_major(img, s, len(txt)) for s in layout.segments if s.grid is not None):
        return layout
    return _layout_without_bad_grids(txt, img)


def _row_major(img: Tensor, seg: TokenSegment, n_text: int) -> bool:
    """True when the segment's ids run row-major over its (h, w) grid (row = r0 + i // w, col = c0 + i % w)."""
    ids = img[seg.start - n_text : seg.stop - n_text]
    _, w = seg.grid  # type: ignore[misc]
    index = torch.arange(seg.length, device=ids.device)
    rows = ids[:, 1] - ids[0, 1]
    cols = ids[:, 2] - ids[0, 2]
    return bool(torch.equal(rows.long(), index // w) and torch.equal(cols.long(), index % w)) and \
        bool((rows == rows.round()).all() and (cols == cols.round()).all())


def _layout_without_bad_grids(txt: Tensor, img: Tensor) -> TokenLayout:
    n_text = int(txt.shape[0])
    segments = [TokenSegment("text", 0, n_text)] if n_text else []
    scattered: list[ScatteredSegment] = []
    flags = img[:, 0]
    start, pos = 0, n_text
    while start < flags.shape[0]:
        stop = start
        while stop < flags.shape[0] and flags[stop] == flags[start]:
            stop += 1
        role = "target" if len(segments) == (1 if n_text else 0) else "reference"
        length = stop - start
        rows, cols = img[start:stop, 1], img[start:stop, 2]
        grid = _strided_grid(rows, cols)
        tiling = None if grid is not None else _tiling(rows, cols)
        if tiling is not None:
            scattered.append(ScatteredSegment(pos, length, *tiling))
        elif grid is None:
            _warn_once(role, length, (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1))
        segments.append(TokenSegment(role, pos, length, grid))
        pos += length
        start = stop
    return MixedTokenLayout(tuple(segments), tuple(scattered)) if scattered else TokenLayout(tuple(segments))


def _tiling(rows: Tensor, cols: Tensor) -> tuple[tuple[int, int], Tensor] | None:
    """(canvas (h, w), cover) when every token is a 1×1 cell at integer ids or a 2×2 block at half-integer ids
    (its centre) and together they cover the canvas exactly once; else None."""
    frac_r, frac_c = rows - rows.floor(), cols - cols.floor()
    half = (frac_r == 0.5) & (frac_c == 0.5)
    if not bool((half | ((frac_r == 0) & (frac_c == 0))).all()):
        return None
    side = 1 + half.long()
    top, left = (rows - 0.5 * half).long(), (cols - 0.5 * half).long()
    top, left = top - top.min(), left - left.min()
    h, w = int((top + side).max()), int((left + side).max())
    if h * w > 4 * rows.numel():
        return None
    cover = torch.full((h * w,), -1, dtype=torch.long, device=rows.device)
    hits = torch.zeros(h * w, dtype=torch.long, device=rows.device)
    for dr in (0, 1):
        for dc in (0, 1):
            use = (side > dr) & (side > dc)
            cell = (top[use] + dr) * w + left[use] + dc
            cover[cell] = torch.nonzero(use).flatten()
            hits.index_add_(0, cell, torch.ones_like(cell))
    return ((h, w), cover) if bool((hits == 1).all()) else None


def _strided_grid(rows: Tensor, cols: Tensor) -> tuple[int, int] | None:
    """(h, w) when the ids run row-major over an evenly spaced h×w lattice (any spacing), else None."""
    row_values, col_values = torch.unique(rows), torch.unique(cols)
    h, w = int(row_values.numel()), int(col_values.numel())
    if h * w != rows.numel() or not (_evenly_spaced(row_values) and _evenly_spaced(col_values)):
        return None
    index = torch.arange(rows.numel(), device=rows.device)
    ok = torch.equal(rows, row_values[index // w]) and torch.equal(cols, col_values[index % w])
    return (h, w) if ok else None


def _evenly_spaced(values: Tensor) -> bool:
    steps = values.diff()
    return steps.numel() == 0 or bool(torch.allclose(steps, steps[:1].expand_as(steps)))


def _warn_once(role: str, length: int, grid: tuple[int, int]) -> None:
    key = (role, length, grid)
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(
        f"the {role} image segment ({length} tokens, ids spanning {grid[0]}x{grid[1]}) is not a full row-major "
        "grid; the TTT locality conv is disabled for it (its rows are treated like text rows)",
        RuntimeWarning,
        stacklevel=3,
    )
