"""Which rows of a joint attention sequence are text, target image or reference image.

Orders per architecture: SD3/SD3.5 ``[image, text]``; FLUX ``[text, target]``; FLUX Kontext ``[text, target,
reference]``; Qwen-Image(-Edit) ``[text, target, reference...]``; UNet self-attention ``[target]``. Image segments
are row-major over an ``(h, w)`` token grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["TokenLayout", "TokenSegment"]

Role = Literal["text", "target", "reference"]


@dataclass(frozen=True)
class TokenSegment:
    """``length`` rows from ``start``; image segments carry their ``(h, w)`` grid (``h·w == length``)."""

    role: Role
    start: int
    length: int
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.role not in ("text", "target", "reference"):
            raise ValueError(f"unknown segment role {self.role!r}")
        if self.grid is not None and self.grid[0] * self.grid[1] != self.length:
            raise ValueError(f"grid {self.grid} does not hold {self.length} tokens")

    @property
    def stop(self) -> int:
        return self.start + self.length

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class TokenLayout:
    """Ordered, contiguous segments covering a joint sequence of ``total`` rows."""

    segments: tuple[TokenSegment, ...]

    def __post_init__(self) -> None:
        pos = 0
        for seg in self.segments:
            if seg.start != pos:
                raise ValueError(f"segments must be contiguous and ordered: expected start {pos}, got {seg.start}")
            pos = seg.stop

    @property
    def total(self) -> int:
        return self.segments[-1].stop if self.segments else 0

    def find(self, role: Role) -> list[TokenSegment]:
        return [s for s in self.segments if s.role == role]

    def has(self, role: Role) -> bool:
        return any(s.role == role for s in self.segments)

    def slice(self, role: Role) -> slice:
        """The rows of the (single) segment with ``role``; raises if absent or repeated."""
        return self._one(role).slice

    def grid(self, role: Role = "target") -> tuple[int, int]:
        g = self._one(role).grid
        if g is None:
            raise ValueError(f"the {role} segment has no grid")
        return g

    def _one(self, role: Role) -> TokenSegment:
        found = self.find(role)
        if len(found) != 1:
            raise ValueError(f"layout has {len(found)} {role} segments, expected exactly one: {self.segments}")
        return found[0]

    def image_only(self) -> TokenLayout:
        """The layout of the image rows alone (e.g. SD3.5's ``attn2``, which sees no text), restarted at 0."""
        pos, segs = 0, []
        for s in self.segments:
            if s.role != "text":
                segs.append(TokenSegment(s.role, pos, s.length, s.grid))
                pos += s.length
        return TokenLayout(tuple(segs))

    def kernel_segments(self) -> tuple[tuple[int, int, int], ...]:
        """``(start, h, w)`` of every image segment, for ``flowkernels.Segment``."""
        return tuple((s.start, s.grid[0], s.grid[1]) for s in self.segments if s.grid is not None)

    # --- constructors per architecture ------------------------------------------------------------------
    @classmethod
    def from_sd3(cls, grid_hw: tuple[int, int], n_text: int) -> TokenLayout:
        """SD3/SD3.5 joint attention: ``[image (h·w), text (n_text)]``; ``n_text = 0`` for ``attn2``."""
        h, w = grid_hw
        segs = [TokenSegment("target", 0, h * w, (h, w))]
        if n_text:
            segs.append(TokenSegment("text", h * w, n_text))
        return cls(tuple(segs))

    @classmethod
    def from_flux_ids(cls, txt_ids: Tensor, img_ids: Tensor) -> TokenLayout:
        """FLUX / Kontext: ``[text, target(, reference)]`` with image grids read from ``img_ids`` ``(S, 3)``.

        Image rows are grouped by ``img_ids[:, 0]`` (0 = target, 1 = Kontext reference), in order of appearance;
        a group's grid is ``(max row − min row + 1, max col − min col + 1)``, checked against its length.
        """
        if txt_ids.ndim == 3:
            txt_ids = txt_ids[0]
        if img_ids.ndim == 3:
            img_ids = img_ids[0]
        n_text = int(txt_ids.shape[0])
        segs = [TokenSegment("text", 0, n_text)] if n_text else []
        flags = img_ids[:, 0]
        pos = n_text
        start = 0
        while start < flags.shape[0]:
            flag = flags[start]
            stop = start
            while stop < flags.shape[0] and flags[stop] == flag:
                stop += 1
            rows, cols = img_ids[start:stop, 1], img_ids[start:stop, 2]
            grid = (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
            length = stop - start
            if grid[0] * grid[1] != length:
                raise ValueError(f"image ids with flag {float(flag)} do not form a full {grid} grid ({length} rows)")
            role: Role = "target" if len(segs) == (1 if n_text else 0) else "reference"
            segs.append(TokenSegment(role, pos, length, grid))
            pos += length
            start = stop
        return cls(tuple(segs))

    @classmethod
    def from_qwen(cls, img_shapes: list[tuple[int, int, int]], n_text: int) -> TokenLayout:
        """Qwen-Image(-Edit): ``[text, target, reference...]``; ``img_shapes`` of one sample, ``(frames, h, w)``
        per image, the first being the target."""
        segs = [TokenSegment("text", 0, n_text)] if n_text else []
        pos = n_text
        for k, (f, h, w) in enumerate(img_shapes):
            if f != 1:
                raise ValueError("only single-frame images are supported")
            segs.append(TokenSegment("target" if k == 0 else "reference", pos, h * w, (h, w)))
            pos += h * w
        return cls(tuple(segs))

    @classmethod
    def image(cls, grid_hw: tuple[int, int]) -> TokenLayout:
        """A lone image segment (UNet self-attention at one resolution)."""
        h, w = grid_hw
        return cls((TokenSegment("target", 0, h * w, (h, w)),))

    def to_mask(self, role: Role, device: torch.device | None = None) -> Tensor:
        """A ``(total,)`` bool mask of the rows with ``role``."""
        m = torch.zeros(self.total, dtype=torch.bool, device=device)
        for s in self.find(role):
            m[s.slice] = True
        return m
