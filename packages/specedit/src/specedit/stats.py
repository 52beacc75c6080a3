"""``SpecEditStats``: what one generation did (spec §5), JSON-safe through ``to_dict()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["SpecEditStats", "rle_decode", "rle_encode"]


def rle_encode(mask: Tensor) -> dict:
    """Row-major run-length code of a 2-D bool mask: ``{"shape", "start", "runs"}`` (runs alternate values)."""
    flat = mask.reshape(-1).to("cpu", torch.bool).tolist()
    runs: list[int] = []
    current, length = (flat[0] if flat else False), 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return {"shape": list(mask.shape), "start": bool(flat[0]) if flat else False, "runs": runs}


def rle_decode(code: dict) -> Tensor:
    """Inverse of :func:`rle_encode`."""
    values: list[bool] = []
    value = bool(code["start"])
    for run in code["runs"]:
        values += [value] * int(run)
        value = not value
    return torch.tensor(values, dtype=torch.bool).reshape(code["shape"])


@dataclass
class SpecEditStats:
    """Statistics of the last generation.

    steps: ``num_steps`` (N), ``n_coarse``/``n_mixed``/``n_full``, ``draft_steps`` (0 when no draft ran),
    ``branches`` (calls per step), ``draft_cfg`` (the draft used true CFG).
    grid: token grid ``h×w``, coarse grid ``h_c×w_c``, ``ragged``. cells: ``n_edit``, ``n_uniform``, ``n_union``,
    ``rho`` (fraction of target tokens kept fine), ``tau`` and S quantiles. calls: per-call token counts
    (``stage``, ``target``, ``reference``, ``text``) and forward-call counts. FLOPs: analytic (``flops_run``,
    ``flops_baseline``, ``flop_ratio``; ``flops_verify`` separately). Wall seconds: draft, verify, main (CUDA-
    synchronised on GPUs). ``mask``: RLE of the fine cells. ``keep_maps`` adds ``score_map`` and ``draft``.
    """

    num_steps: int = 0
    n_coarse: int = 0
    n_mixed: int = 0
    n_full: int = 0
    draft_steps: int = 0
    branches: int = 1
    draft_cfg: bool = False
    grid: tuple[int, int] = (0, 0)
    coarse_grid: tuple[int, int] = (0, 0)
    reference_grid: tuple[int, int] | None = None
    ragged: bool = False
    n_edit: int = 0
    n_uniform: int = 0
    n_union: int = 0
    rho: float = 1.0
    tau: float | None = None
    score_quantiles: dict[str, float] = field(default_factory=dict)
    feature_extractor: str | None = None
    reference_policy: str = "full"
    mask_source: str = "none"
    calls: list[dict[str, Any]] = field(default_factory=list)
    forward_calls_main: int = 0
    forward_calls_draft: int = 0
    flops_run: int | None = None
    flops_baseline: int | None = None
    flops_draft: int | None = None
    flops_verify: int | None = None
    flop_ratio: float | None = None
    wall_draft_s: float = 0.0
    wall_verify_s: float = 0.0
    wall_main_s: float = 0.0
    mask: dict | None = None
    warnings: list[str] = field(default_factory=list)
    score_map: Tensor | None = field(default=None, repr=False)
    draft: Tensor | None = field(default=None, repr=False)
    edit_cells: Tensor | None = field(default=None, repr=False)
    uniform_cells: Tensor | None = field(default=None, repr=False)

    @property
    def fine_cells(self) -> Tensor | None:
        return None if self.mask is None else rle_decode(self.mask)

    def to_dict(self, *, include_maps: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Tensor):
                if include_maps:
                    out[name] = value.detach().cpu().tolist()
                continue
            out[name] = value
        out["fine_cell_count"] = self.n_union
        return out
