"""Benchmarks (spec §8): per-call wall time of every SpecEdit call type next to its analytic FLOP ratio.

- :func:`mechanism_bench` (B2, CPU): a tiny-width FLUX Kontext transformer (D = 256, 2 double + 4 single blocks)
  at a 32×32 token grid with an equal reference and 128 text tokens.
- :func:`gpu_bench` (§8.2): random-weight full-size FLUX.1-Kontext-dev (bf16, 1024² + 1024² reference, 512 text
  tokens) and Qwen-Image (60 blocks, 1,400 text tokens, two calls per step), CUDA-event timing, predicted
  end-to-end latency ratios at 30/18/11/9 NFE next to the paper's.

Call types: ``draft``, ``coarse`` (full / pooled reference), ``mixed`` at ρ ∈ {0.118, 0.25, 0.5, 1.0} with the
proportional-attention bias on and off, ``full``. Every table is measured side by side in one run
(``flowcore.bench.compare``, interleaved repeats); nothing here asserts a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flowcore.seeding import seeded_init
from specedit.config import SpecEditConfig
from specedit.families import Family, family_for
from specedit.flops import PAPER_LATENCY, ArchSpec, _draft_grid, forward_flops
from specedit.layout import CallPlan, Grid, plan_call
from specedit.processor import SpecEditProcessor
from specedit.selection import uniform_cells

__all__ = ["CallSpec", "build_calls", "gpu_bench", "mechanism_bench", "predicted_latency"]

RHOS = (0.118, 0.25, 0.5, 1.0)


@dataclass
class CallSpec:
    """One timed call type: its kwargs, the plan (``None`` for stock-layout calls) and the key bias."""

    name: str
    kwargs: dict[str, Any]
    plan: CallPlan | None
    bias: torch.Tensor | None
    n_img: int


def _cells_for_rho(grid: Grid, rho: float, stride: int = 3, seed: int = 0) -> torch.Tensor:
    """A cell mask with the uniform grid plus random cells up to ``ρ`` of the cells fine."""
    flat = uniform_cells(grid, stride).reshape(-1).clone()
    want = round(rho * grid.n_cells)
    order = torch.randperm(grid.n_cells, generator=torch.Generator().manual_seed(seed))
    for index in order.tolist():
        if int(flat.sum()) >= want:
            break
        flat[index] = True
    return flat.reshape(grid.hc, grid.wc)


def _stock_kwargs(family: Family, grid: Grid, ref: Grid, n_txt: int, width: int, text_dim: int, pooled: int,
                  device: torch.device, dtype: torch.dtype, guidance: bool, batch: int = 1) -> dict[str, Any]:
    n_img = grid.n_tokens + ref.n_tokens
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(batch, n_img, width, generator=g).to(device, dtype)
    text = torch.randn(batch, n_txt, text_dim, generator=g).to(device, dtype)
    timestep = torch.full((batch,), 0.5, device=device, dtype=dtype)
    if family.name == "flux_kontext":
        from specedit.families.flux_kontext import _grid_ids

        kw = dict(hidden_states=hidden, encoder_hidden_states=text,
                  pooled_projections=torch.randn(batch, pooled, generator=g).to(device, dtype), timestep=timestep,
                  img_ids=torch.cat([_grid_ids(0, grid), _grid_ids(1, ref)]).to(device),
                  txt_ids=torch.zeros(n_txt, 3, device=device), return_dict=False)
        if guidance:
            kw["guidance"] = torch.full((batch,), 2.5, device=device, dtype=torch.float32)
        return kw
    return dict(hidden_states=hidden, encoder_hidden_states=text,
                encoder_hidden_states_mask=torch.ones(batch, n_txt, device=device, dtype=torch.bool),
                timestep=timestep, img_shapes=[[(1, grid.h, grid.w), (1, ref.h, ref.w)]] * batch, return_dict=False)


def build_calls(model: nn.Module, grid: Grid, n_txt: int, *, draft_factor: int = 4, rhos=RHOS,
                device: torch.device | None = None) -> list[CallSpec]:
    """Every call type of a SpecEdit run on ``model`` at ``grid`` (equal reference)."""
    family = family_for(model)
    device = device or next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    cfg = model.config
    width = int(cfg.in_channels)
    text_dim = int(cfg.joint_attention_dim)
    pooled = int(getattr(cfg, "pooled_projection_dim", 0) or 0)
    guidance = bool(getattr(cfg, "guidance_embeds", False))
    stock = _stock_kwargs(family, grid, grid, n_txt, width, text_dim, pooled, device, dtype, guidance)
    dgrid = _draft_grid(grid, draft_factor)
    draft = _stock_kwargs(family, dgrid, dgrid, n_txt, width, text_dim, pooled, device, dtype, guidance)
    calls = [CallSpec("full", stock, None, None, 2 * grid.n_tokens),
             CallSpec("draft", draft, None, None, 2 * dgrid.n_tokens)]
    none = torch.zeros(grid.hc, grid.wc, dtype=torch.bool)
    variants: list[tuple[str, str, torch.Tensor, str, bool]] = [
        ("coarse-fullref", "coarse", none, "full", True),
        ("coarse-pooledref", "coarse", none, "coarse", True),
    ]
    for rho in rhos:
        cells = _cells_for_rho(grid, rho) if rho < 1.0 else torch.ones_like(none)
        variants.append((f"mixed-{rho:g}-bias", "mixed", cells, "full", True))
        if rho < 1.0:
            variants.append((f"mixed-{rho:g}-nobias", "mixed", cells, "full", False))
    for name, stage, cells, policy, bias_on in variants:
        plan = plan_call(stage, grid, grid, cells, reference_policy=policy, coarse_positions="auto",
                         proportional_attention=bias_on)
        g = torch.Generator().manual_seed(1)
        hidden = torch.randn(1, plan.n_target + plan.n_reference, width, generator=g).to(device, dtype)
        from specedit.families.base import CallGeometry

        geometry = CallGeometry(grid, grid, n_txt, 0.5, 1)
        kwargs = family.main_kwargs(model, stock, hidden, plan, geometry)
        bias = None
        if plan.image_bias is not None:
            bias = torch.cat([torch.zeros(n_txt), plan.image_bias]).to(device)
        calls.append(CallSpec(name, kwargs, plan, bias, plan.n_target + plan.n_reference))
    return calls


def _caller(model: nn.Module, call: CallSpec, processor: SpecEditProcessor | None) -> Callable[[], object]:
    family = family_for(model)
    geometry = None

    def run() -> object:
        if processor is not None:
            processor.key_bias = call.bias
        if call.plan is not None:
            family.activate(model, call.plan, geometry)  # type: ignore[arg-type]
        try:
            with torch.no_grad():
                return model(**call.kwargs)
        finally:
            if processor is not None:
                processor.key_bias = None
            family.activate(model, None, geometry)  # type: ignore[arg-type]

    return run


def _prepare_model(model: nn.Module) -> SpecEditProcessor:
    from flowcore.attention import install
    from specedit.rope_qwen import install_float_rope

    family = family_for(model)
    processor = SpecEditProcessor()
    kinds = ("qwen_joint",) if family.name == "qwen_image_edit" else ("flux_double", "flux_single")
    install(model, {kind: processor for kind in kinds})
    if family.name == "qwen_image_edit":
        install_float_rope(model)
    return processor


def time_calls(model: nn.Module, grid: Grid, n_txt: int, *, repeats: int = 5, warmup: int = 2,
               device: str | torch.device | None = None) -> list[dict[str, Any]]:
    """Median per-call times of every call type (interleaved), with analytic FLOP ratios vs ``full``."""
    from flowcore.bench import compare

    processor = _prepare_model(model)
    calls = build_calls(model, grid, n_txt)
    arch = ArchSpec.from_transformer(model)
    providers = {c.name: _caller(model, c, processor) for c in calls}
    table = compare(providers, baseline="full", repeats=repeats, warmup=warmup, device=device)
    full_flops = forward_flops(arch, 2 * grid.n_tokens, n_txt)
    rows = []
    for call in calls:
        row = table[call.name]
        flops = forward_flops(arch, call.n_img, n_txt)
        rows.append({"call": call.name, "tokens_img": call.n_img, "median_ms": round(row["median_ms"], 3),
                     "p20_ms": round(row["p20_ms"], 3), "p80_ms": round(row["p80_ms"], 3),
                     "wall_speedup": round(row["ratio"], 3), "flop_speedup": round(full_flops / flops, 3)})
    return rows


def mechanism_bench(*, repeats: int = 5, warmup: int = 2, threads: int | None = 2) -> dict[str, Any]:
    """B2 on the CPU: tiny-width Kontext (D = 256, 2 double + 4 single), 32×32 tokens + reference, 128 text."""
    from diffusers import FluxTransformer2DModel

    from flowcore.bench import device_info

    if threads:
        torch.set_num_threads(threads)
    with seeded_init(0):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                       attention_head_dim=64, num_attention_heads=4, joint_attention_dim=256,
                                       pooled_projection_dim=128, guidance_embeds=True,
                                       axes_dims_rope=(16, 24, 24)).eval()
    rows = time_calls(model, Grid(32, 32), 128, repeats=repeats, warmup=warmup, device="cpu")
    return {"benchmark": "B2 mechanism (CPU)", "device": device_info(), "grid": [32, 32], "text_tokens": 128,
            "rows": rows}


def predicted_latency(rows: list[dict[str, Any]], *, branches: int, config: SpecEditConfig | None = None,
                      rho: float = 0.25, steps=(30, 18, 11, 9), baseline_steps: int = 50) -> list[dict[str, Any]]:
    """End-to-end latency ratios composed from per-call medians (policy ``full``)."""
    config = config or SpecEditConfig()
    t = {r["call"]: r["median_ms"] for r in rows}
    mixed = t.get(f"mixed-{rho:g}-bias", t.get(f"mixed-{rho:g}-nobias"))
    out = []
    for nfe in steps:
        split = config.split(nfe)
        spec = branches * (config.draft_steps * t["draft"] + split.coarse * t["coarse-fullref"]
                           + split.mixed * mixed + split.full * t["full"])
        spec_mirror = branches * (config.draft_steps * t["draft"] + split.coarse * t["coarse-pooledref"]
                                  + split.mixed * mixed + split.full * t["full"])
        base = branches * baseline_steps * t["full"]
        out.append({"nfe": nfe, "rho": rho, "latency_ratio_full_ref": round(base / spec, 2),
                    "latency_ratio_pooled_coarse_ref": round(base / spec_mirror, 2)})
    return out


def _full_size(model_cls: Any, config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Meta init in ``dtype`` → ``to_empty`` → ``normal_(0, 0.02)`` (speed does not depend on weight values).

    Qwen's rotary tables are plain tensors built in ``__init__``, so its ``pos_embed`` is rebuilt off the meta
    device afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = model_cls(**config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=generator)
        for buf in model.buffers():
            buf.zero_()
    rope = getattr(model, "pos_embed", None)
    if type(rope).__name__ == "QwenEmbedRope":
        from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

        model.pos_embed = QwenEmbedRope(theta=rope.theta, axes_dim=list(rope.axes_dim), scale_rope=rope.scale_rope)
    return model.eval()


def gpu_bench(*, repeats: int = 5, warmup: int = 2, only: str | None = None) -> dict[str, Any]:
    """§8.2 on a CUDA device: full-size Kontext and Qwen-Image call types (bf16), predicted latency ratios."""
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel

    from flowcore.bench import device_info

    if not torch.cuda.is_available():
        raise RuntimeError("gpu_bench needs a CUDA device; on a CPU run `specedit bench` (B2)")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    report: dict[str, Any] = {"benchmark": "§8.2 full-size step latency (random weights, bf16)",
                              "device": device_info(), "models": {}}
    grid = Grid(64, 64)  # 1024² px: VAE ×8, 2×2 tokens
    specs = [
        ("flux-kontext-dev", FluxTransformer2DModel, dict(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56)), 512, 1),
        ("qwen-image-edit", QwenImageTransformer2DModel, dict(
            patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56)),
         1400, 2),
    ]
    for name, cls, config, n_txt, branches in specs:
        if only and only != name:
            continue
        model = _full_size(cls, config, device, torch.bfloat16)
        rows = time_calls(model, grid, n_txt, repeats=repeats, warmup=warmup, device=device)
        predicted = [
            {**p, "paper_latency_ratio": PAPER_LATENCY[name].get(p["nfe"])}
            for rho in (0.118, 0.25, 0.5) for p in predicted_latency(rows, branches=branches, rho=rho)
        ]
        bias_cost = {f"{rho:g}": round(_row(rows, f"mixed-{rho:g}-bias") / _row(rows, f"mixed-{rho:g}-nobias"), 3)
                     for rho in (0.118, 0.25, 0.5)}
        report["models"][name] = {"text_tokens": n_txt, "branches": branches, "rows": rows,
                                  "predicted": predicted, "bias_on_over_off": bias_cost}
        del model
        torch.cuda.empty_cache()
    return report


def _row(rows: list[dict[str, Any]], name: str) -> float:
    for row in rows:
        if row["call"] == name:
            return float(row["median_ms"])
    raise KeyError(name)
