"""Token layouts: image segments inside a joint token sequence, and the row ranges kernels work on.

A sequence of N rows holds zero or more image segments, each a row-major (h, w) grid starting at some row;
every row outside all segments is a *text* row. Text may come first (FLUX), last (SD3) or between segments.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple


class Segment(NamedTuple):
    """An image segment of the token sequence: rows ``[start, start + h*w)`` in row-major (h, w) order."""

    start: int
    h: int
    w: int

    @property
    def length(self) -> int:
        return self.h * self.w

    @property
    def end(self) -> int:
        return self.start + self.h * self.w


class RowRange(NamedTuple):
    """A contiguous run of rows that lies entirely inside one segment or entirely in text.

    ``segment`` is the index of the containing segment in the sorted segment tuple, or -1 for text rows.
    """

    start: int
    end: int
    segment: int


def normalize_segments(segments: Sequence[Sequence[int]], n_rows: int) -> tuple[Segment, ...]:
    """Validate ``segments`` against a sequence of ``n_rows`` rows and return them sorted by start.

    Raises ``ValueError`` naming the offending segment when one is empty, out of range or overlaps another.
    """
    out: list[Segment] = []
    for raw in segments:
        try:
            start, h, w = (int(x) for x in raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a segment must be (start, h, w) integers, got {raw!r}") from exc
        if h < 1 or w < 1:
            raise ValueError(f"segment {raw!r}: h and w must be >= 1 (an image grid of h*w tokens)")
        if start < 0 or start + h * w > n_rows:
            raise ValueError(
                f"segment {raw!r} covers rows [{start}, {start + h * w}) but the sequence has {n_rows} rows; "
                "check the token layout (image grid (h, w) and text length)"
            )
        out.append(Segment(start, h, w))
    out.sort(key=lambda s: s.start)
    for prev, nxt in itertools.pairwise(out):
        if nxt.start < prev.end:
            raise ValueError(f"segments {tuple(prev)} and {tuple(nxt)} overlap; each row belongs to at most one")
    return tuple(out)


def split_rows(
    segments: tuple[Segment, ...], lo: int, hi: int, piece_len: int | None = None
) -> tuple[RowRange, ...]:
    """Cut rows ``[lo, hi)`` into ranges that never straddle a segment border.

    With ``piece_len`` the ranges are additionally cut at every multiple of ``piece_len`` (global row index),
    so long segments are shared among several programs. ``segments`` must be normalised (sorted, disjoint).
    """
    cuts = {lo, hi}
    for seg in segments:
        cuts.update(x for x in (seg.start, seg.end) if lo < x < hi)
    if piece_len is not None:
        if piece_len < 1:
            raise ValueError(f"piece_len must be >= 1, got {piece_len}")
        cuts.update(range((lo // piece_len + 1) * piece_len, hi, piece_len))
    bounds = sorted(cuts)
    ranges = []
    for a, b in itertools.pairwise(bounds):
        owner = next((i for i, s in enumerate(segments) if s.start <= a < s.end), -1)
        ranges.append(RowRange(a, b, owner))
    return tuple(ranges)


def stats_set_of(segment_index: int, n_segments: int, stats: str) -> int:
    """Index of the key-statistics set a row belongs to.

    ``joint``: one set (0). ``per_segment``: set i for image segment i, set ``n_segments`` for all text rows.
    """
    if stats == "joint":
        return 0
    return segment_index if segment_index >= 0 else n_segments


@functools.lru_cache(maxsize=256)
def stats_layout(n_rows: int, segments: tuple[Segment, ...], stats: str) -> tuple[int, tuple[int, ...]]:
    """(number of statistics sets, set index of every row) for ``stats`` in {"joint", "per_segment"}."""
    check_stats_mode(stats)
    row_set = [0] * n_rows
    if stats == "joint":
        return 1, tuple(row_set)
    n_seg = len(segments)
    has_text = False
    for rng in split_rows(segments, 0, n_rows):
        s = stats_set_of(rng.segment, n_seg, stats)
        has_text = has_text or rng.segment < 0
        row_set[rng.start : rng.end] = [s] * (rng.end - rng.start)
    return n_seg + (1 if has_text else 0), tuple(row_set)


def check_stats_mode(stats: str) -> None:
    if stats not in ("joint", "per_segment"):
        raise ValueError(f"key_norm_stats must be 'joint' or 'per_segment', got {stats!r}")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, multiple: int) -> int:
    return int(math.ceil(a / multiple)) * multiple
