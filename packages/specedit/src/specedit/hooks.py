"""The SpecEdit hook (diffusers hooks pattern) and its public entry points (spec §5).

``apply_specedit`` registers :class:`SpecEditHook` on the transformer under the name ``"specedit"``, installs the
bias-aware attention processor on every site (and, for Qwen, the float-position rotary wrapper). Per call the hook

1. resolves the step (``flowcore_ctx.step``, else the bound scheduler's ``step_index``, else distinct-σ counting)
   and the branch (cache-context name, else call ordinal within the step);
2. at the first call of a generation checks σ = 1 and a plain Euler scheduler, and stores ε (the target tokens)
   and the clean reference tokens;
3. runs draft + verification at the first call that needs the mask;
4. passes full-resolution calls through untouched; otherwise sends the coarse view of unselected cells as coarse
   tokens, calls the model, lifts coarse velocities (``v = U_2(u − ε̄) + ε``) and scatters everything back into the
   stock layout (zeros for the reference rows, which the pipelines discard).

The stock Euler loop is never modified: the pipeline's own latent is the lossless carrier (spec §2.4).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import Tensor, nn

from specedit.config import SpecEditConfig, StageSplit
from specedit.draft import DraftInputs, draft_inputs, draft_schedule, run_draft
from specedit.families import CallGeometry, Family, family_for
from specedit.families.base import bind_call
from specedit.features import resolve_extractor, score_draft
from specedit.flops import ArchSpec, forward_flops
from specedit.layout import CallPlan, plan_call
from specedit.ops import coarse_view, lift_velocity, pack, pool, unpack
from specedit.processor import SpecEditProcessor
from specedit.selection import Selection, cell_scores, select_cells
from specedit.stats import SpecEditStats, rle_encode

__all__ = [
    "HOOK_NAME",
    "SpecEditHook",
    "apply_specedit",
    "prime_specedit",
    "remove_specedit",
    "specedit_summary",
]

HOOK_NAME = "specedit"
SIGMA_TOL = 1e-4


class _ContextOnly(BaseState):
    """specedit keeps no per-context state; the StateManager only receives the pipeline's cache context."""

    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class _Prime:
    branches: list[dict[str, Any]]
    cfg_scale: float | None
    cfg_rule: str


@dataclass
class _Generation:
    """Trajectory state of one generation (cleared by ``reset_state``)."""

    key: tuple
    geometry: CallGeometry
    num_steps: int
    split: StageSplit
    dtype: torch.dtype
    eps_tokens: Tensor
    eps_grid: Tensor
    eps_region: Tensor
    eps_pooled: Tensor
    eps_bar: Tensor
    reference_tokens: Tensor | None
    reference_pooled: Tensor | None
    stats: SpecEditStats
    selection: Selection | None = None
    plans: dict = field(default_factory=dict)
    step: int = 0
    last_sigma: float = 1.0
    sigma_count: int = 0
    branch_ordinal: int = 0
    branch_step: int = -1
    branches_seen: set = field(default_factory=set)
    t_start: float = 0.0
    finished: bool = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _output_tensor(out: Any) -> Tensor:
    if isinstance(out, tuple):
        return out[0]
    sample = getattr(out, "sample", None)
    if sample is None:
        raise TypeError(f"unexpected transformer output {type(out).__name__}")
    return sample


