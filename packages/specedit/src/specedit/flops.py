"""Analytic FLOP model of FLUX/Kontext and Qwen-Image transformers (spec §5, §8.3).

Counts matmul FLOPs only (2 per multiply-add): every ``nn.Linear`` (embedders, modulation, attention projections,
MLPs, output layers) plus ``4·S²·D`` attention per block — the same convention as
``torch.utils.flop_counter.FlopCounterMode`` (``measured_forward_flops`` equals ``forward_flops`` exactly on tiny
models, test C2). :func:`run_flops` composes a whole SpecEdit run (draft, coarse, mixed and full steps) and the
stock baseline; :func:`paper_table` reproduces the spec §8.3 table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from specedit.config import SpecEditConfig
from specedit.layout import Grid

__all__ = [
    "FLUX_KONTEXT_DEV",
    "QWEN_IMAGE_EDIT",
    "ArchSpec",
    "FlopReport",
    "forward_flops",
    "measured_forward_flops",
    "paper_table",
    "run_flops",
    "stage_tokens",
]

TIME_PROJ_DIM = 256


@dataclass(frozen=True)
class ArchSpec:
    """What the FLOP count needs: ``family`` (``flux`` or ``qwen``), ``inner_dim`` D, ``mlp_ratio``, block counts,
    ``in_dim`` (token width in), ``out_dim`` (token width out), ``text_dim``, ``pooled_dim`` (FLUX CLIP width),
    ``guidance_embed``, ``zero_cond_t`` (Qwen-Image-Edit-2509+ doubles the modulation batch)."""

    family: str
    inner_dim: int
    mlp_ratio: float = 4.0
    n_double: int = 0
    n_single: int = 0
    in_dim: int = 64
    out_dim: int = 64
    text_dim: int = 4096
    pooled_dim: int = 768
    guidance_embed: bool = False
    zero_cond_t: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], family: str | None = None) -> ArchSpec:
        """From a diffusers transformer config (``FluxTransformer2DModel`` / ``QwenImageTransformer2DModel``)."""
        cfg = dict(config)
        name = cfg.get("_class_name", "")
        family = family or ("qwen" if "Qwen" in name or "zero_cond_t" in cfg else "flux")
        inner = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
        patch = int(cfg.get("patch_size", 1) or 1)
        in_ch = int(cfg["in_channels"])
        if family == "flux":
            out_ch = cfg.get("out_channels") or in_ch
            return cls("flux", inner, 4.0, int(cfg["num_layers"]), int(cfg["num_single_layers"]), in_ch,
                       patch * patch * int(out_ch), int(cfg["joint_attention_dim"]), int(cfg["pooled_projection_dim"]),
                       bool(cfg.get("guidance_embeds", False)))
        out_ch = cfg.get("out_channels") or in_ch
        return cls("qwen", inner, 4.0, int(cfg["num_layers"]), 0, in_ch, patch * patch * int(out_ch),
                   int(cfg["joint_attention_dim"]), 0, False, bool(cfg.get("zero_cond_t", False)))

    @classmethod
    def from_transformer(cls, module: nn.Module) -> ArchSpec:
        names = [c.__name__ for c in type(module).__mro__]
        family = "qwen" if any(n.startswith("QwenImageTransformer2DModel") for n in names) else "flux"
        return cls.from_config(module.config, family)


FLUX_KONTEXT_DEV = ArchSpec("flux", 3072, 4.0, 19, 38, 64, 64, 4096, 768, True)
QWEN_IMAGE_EDIT = ArchSpec("qwen", 3072, 4.0, 60, 0, 64, 64, 3584, 0, False, False)


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def forward_flops(arch: ArchSpec, n_img: int, n_txt: int, batch: int = 1) -> int:
    """Matmul FLOPs of one forward call with ``n_img`` image tokens (target + reference) and ``n_txt`` text tokens
    per row, ``batch`` rows."""
    d, b = arch.inner_dim, batch
    mlp = int(d * arch.mlp_ratio)
    s = n_img + n_txt
    attention = 4 * b * s * s * d
    if arch.family == "flux":
        total = _linear(b * n_img, arch.in_dim, d) + _linear(b * n_txt, arch.text_dim, d)
        total += _linear(b, TIME_PROJ_DIM, d) + _linear(b, d, d)
        if arch.guidance_embed:
            total += _linear(b, TIME_PROJ_DIM, d) + _linear(b, d, d)
        total += _linear(b, arch.pooled_dim, d) + _linear(b, d, d)
        double = 2 * _linear(b, d, 6 * d)
        double += 4 * _linear(b * n_img, d, d) + 4 * _linear(b * n_txt, d, d)
        double += _linear(b * n_img, d, mlp) + _linear(b * n_img, mlp, d)
        double += _linear(b * n_txt, d, mlp) + _linear(b * n_txt, mlp, d)
        single = _linear(b, d, 3 * d) + _linear(b * s, d, mlp) + 3 * _linear(b * s, d, d)
        single += _linear(b * s, d + mlp, d)
        total += arch.n_double * (double + attention) + arch.n_single * (single + attention)
        total += _linear(b, d, 2 * d) + _linear(b * n_img, d, arch.out_dim)
        return total
    if arch.family == "qwen":
        t_rows = 2 * b if arch.zero_cond_t else b
        total = _linear(b * n_img, arch.in_dim, d) + _linear(b * n_txt, arch.text_dim, d)
        total += _linear(t_rows, TIME_PROJ_DIM, d) + _linear(t_rows, d, d)
        block = _linear(t_rows, d, 6 * d) + _linear(b, d, 6 * d)
        block += 4 * _linear(b * n_img, d, d) + 4 * _linear(b * n_txt, d, d)
        block += _linear(b * n_img, d, mlp) + _linear(b * n_img, mlp, d)
        block += _linear(b * n_txt, d, mlp) + _linear(b * n_txt, mlp, d)
        total += arch.n_double * (block + attention)
        total += _linear(b, d, 2 * d) + _linear(b * n_img, d, arch.out_dim)
        return total
    raise ValueError(f"unknown family {arch.family!r}; use 'flux' or 'qwen'")


def measured_forward_flops(model: nn.Module, **kwargs: Any) -> int:
    """FLOPs of ``model(**kwargs)`` as counted by ``flowcore.bench.count_flops`` (FlopCounterMode, MATH SDPA)."""
    from flowcore.bench import count_flops

    with torch.no_grad():
        return count_flops(model, **kwargs)


# --------------------------------------------------------------------------------------------- whole runs
@dataclass(frozen=True)
class StageTokens:
    """Target and reference tokens per call of each stage."""

    draft: tuple[int, int]
    coarse: tuple[int, int]
    mixed: tuple[int, int]
    full: tuple[int, int]


def _pooled_tokens(grid: Grid) -> int:
    return grid.n_cells + int(grid.ragged_tokens.sum())


def _draft_grid(grid: Grid, factor: int) -> Grid:
    multiple = 2 * factor
    hh = -(-2 * grid.h // multiple) * multiple
    ww = -(-2 * grid.w // multiple) * multiple
    return Grid(hh // factor // 2, ww // factor // 2)


def stage_tokens(grid: Grid, ref_grid: Grid | None, config: SpecEditConfig, rho: float) -> StageTokens:
    """Token counts per call (spec §2.7): draft ``hw/16``, coarse ``hw/4``, mixed ``hw(ρ + (1−ρ)/4)`` (ρ rounded to
    whole cells), full ``hw``; the reference per policy."""
    n_cells_fine = round(rho * grid.n_cells) if grid.n_cells else 0
    ragged = int(grid.ragged_tokens.sum())
    mixed_t = 4 * n_cells_fine + (grid.n_cells - n_cells_fine) + ragged
    coarse_t = _pooled_tokens(grid)
    full_r = ref_grid.n_tokens if ref_grid else 0
    pooled_r = _pooled_tokens(ref_grid) if ref_grid else 0
    policy = config.reference_policy
    coarse_r = full_r if policy == "full" else pooled_r
    mirror_ok = ref_grid is not None and ref_grid == grid
    mixed_r = mixed_t if (policy == "mirror_mask" and mirror_ok) else full_r
    dgrid = _draft_grid(grid, config.draft_factor)
    drgrid = _draft_grid(ref_grid, config.draft_factor) if ref_grid else None
    draft = (dgrid.n_tokens, drgrid.n_tokens if drgrid else 0)
    return StageTokens(draft, (coarse_t, coarse_r), (mixed_t, mixed_r), (grid.n_tokens, full_r))


@dataclass
class FlopReport:
    """A run's analytic FLOPs: per-call costs, totals for SpecEdit and the baseline, and their ratio."""

    num_steps: int
    baseline_steps: int
    split: tuple[int, int, int]
    draft_steps: int
    branches: int
    tokens: dict[str, tuple[int, int]]
    per_call: dict[str, int]
    flops_run: int
    flops_draft: int
    flops_baseline: int
    ratio: float
    relative_step_cost: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def run_flops(arch: ArchSpec, config: SpecEditConfig, height: int, width: int, num_inference_steps: int,
              n_txt: int, branches: int = 1, rho: float = 0.25, *, reference_hw: tuple[int, int] | None = None,
              vae_scale: int = 8, baseline_steps: int = 50, draft: bool = True) -> FlopReport:
    """Analytic FLOPs of a SpecEdit run at ``height×width`` px (reference the same size unless ``reference_hw``)
    with ``num_inference_steps`` main steps, against the stock pipeline at ``baseline_steps`` steps."""
    unit = 2 * vae_scale
    if height % unit or width % unit:
        raise ValueError(f"height and width must be multiples of {unit} px (VAE ×{vae_scale}, 2×2 tokens)")
    grid = Grid(height // unit, width // unit)
    grid.check_poolable()
    rh, rw = reference_hw or (height, width)
    ref_grid = Grid(rh // unit, rw // unit)
    tok = stage_tokens(grid, ref_grid, config, rho)
    per_call = {name: forward_flops(arch, sum(getattr(tok, name)), n_txt) for name in ("draft", "coarse", "mixed",
                                                                                         "full")}
    split = config.split(num_inference_steps)
    n_draft = config.draft_steps if (draft and split.mixed > 0) else 0
    flops_draft = branches * n_draft * per_call["draft"]
    main = branches * (split.coarse * per_call["coarse"] + split.mixed * per_call["mixed"]
                       + split.full * per_call["full"])
    baseline = branches * baseline_steps * per_call["full"]
    run = main + flops_draft
    relative = {name: per_call[name] / per_call["full"] for name in per_call}
    return FlopReport(num_inference_steps, baseline_steps, (split.coarse, split.mixed, split.full), n_draft, branches,
                      {k: getattr(tok, k) for k in ("draft", "coarse", "mixed", "full")}, per_call, run, flops_draft,
                      baseline, baseline / run if run else math.inf, relative)


PAPER_RATIOS = {
    "flux-kontext-dev": {30: 3.31, 18: 5.38, 11: 6.92, 9: 7.37},
    "qwen-image-edit": {30: 3.27, 18: 5.40, 11: 7.07, 9: 10.94},
}
PAPER_LATENCY = {
    "flux-kontext-dev": {30: 3.15, 18: 4.10, 11: 6.40, 9: 7.05},
    "qwen-image-edit": {30: 2.96, 18: 5.08, 11: 6.04, 9: 6.43},
}
SPEC_TABLE = {  # spec §8.3: (full .118/.25/.5, mirror_mask .118/.25/.5)
    "flux-kontext-dev": {30: ((2.50, 2.39, 2.19), (4.48, 3.92, 3.11)), 18: ((4.04, 3.86, 3.55), (7.01, 6.16, 4.94)),
                         11: ((6.46, 6.17, 5.66), (11.18, 9.82, 7.84)), 9: ((7.70, 7.39, 6.87), (12.92, 11.60, 9.57))},
    "qwen-image-edit": {30: ((2.35, 2.26, 2.09), (3.84, 3.45, 2.84)), 18: ((3.76, 3.61, 3.35), (5.94, 5.35, 4.46)),
                        11: ((5.87, 5.65, 5.25), (9.16, 8.28, 6.91)), 9: ((6.93, 6.70, 6.29), (10.51, 9.67, 8.30))},
}
ARCHS = {"flux-kontext-dev": (FLUX_KONTEXT_DEV, 512, 1), "qwen-image-edit": (QWEN_IMAGE_EDIT, 1400, 2)}


def paper_table(arch_name: str, *, height: int = 1024, width: int = 1024, n_txt: int | None = None,
                rhos: tuple[float, ...] = (0.118, 0.25, 0.5), steps: tuple[int, ...] = (30, 18, 11, 9),
                config: SpecEditConfig | None = None) -> list[dict]:
    """Rows of predicted FLOP speed-ups vs the 50-step baseline for the ``full`` and ``mirror_mask`` policies next
    to the paper's ratio and the spec's table (for the default split and draft)."""
    if arch_name not in ARCHS:
        raise ValueError(f"unknown architecture {arch_name!r}; use one of {list(ARCHS)}")
    arch, default_txt, branches = ARCHS[arch_name]
    n_txt = default_txt if n_txt is None else n_txt
    base = config or SpecEditConfig()
    rows = []
    for nfe in steps:
        row: dict[str, Any] = {"nfe": nfe, "paper": PAPER_RATIOS[arch_name].get(nfe)}
        for policy in ("full", "mirror_mask"):
            cfg = base.replace(reference_policy=policy)
            for rho in rhos:
                rep = run_flops(arch, cfg, height, width, nfe, n_txt, branches, rho)
                row[f"{policy}@{rho:g}"] = round(rep.ratio, 2)
        spec = SPEC_TABLE[arch_name].get(nfe)
        if spec is not None and (height, width, n_txt, rhos) == (1024, 1024, default_txt, (0.118, 0.25, 0.5)):
            row["spec_full"] = "/".join(f"{v:.2f}" for v in spec[0])
            row["spec_mirror"] = "/".join(f"{v:.2f}" for v in spec[1])
        rows.append(row)
    return rows
