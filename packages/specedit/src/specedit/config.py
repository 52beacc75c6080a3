"""``SpecEditConfig``: every knob of the method (spec §3), validated on construction.

Scores of the discrepancy map lie in ``[0, 4]`` (squared distance of two unit vectors), so ``tau`` is a raw
threshold on that scale: ``tau < 0`` selects every cell, ``tau = 4`` selects no edit cell (only the uniform grid).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

__all__ = ["SpecEditConfig", "StageSplit", "split_steps"]

_DRAFT_FACTORS = (2, 4, 6, 8)
_EXTRACTORS = ("auto", "vae_decoder", "color_pyramid", "latent")
_SOURCE_VIEWS = ("matched", "full")
_CELL_REDUCE = ("max", "mean")
_POLICIES = ("full", "coarse", "mirror_mask")
_POSITIONS = ("auto", "fine_frame", "native")
_COARSE_ATTENTION = ("recompute", "kv_cache")
_DRAFT_SHIFT = ("recompute", "main")
MAX_SCORE = 4.0


def _choice(name: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not supported; use one of {list(options)}")


def _int_range(name: str, value: Any, lo: int, hi: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}]{extra}, got {value!r}")


@dataclass(frozen=True)
class StageSplit:
    """Main-trajectory steps per stage: ``coarse`` (all cells coarse), ``mixed``, ``full`` (all fine, at the end)."""

    coarse: int
    mixed: int
    full: int

    @property
    def total(self) -> int:
        return self.coarse + self.mixed + self.full

    def stage(self, step: int) -> str:
        """``"coarse"``, ``"mixed"`` or ``"full"`` for a step index ``0..N-1``."""
        if step < self.coarse:
            return "coarse"
        if step < self.coarse + self.mixed:
            return "mixed"
        return "full"


def split_steps(num_steps: int, *, coarse_frac: float = 0.3, full_frac: float = 0.1, min_full_steps: int = 1,
                n_coarse: int | None = None, n_full: int | None = None) -> StageSplit:
    """The stage split of spec §2.4: ``n_c = ⌊0.3N + ½⌋``, ``n_f = max(min_full, ⌊0.1N + ½⌋)``, the rest mixed.

    Explicit ``n_coarse`` / ``n_full`` override the fractions. If the mixed count would be negative, ``n_c`` is
    reduced (then ``n_f``). N = 9/11/18/30/50 gives (3,5,1)/(3,7,1)/(5,11,2)/(9,18,3)/(15,30,5).
    """
    if num_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_steps}")
    nc = math.floor(coarse_frac * num_steps + 0.5) if n_coarse is None else int(n_coarse)
    nf = max(min_full_steps, math.floor(full_frac * num_steps + 0.5)) if n_full is None else int(n_full)
    nf = min(nf, num_steps)
    nc = max(0, min(nc, num_steps - nf))
    return StageSplit(nc, num_steps - nc - nf, nf)


@dataclass(frozen=True)
class SpecEditConfig:
    """All knobs of SpecEdit (spec §3). Defaults are the paper's where it states them, else our choices.

    Draft: ``draft_factor`` (pooling per side; 4 = 16× fewer tokens), ``draft_steps``, ``draft_shift``
    (``"recompute"``: μ from the draft's token count; ``"main"``: the main run's μ), ``draft_cfg_scale`` (None: the
    primed true-CFG scale).
    Verification: ``feature_extractor`` (``auto`` picks ``vae_decoder`` for real VAEs and ``color_pyramid`` for
    identity codecs), ``vae_taps``, ``source_view`` (``matched``: compare with the equally blurred source),
    ``cell_reduce``, ``tau`` (raw score threshold, strict ``>``), ``ratio`` (keep the top fraction of cells
    instead of thresholding), ``uniform_stride`` (k; 0 = off), ``dilate`` (3×3 max-filter iterations),
    ``mask_override`` (``"all"``, ``"none"`` or a bool tensor ``(h_c, w_c)``; skips draft and verification).
    Main run: ``coarse_frac``/``full_frac``/``min_full_steps`` or explicit ``n_coarse``/``n_full``,
    ``reference_policy`` (``full``, ``coarse``, ``mirror_mask``), ``coarse_positions`` (``auto``, ``fine_frame``,
    ``native``), ``proportional_attention`` (``log 4`` on coarse keys in mixed-resolution calls; off by default),
    ``coarse_attention`` (``recompute``; ``kv_cache`` is milestone 2 and raises), ``num_inference_steps`` (None:
    read from the bound scheduler), ``keep_maps`` (store S and the draft in the stats).
    """

    draft_factor: int = 4
    draft_steps: int = 8
    draft_shift: str = "recompute"
    draft_cfg_scale: float | None = None
    feature_extractor: str = "auto"
    vae_taps: tuple[str, ...] = ("mid_block", "up_blocks.0", "up_blocks.1")
    source_view: str = "matched"
    cell_reduce: str = "max"
    tau: float = 0.75
    ratio: float | None = None
    uniform_stride: int = 3
    dilate: int = 0
    mask_override: Any = None
    coarse_factor: int = 2
    coarse_frac: float = 0.3
    full_frac: float = 0.1
    min_full_steps: int = 1
    n_coarse: int | None = None
    n_full: int | None = None
    reference_policy: str = "full"
    coarse_positions: str = "auto"
    proportional_attention: bool = False  # spec default True; off measured better on the toy (README)
    coarse_attention: str = "recompute"
    num_inference_steps: int | None = None
    keep_maps: bool = False
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _choice("draft_factor", self.draft_factor, _DRAFT_FACTORS)
        _int_range("draft_steps", self.draft_steps, 1, 16)
        _choice("draft_shift", self.draft_shift, _DRAFT_SHIFT)
        if self.draft_cfg_scale is not None and not (math.isfinite(self.draft_cfg_scale) and self.draft_cfg_scale > 0):
            raise ValueError(f"draft_cfg_scale must be a positive finite float or None, got {self.draft_cfg_scale!r}")
        _choice("feature_extractor", self.feature_extractor, _EXTRACTORS)
        if isinstance(self.vae_taps, str) or not self.vae_taps or not all(isinstance(t, str) for t in self.vae_taps):
            raise ValueError(f"vae_taps must be a non-empty tuple of module names, got {self.vae_taps!r}")
        object.__setattr__(self, "vae_taps", tuple(self.vae_taps))
        _choice("source_view", self.source_view, _SOURCE_VIEWS)
        _choice("cell_reduce", self.cell_reduce, _CELL_REDUCE)
        if not isinstance(self.tau, (int, float)) or isinstance(self.tau, bool) or math.isnan(self.tau) \
                or self.tau > MAX_SCORE or math.isinf(self.tau):
            raise ValueError(
                f"tau must be a finite float <= {MAX_SCORE} (scores lie in [0, 4]; tau < 0 selects every cell, "
                f"tau = 4 selects only the uniform grid), got {self.tau!r}"
            )
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and 0.0 < self.ratio <= 1.0):
            raise ValueError(f"ratio must lie in (0, 1] (the fraction of cells kept fine) or be None, got {self.ratio!r}")
        if self.uniform_stride != 0:
            _int_range("uniform_stride", self.uniform_stride, 2, 8, " (or 0 to switch the uniform grid off)")
        _int_range("dilate", self.dilate, 0, 3)
        self._check_mask_override()
        if self.coarse_factor != 2:
            raise ValueError(f"coarse_factor must be 2 in v1 (4 is future work), got {self.coarse_factor!r}")
        for name in ("coarse_frac", "full_frac"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        if self.coarse_frac + self.full_frac > 1.0 + 1e-9:
            raise ValueError(f"coarse_frac + full_frac must be <= 1, got {self.coarse_frac} + {self.full_frac}")
        _int_range("min_full_steps", self.min_full_steps, 0, 1000)
        for name in ("n_coarse", "n_full"):
            value = getattr(self, name)
            if value is not None:
                _int_range(name, value, 0, 10_000)
        _choice("reference_policy", self.reference_policy, _POLICIES)
        _choice("coarse_positions", self.coarse_positions, _POSITIONS)
        if not isinstance(self.proportional_attention, bool):
            raise ValueError(f"proportional_attention must be a bool, got {self.proportional_attention!r}")
        _choice("coarse_attention", self.coarse_attention, _COARSE_ATTENTION)
        if self.num_inference_steps is not None:
            _int_range("num_inference_steps", self.num_inference_steps, 1, 10_000)

    def _check_mask_override(self) -> None:
        m = self.mask_override
        if m is None or (isinstance(m, str) and m in ("all", "none")):
            return
        if isinstance(m, torch.Tensor):
            if m.dtype != torch.bool or m.ndim != 2:
                raise ValueError(
                    f"mask_override tensors must be bool (h_c, w_c) cell masks (True = keep the cell fine), got "
                    f"dtype {m.dtype} and shape {tuple(m.shape)}"
                )
            return
        raise ValueError(f"mask_override must be None, 'all', 'none' or a bool tensor (h_c, w_c), got {m!r}")

    def split(self, num_steps: int) -> StageSplit:
        """The stage split for ``num_steps`` main steps."""
        return split_steps(num_steps, coarse_frac=self.coarse_frac, full_frac=self.full_frac,
                           min_full_steps=self.min_full_steps, n_coarse=self.n_coarse, n_full=self.n_full)

    def replace(self, **changes: Any) -> SpecEditConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra", None)
        m = self.mask_override
        if isinstance(m, torch.Tensor):
            out["mask_override"] = {"shape": list(m.shape), "fine_cells": int(m.sum())}
        return out