class SpecEditHook(ModelHook):
    """Stateful hook implementing SpecEdit on one transformer (see the module docstring)."""

    _is_stateful = True

    def __init__(self, config: SpecEditConfig, family: Family, *, vae: nn.Module | None = None,
                 scheduler: Any = None, processor: SpecEditProcessor | None = None, site_handle: Any = None) -> None:
        super().__init__()
        self.config = config
        self.family = family
        self.vae = vae
        self.scheduler = scheduler
        self.processor = processor
        self.site_handle = site_handle
        self.state_manager = StateManager(_ContextOnly)
        self.generation: _Generation | None = None
        self.last_stats: SpecEditStats | None = None
        self.prime: _Prime | None = None
        self.trace: list | None = None
        self._arch: ArchSpec | None = None
        self._warned: set[str] = set()

    # ----------------------------------------------------------------------------------------- lifecycle
    def reset_state(self, module: nn.Module) -> nn.Module:
        """Clear the trajectory state and the priming; keep ``last_stats``."""
        self._finish(module)
        self.generation = None
        self.prime = None
        self.state_manager.reset()
        return module

    def _finish(self, module: nn.Module) -> None:
        gen = self.generation
        if gen is not None and not gen.finished:
            self._update_last(gen)
            gen.finished = True

    def _update_last(self, gen: _Generation) -> None:
        """Publish the generation's stats (called after every last-step call and at reset)."""
        if gen.finished:
            return
        _sync(gen.eps_tokens.device)
        gen.stats.wall_main_s = max(0.0, time.perf_counter() - gen.t_start - gen.stats.wall_draft_s
                                    - gen.stats.wall_verify_s)
        self.last_stats = gen.stats

    def _warn(self, key: str, message: str, gen: _Generation | None = None) -> None:
        if gen is not None and message not in gen.stats.warnings:
            gen.stats.warnings.append(message)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)

    # ---------------------------------------------------------------------------------------------- call
    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        original = self.fn_ref.original_forward
        kw = bind_call(module, args, kwargs)
        geometry = self.family.parse(module, kw)
        gen = self._generation_for(module, kw, geometry)
        step = self._step_index(kw, geometry.sigma, gen)
        branch = self._branch(gen, step)
        stage = gen.split.stage(step) if step < gen.num_steps else "full"
        try:
            if stage == "full":
                self._record(gen, module, "full", geometry.n_target, geometry.n_reference, geometry, branch)
                return original(*args, **kwargs)
            if stage == "mixed" and gen.selection is None:
                self._compute_selection(module, kw, gen, geometry)
            plan = self._plan(gen, stage)
            if plan.passthrough and not self.config.extra.get("force_assembly", False):
                self._record(gen, module, stage, geometry.n_target, geometry.n_reference, geometry, branch)
                return original(*args, **kwargs)
            sigma = self._loop_sigma(kw, step, geometry.sigma)
            with torch.no_grad():
                out = self._mixed_call(module, original, kw, gen, geometry, plan, step, sigma)
            self._record(gen, module, stage, plan.n_target, plan.n_reference, geometry, branch)
            return out
        finally:
            if step >= gen.num_steps - 1:
                self._update_last(gen)

    # -------------------------------------------------------------------------------------- generation
    def _num_steps(self, kw: dict[str, Any]) -> int:
        if self.config.num_inference_steps is not None:
            return self.config.num_inference_steps
        ctx = self._flowcore_ctx(kw)
        if ctx is not None and getattr(ctx, "num_steps", None):
            return int(ctx.num_steps)
        sched = self.scheduler
        n = getattr(sched, "num_inference_steps", None) if sched is not None else None
        if n:
            return int(n)
        raise ValueError(
            "specedit cannot tell how many steps this generation has: apply it to a pipeline (its scheduler is "
            "read), or pass SpecEditConfig(num_inference_steps=N) for a bare transformer"
        )

    def _check_scheduler(self) -> None:
        sched = self.scheduler
        if sched is None:
            return
        name = type(sched).__name__
        if name != "FlowMatchEulerDiscreteScheduler":
            raise ValueError(f"specedit runs inside a plain Euler flow-matching loop; {name} is not supported "
                             "(use FlowMatchEulerDiscreteScheduler)")
        if getattr(sched.config, "stochastic_sampling", False):
            raise ValueError("specedit needs a deterministic Euler scheduler: stochastic_sampling=True re-draws noise "
                             "at every step and breaks the carrier; disable it")

    def _generation_for(self, module: nn.Module, kw: dict[str, Any], geometry: CallGeometry) -> _Generation:
        gen = self.generation
        key = geometry.key()
        at_one = abs(geometry.sigma - 1.0) < SIGMA_TOL
        new = gen is None or gen.key != key or (at_one and gen.last_sigma < 1.0 - SIGMA_TOL)
        if not new:
            return gen  # type: ignore[return-value]
        if gen is not None and not gen.finished:
            self._finish(module)
        if not at_one:
            raise ValueError(
                f"specedit starts from pure noise (σ_0 = 1) but the first call of this generation has σ = "
                f"{geometry.sigma:.4g}; img2img-style starts (σ_0 < 1) are not supported"
            )
        if geometry.reference is None:
            raise ValueError("specedit edits a reference image: the call has no reference tokens (pass image=...)")
        geometry.target.check_poolable()
        self._check_scheduler()
        n = self._num_steps(kw)
        split = self.config.split(n)
        hidden = kw["hidden_states"]
        nt = geometry.n_target
        eps_tokens = hidden[:, :nt].detach().float().clone()
        tgrid = geometry.target
        eps_grid = unpack(eps_tokens, tgrid.h, tgrid.w)
        region = eps_grid[..., : 4 * tgrid.hc, : 4 * tgrid.wc]
        eps_pooled = pool(region, 2)
        ref_tokens = hidden[:, nt:].detach().clone()
        rgrid = geometry.reference
        ref_pooled = None
        if rgrid.n_cells:
            ref_latent = unpack(ref_tokens.float(), rgrid.h, rgrid.w)[..., : 4 * rgrid.hc, : 4 * rgrid.wc]
            ref_pooled = pack(pool(ref_latent, 2)).to(hidden.dtype)
        stats = SpecEditStats(
            num_steps=n, n_coarse=split.coarse, n_mixed=split.mixed, n_full=split.full,
            grid=(tgrid.h, tgrid.w), coarse_grid=(tgrid.hc, tgrid.wc), reference_grid=(rgrid.h, rgrid.w),
            ragged=tgrid.ragged, tau=self.config.tau, reference_policy=self.config.reference_policy,
        )
        _sync(hidden.device)
        gen = _Generation(key, geometry, n, split, hidden.dtype, eps_tokens, eps_grid, region.clone(), eps_pooled,
                          2 * eps_pooled, ref_tokens, ref_pooled, stats, t_start=time.perf_counter())
        self.generation = gen
        if self._arch is None:
            try:
                self._arch = ArchSpec.from_transformer(module)
            except (AttributeError, KeyError, TypeError):
                self._arch = None
        return gen

    @staticmethod
    def _flowcore_ctx(kw: dict[str, Any]) -> Any:
        for key in ("joint_attention_kwargs", "attention_kwargs"):
            extra = kw.get(key)
            if isinstance(extra, dict) and extra.get("flowcore_ctx") is not None:
                return extra["flowcore_ctx"]
        return None

    def _step_index(self, kw: dict[str, Any], sigma: float, gen: _Generation) -> int:
        ctx = self._flowcore_ctx(kw)
        if ctx is not None and getattr(ctx, "step", None) is not None:
            step = int(ctx.step)
        elif self.scheduler is not None:
            index = getattr(self.scheduler, "step_index", None)
            step = 0 if index is None else int(index)
        else:
            timestep = kw.get("timestep")
            if isinstance(timestep, Tensor) and timestep.dtype != torch.float32:
                raise ValueError(
                    "specedit cannot count steps from non-float32 timesteps on a bare transformer; bind a scheduler "
                    "(apply_specedit(..., scheduler=...)) or pass flowcore_ctx with the step"
                )
            if gen.sigma_count == 0 or sigma != gen.last_sigma:
                gen.sigma_count += 1
            step = gen.sigma_count - 1
        gen.last_sigma = sigma
        gen.step = step
        return step

    def _loop_sigma(self, kw: dict[str, Any], step: int, fallback: float) -> float:
        """σ of this step as the loop steps it (the scheduler's float32 value, not the timestep the network got,
        which bf16 rounds): flowcore's running schedule, else the bound scheduler's sigmas, else the timestep."""
        if self._flowcore_ctx(kw) is not None:
            from flowcore.sampling import current_loop

            loop = current_loop()
            if loop is not None and loop.schedule.sigmas is not None and step < loop.schedule.num_steps:
                return float(loop.schedule.sigmas[step])
        sigmas = getattr(self.scheduler, "sigmas", None) if self.scheduler is not None else None
        if isinstance(sigmas, Tensor) and step < sigmas.numel() - 1:
            value = float(sigmas[step])
            if abs(value - fallback) < 1e-2:  # the bound scheduler really drives this loop
                return value
        return fallback

    def _branch(self, gen: _Generation, step: int) -> Any:
        context = self.state_manager._context
        if gen.branch_step != step:
            gen.branch_step, gen.branch_ordinal = step, 0
        ordinal = gen.branch_ordinal
        gen.branch_ordinal += 1
        branch = context.name if context is not None else ordinal
        if step == 0 or branch not in gen.branches_seen:
            gen.branches_seen.add(branch)
            gen.stats.branches = max(gen.stats.branches, len(gen.branches_seen))
        return branch

    # ------------------------------------------------------------------------------------------- planning
    def _fine_cells(self, gen: _Generation, stage: str) -> Tensor:
        grid = gen.geometry.target
        if stage == "coarse":
            return torch.zeros(grid.hc, grid.wc, dtype=torch.bool)
        assert gen.selection is not None
        return gen.selection.union

    def _plan(self, gen: _Generation, stage: str) -> CallPlan:
        plan = gen.plans.get(stage)
        if plan is None:
            cfg = self.config
            geometry = gen.geometry
            if (stage == "mixed" and cfg.reference_policy == "mirror_mask"
                    and geometry.reference != geometry.target):
                self._warn("mirror", "reference_policy='mirror_mask' needs equal target and reference grids "
                           f"(got {geometry.target} and {geometry.reference}); falling back to 'coarse'", gen)
            plan = plan_call(stage, geometry.target, geometry.reference, self._fine_cells(gen, stage),
                             reference_policy=cfg.reference_policy, coarse_positions=cfg.coarse_positions,
                             proportional_attention=cfg.proportional_attention,
                             order=cfg.extra.get("fine_order", "row"))
            gen.plans[stage] = plan
        return plan

    # -------------------------------------------------------------------------------------- mixed calls
    def _mixed_call(self, module: nn.Module, original: Any, kw: dict[str, Any], gen: _Generation,
                    geometry: CallGeometry, plan: CallPlan, step: int, sigma: float) -> Any:
        hidden = kw["hidden_states"]
        dtype = hidden.dtype
        tgrid = geometry.target
        nt = geometry.n_target
        x_tokens = hidden[:, :nt]
        x_grid = unpack(x_tokens.float(), tgrid.h, tgrid.w)
        region = x_grid[..., : 4 * tgrid.hc, : 4 * tgrid.wc]
        y = coarse_view(region, gen.eps_pooled, sigma)
        y_tokens = pack(y)
        device = hidden.device
        t_fine = plan.target.fine_idx.to(device)
        t_coarse = plan.target.coarse_idx.to(device)
        parts = [x_tokens[:, t_fine], y_tokens[:, t_coarse].to(dtype)]
        if plan.reference is not None:
            ref = hidden[:, nt:]
            parts.append(ref[:, plan.reference.fine_idx.to(device)])
            if plan.reference.n_coarse:
                assert gen.reference_pooled is not None
                parts.append(gen.reference_pooled[:, plan.reference.coarse_idx.to(device)])
        sequence = torch.cat(parts, dim=1)
        call_kw = self.family.main_kwargs(module, kw, sequence, plan, geometry)
        if self.processor is not None and plan.image_bias is not None:
            n_txt = self.family.n_text(kw)
            self.processor.key_bias = torch.cat([torch.zeros(n_txt), plan.image_bias]).to(device)
        self.family.activate(module, plan, geometry)
        try:
            out = original(**call_kw)
        finally:
            if self.processor is not None:
                self.processor.key_bias = None
            self.family.activate(module, None, geometry)
        pred = _output_tensor(out)
        n_fine = plan.target.n_fine
        u_fine = pred[:, :n_fine]
        u_coarse = pred[:, n_fine:plan.n_target].float()
        batch, width = pred.shape[0], pred.shape[-1]
        u_all = torch.zeros(batch, tgrid.n_cells, width, dtype=torch.float32, device=device)
        u_all[:, t_coarse] = u_coarse
        u_grid = unpack(u_all, tgrid.hc, tgrid.wc)
        v_grid = gen.eps_grid.clone()
        v_grid[..., : 4 * tgrid.hc, : 4 * tgrid.wc] = lift_velocity(u_grid, gen.eps_bar, gen.eps_region)
        velocity = pack(v_grid).to(pred.dtype)
        velocity[:, t_fine] = u_fine
        result = torch.zeros(batch, hidden.shape[1], width, dtype=pred.dtype, device=device)
        result[:, :nt] = velocity
        if self.trace is not None:
            self.trace.append({"step": step, "sigma": sigma, "stage": plan.stage, "y": y.clone(),
                               "u": u_grid.clone(), "coarse_cells": (~self._fine_cells(gen, plan.stage)).clone()})
        if isinstance(out, tuple):
            return (result, *out[1:])
        return Transformer2DModelOutput(sample=result)

    # --------------------------------------------------------------------------------- draft and verify
    def _compute_selection(self, module: nn.Module, kw: dict[str, Any], gen: _Generation,
                           geometry: CallGeometry) -> None:
        cfg = self.config
        tgrid = geometry.target
        override = cfg.mask_override
        stats = gen.stats
        if override is not None:
            if isinstance(override, str):
                edit = torch.full((tgrid.hc, tgrid.wc), override == "all", dtype=torch.bool)
            else:
                if tuple(override.shape) != (tgrid.hc, tgrid.wc):
                    raise ValueError(f"mask_override has shape {tuple(override.shape)} but this generation's coarse "
                                     f"grid is {tgrid.hc}×{tgrid.wc} (token grid {tgrid.h}×{tgrid.w})")
                edit = override.to("cpu", torch.bool)
            gen.selection = Selection.from_union(tgrid, edit, torch.zeros_like(edit))
            stats.mask_source = "override"
        else:
            if geometry.reference != geometry.target:
                raise ValueError(
                    f"the reference's token grid {geometry.reference.h}×{geometry.reference.w} differs from the "
                    f"target's {tgrid.h}×{tgrid.w}; the verification compares them pixel by pixel. Generate at the "
                    "reference's size (height/width equal to the image's) or pass SpecEditConfig(mask_override=...)"
                )
            draft, d_inputs = self._run_draft(module, kw, gen, geometry)
            gen.selection = self._verify(draft, d_inputs, gen)
            stats.mask_source = "draft"
        sel = gen.selection
        stats.n_edit, stats.n_uniform, stats.n_union = int(sel.edit.sum()), int(sel.uniform.sum()), int(sel.union.sum())
        stats.rho = sel.rho
        stats.mask = rle_encode(sel.union)
        stats.edit_cells, stats.uniform_cells = sel.edit, sel.uniform

    def _run_draft(self, module: nn.Module, kw: dict[str, Any], gen: _Generation,
                   geometry: CallGeometry) -> tuple[Tensor, DraftInputs]:
        cfg = self.config
        device = gen.eps_tokens.device
        _sync(device)
        start = time.perf_counter()
        rgrid = geometry.reference
        ref_grid = unpack(gen.reference_tokens.float(), rgrid.h, rgrid.w)  # type: ignore[union-attr]
        inputs = draft_inputs(gen.eps_grid, ref_grid, cfg.draft_factor)
        scheduler = self.scheduler or _default_scheduler(self.family)
        schedule = draft_schedule(scheduler, cfg.draft_steps, inputs.target_grid.n_tokens,
                                  geometry.target.n_tokens, cfg.draft_shift)
        branches: list[dict | None] = [None]
        cfg_scale = None
        rule = "plain"
        if self.prime is not None:
            branches = list(self.prime.branches)
            cfg_scale = cfg.draft_cfg_scale if cfg.draft_cfg_scale is not None else self.prime.cfg_scale
            rule = self.prime.cfg_rule
        original = self.fn_ref.original_forward

        def forward(call_kw: dict) -> Tensor:
            return _output_tensor(original(**call_kw))

        def make_kwargs(hidden: Tensor, timestep: Tensor, branch: dict | None) -> dict:
            return self.family.draft_kwargs(module, kw, hidden, inputs.target_grid, inputs.reference_grid, timestep,
                                            branch)

        with torch.no_grad():
            result = run_draft(forward, make_kwargs, inputs, schedule, dtype=gen.dtype, branches=branches,
                               cfg_scale=cfg_scale, cfg_rule=rule)
        _sync(device)
        stats = gen.stats
        stats.wall_draft_s = time.perf_counter() - start
        stats.draft_steps = cfg.draft_steps
        stats.draft_cfg = result.cfg
        stats.forward_calls_draft = result.calls
        if self._arch is not None:
            n_img = inputs.target_grid.n_tokens + inputs.reference_grid.n_tokens
            per = forward_flops(self._arch, n_img, self.family.n_text(kw), geometry.batch)
            stats.flops_draft = per * result.calls
        return result.latents, inputs

    def _verify(self, draft: Tensor, inputs: DraftInputs, gen: _Generation) -> Selection:
        cfg = self.config
        device = draft.device
        start = time.perf_counter()
        tgrid = gen.geometry.target
        reference = unpack(gen.reference_tokens.float(), tgrid.h, tgrid.w)  # type: ignore[union-attr]
        extractor = resolve_extractor(cfg.feature_extractor, self.vae, reference.shape[1])
        gen.stats.feature_extractor = extractor
        with torch.no_grad():
            score_map = score_draft(draft, inputs.reference_pooled_grid, reference, factor=cfg.draft_factor,
                                    source_view=cfg.source_view, extractor=extractor, vae=self.vae,
                                    to_vae_space=lambda z: self.family.to_vae_space(z, self.vae),
                                    taps=cfg.vae_taps)
        scores = cell_scores(score_map, tgrid, cfg.cell_reduce)
        sel = select_cells(scores, tgrid, tau=cfg.tau, ratio=cfg.ratio, uniform_stride=cfg.uniform_stride,
                           dilate=cfg.dilate)
        _sync(device)
        stats = gen.stats
        stats.wall_verify_s = time.perf_counter() - start
        flat = score_map.float().reshape(-1)
        q = torch.quantile(flat[:: max(1, flat.numel() // 100_000)], torch.tensor([0.5, 0.9], device=flat.device))
        stats.score_quantiles = {"min": float(flat.min()), "p50": float(q[0]), "p90": float(q[1]),
                                 "max": float(flat.max())}
        stats.flops_verify = 0 if extractor != "vae_decoder" else None
        if cfg.keep_maps:
            stats.score_map = score_map.detach().cpu()
            stats.draft = draft.detach().cpu()
        return sel

    # -------------------------------------------------------------------------------------------- stats
    def _record(self, gen: _Generation, module: nn.Module, stage: str, n_target: int, n_reference: int,
                geometry: CallGeometry, branch: Any) -> None:
        stats = gen.stats
        n_txt = geometry.n_text
        stats.calls.append({"step": gen.step, "branch": branch, "stage": stage, "target": n_target,
                            "reference": n_reference, "text": n_txt})
        stats.forward_calls_main += 1
        if self._arch is None:
            return
        run = forward_flops(self._arch, n_target + n_reference, n_txt, geometry.batch)
        base = forward_flops(self._arch, geometry.n_target + geometry.n_reference, n_txt, geometry.batch)
        stats.flops_run = (stats.flops_run or 0) + run
        stats.flops_baseline = (stats.flops_baseline or 0) + base
        total = stats.flops_run + (stats.flops_draft or 0)
        stats.flop_ratio = stats.flops_baseline / total if total else math.inf


def _default_scheduler(family: Family) -> Any:
    """The pipelines' scheduler config when a bare transformer has none bound."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if family.name == "qwen_image_edit":
        return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                               max_image_seq_len=8192, base_shift=0.5, max_shift=0.9,
                                               shift_terminal=0.02, time_shift_type="exponential")
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                           max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)


# ------------------------------------------------------------------------------------------ public API
def _split_target(module_or_pipe: Any) -> tuple[nn.Module, Any, Any]:
    transformer = getattr(module_or_pipe, "transformer", None)
    if transformer is not None:
        return transformer, getattr(module_or_pipe, "vae", None), getattr(module_or_pipe, "scheduler", None)
    if isinstance(module_or_pipe, nn.Module):
        return module_or_pipe, None, None
    raise TypeError(f"specedit needs a pipeline with a .transformer or a transformer module, got "
                    f"{type(module_or_pipe).__name__}")


def _hook_of(module_or_pipe: Any) -> SpecEditHook:
    transformer, _, _ = _split_target(module_or_pipe)
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook(HOOK_NAME) if registry is not None else None
    if hook is None:
        raise ValueError("specedit is not applied to this model; call apply_specedit(...) first")
    return hook


def apply_specedit(module_or_pipe: Any, config: SpecEditConfig | None = None, *, vae: nn.Module | None = None,
                   scheduler: Any = None) -> None:
    """Register SpecEdit on a pipeline's transformer (binding its VAE and scheduler) or on a bare transformer.

    A bare transformer needs ``config.num_inference_steps`` (or flowcore's ``CallContext``) to know N, and
    ``vae=`` for the ``vae_decoder`` features. Raises ``ValueError`` if SpecEdit is already applied.
    """
    config = config or SpecEditConfig()
    if not isinstance(config, SpecEditConfig):
        raise TypeError(f"config must be a SpecEditConfig, got {type(config).__name__}")
    if config.coarse_attention == "kv_cache":
        raise NotImplementedError("coarse_attention='kv_cache' is experimental milestone-2 work and not in v1; "
                                  "use the default 'recompute'")
    transformer, pipe_vae, pipe_scheduler = _split_target(module_or_pipe)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(HOOK_NAME) is not None:
        raise ValueError("specedit is already applied to this transformer; call remove_specedit first")
    family = family_for(transformer)
    processor = None
    handle = None
    if hasattr(transformer, "attn_processors"):
        from flowcore.attention import install

        processor = SpecEditProcessor()
        kinds = ("qwen_joint",) if family.name == "qwen_image_edit" else ("flux_double", "flux_single")
        handle = install(transformer, {kind: processor for kind in kinds}, stack=True)
    if family.name == "qwen_image_edit" and type(getattr(transformer, "pos_embed", None)).__name__ == "QwenEmbedRope":
        from specedit.rope_qwen import install_float_rope

        install_float_rope(transformer)
    hook = SpecEditHook(config, family, vae=vae if vae is not None else pipe_vae,
                        scheduler=scheduler if scheduler is not None else pipe_scheduler, processor=processor,
                        site_handle=handle)
    registry.register_hook(hook, HOOK_NAME)


def remove_specedit(module_or_pipe: Any) -> None:
    """Remove the hook, the attention processors and the rotary wrapper; the stock forward is restored."""
    transformer, _, _ = _split_target(module_or_pipe)
    hook = _hook_of(transformer)
    registry = transformer._diffusers_hook
    registry.remove_hook(HOOK_NAME, recurse=False)
    if hook.site_handle is not None:
        hook.site_handle.remove()
    from specedit.rope_qwen import remove_float_rope

    remove_float_rope(transformer)


def specedit_summary(module_or_pipe: Any) -> SpecEditStats:
    """Stats of the last completed generation."""
    hook = _hook_of(module_or_pipe)
    if hook.last_stats is None:
        raise ValueError("no SpecEdit generation has completed on this model yet")
    return hook.last_stats


def prime_specedit(transformer: Any, *, branches: list[dict], cfg_scale: float | None = None,
                   cfg_rule: str = "plain") -> None:
    """Give the draft the conditioning of every true-CFG branch (``branches[0]`` = conditional; each a dict of
    transformer keyword arguments such as ``encoder_hidden_states``, ``pooled_projections``, ``txt_ids``,
    ``encoder_hidden_states_mask``) and the CFG rule (``plain`` or ``qwen_rescale``). Cleared at the end of each
    pipeline call (``reset_state``)."""
    if cfg_rule not in ("plain", "qwen_rescale"):
        raise ValueError(f"cfg_rule must be 'plain' or 'qwen_rescale', got {cfg_rule!r}")
    if not branches or not all(isinstance(b, dict) for b in branches):
        raise ValueError("branches must be a non-empty list of keyword dicts (conditional first)")
    if cfg_scale is not None and len(branches) < 2:
        raise ValueError("a cfg_scale needs two branches (conditional, unconditional)")
    hook = _hook_of(transformer)
    hook.prime = _Prime([dict(b) for b in branches], None if cfg_scale is None else float(cfg_scale), cfg_rule)
