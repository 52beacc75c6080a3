"""Stage A, the draft (spec §2.2): a literal low-resolution edit with the unmodified model.

The target noise and the reference are reflect-padded to multiples of ``2f`` latent pixels and ``f×f`` pooled
(``ε_d = f·P_f(ε)`` has unit variance), the schedule follows the pipeline's scheduler with μ recomputed from the
draft's token count, and ``N_d`` Euler steps run with native integer positions and the same conditioning (true
CFG from the primed branches). The draft never enters the main trajectory and draws no random numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowcore.images import PadInfo
from flowcore.sampling import step as euler_step
from flowcore.schedules import Schedule, calculate_shift, make_schedule
from specedit.layout import Grid
from specedit.ops import pack, pad_reflect, pool, unpack

__all__ = ["DraftInputs", "DraftResult", "combine_cfg", "draft_inputs", "draft_schedule", "run_draft"]


@dataclass
class DraftInputs:
    """Pooled draft noise/reference tokens and their grids; ``pad`` records the target's padding."""

    noise: Tensor
    reference: Tensor
    target_grid: Grid
    reference_grid: Grid
    pad: PadInfo
    reference_pooled_grid: Tensor


@dataclass
class DraftResult:
    """``latents``: the draft at σ = 0 as a latent grid ``(B, C, H_pad/f, W_pad/f)``; ``calls``: network calls."""

    latents: Tensor
    calls: int
    cfg: bool
    schedule: Schedule


def draft_inputs(eps_grid: Tensor, ref_grid: Tensor, factor: int) -> DraftInputs:
    """``ε`` ``(B, C, H, W)`` and the reference latents → pooled draft noise/reference tokens (float32)."""
    multiple = 2 * factor
    eps_pad, pad = pad_reflect(eps_grid.float(), multiple)
    ref_pad, _ = pad_reflect(ref_grid.float(), multiple)
    eps_d = pool(eps_pad, factor) * factor
    ref_d = pool(ref_pad, factor)
    tgrid = Grid(eps_d.shape[-2] // 2, eps_d.shape[-1] // 2)
    rgrid = Grid(ref_d.shape[-2] // 2, ref_d.shape[-1] // 2)
    return DraftInputs(pack(eps_d), pack(ref_d), tgrid, rgrid, pad, ref_d)


def draft_schedule(scheduler: Any, steps: int, n_tokens: int, main_tokens: int, shift: str = "recompute") -> Schedule:
    """The pipelines' rule at ``steps`` steps: sigmas ``linspace(1, 1/N_d, N_d)`` and, for dynamic shifting, μ from
    the draft's token count (``shift="recompute"``) or the main run's (``"main"``)."""
    sigmas = np.linspace(1.0, 1.0 / steps, steps).tolist()
    cfg = scheduler.config
    if getattr(cfg, "use_dynamic_shifting", False):
        seq = n_tokens if shift == "recompute" else main_tokens
        mu = calculate_shift(seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        return make_schedule(scheduler, steps, mu=mu, sigmas=sigmas)
    return make_schedule(scheduler, steps, sigmas=sigmas)


def combine_cfg(cond: Tensor, uncond: Tensor, scale: float, rule: str) -> Tensor:
    """True-CFG combination as the pipelines do it: ``plain`` (Kontext) or ``qwen_rescale`` (per-token norm)."""
    comb = uncond + scale * (cond - uncond)
    if rule == "plain":
        return comb
    if rule == "qwen_rescale":
        return comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
    raise ValueError(f"unknown cfg_rule {rule!r}; use 'plain' or 'qwen_rescale'")


def run_draft(forward: Callable[[dict], Tensor], make_kwargs: Callable[[Tensor, Tensor, dict | None], dict],
              inputs: DraftInputs, schedule: Schedule, *, dtype: torch.dtype,
              branches: Sequence[dict | None], cfg_scale: float | None, cfg_rule: str) -> DraftResult:
    """Run the draft loop.

    ``forward(kwargs)`` calls the unhooked transformer and returns its prediction for the draft target tokens;
    ``make_kwargs(hidden, timestep, branch)`` builds the call. ``branches``: conditioning overrides per CFG branch
    (``[None]`` = the current call's conditioning); with two branches and ``cfg_scale`` they are combined
    (``branches[0]`` = conditional).
    """
    x = inputs.noise.to(dtype)
    ref = inputs.reference.to(dtype)
    batch = x.shape[0]
    n = inputs.target_grid.n_tokens
    use_cfg = cfg_scale is not None and len(branches) > 1
    calls = 0
    for i in range(schedule.num_steps):
        t = schedule.timesteps[i].to(x.device)
        timestep = t.expand(batch).to(dtype) / 1000
        hidden = torch.cat([x, ref.to(x.device)], dim=1)
        outs = []
        for branch in branches if use_cfg else branches[:1]:
            outs.append(forward(make_kwargs(hidden, timestep, branch))[:, :n])
            calls += 1
        pred = combine_cfg(outs[0], outs[1], float(cfg_scale), cfg_rule) if use_cfg else outs[0]  # type: ignore[arg-type]
        x = euler_step(x, pred, schedule, i, i + 1)
    grid = unpack(x.float(), inputs.target_grid.h, inputs.target_grid.w)
    return DraftResult(grid, calls, use_cfg, schedule)
