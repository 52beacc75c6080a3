"""Baselines on the same adapter, grid, row layout, result type and NFE counters (spec §2.10).

* :func:`naive_euler`: DirectEdit's inversion, then a plain dual-path Euler denoise (no Δ, no snapping): the drift
  baseline.
* :func:`rf_solver`: second-order RF-Solver (midpoint velocity, Taylor form) for inversion and the dual path.
* :func:`fireflow`: as RF-Solver, with the first velocity of each step reused from the previous step's midpoint.
* :func:`flowedit`: inversion-free FlowEdit (noisy source/target pairs, velocity differences).

Injection baselines use DirectEdit's sites, rows and ``K = int(r·M)`` at their own step count M; masks blend with
the method's *own* source latent. Every update goes through ``flowcore.sampling.step`` (the midpoint solvers on a
refined grid whose odd points are the interval midpoints), never a hand-written Euler step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import flowcore.sampling as fsampling
from directedit.config import DirectEditConfig, ValueInjection, arch_of
from directedit.core import (
    EditResult,
    _expand_rows,
    _floats,
    _injection_kinds,
    _to_state,
    _uncond_for,
    invert,
    make_schedule,
    pixel_size,
    token_grid,
)
from directedit.injection import injection_pairs, injection_sites, install_processors
from directedit.masks import MaskContext, resolve_mask
from directedit.rows import SOURCE, BranchCaller, CallState, NFECount
from flowcore.adapters import Conditioning
from flowcore.schedules import Schedule

__all__ = [
    "METHODS",
    "Inversion",
    "fireflow",
    "flowedit",
    "midpoint_velocity",
    "naive_euler",
    "refined_schedule",
    "rf_solver",
    "run",
    "settings_for_nfe",
    "solve_inversion",
    "taylor_velocity",
]

METHODS = ("directedit", "naive_euler", "rf_solver", "fireflow", "flowedit")
_ALIASES = {"naive": "naive_euler", "rf-solver": "rf_solver", "rfsolver": "rf_solver", "direct": "directedit"}
# FlowEdit's own defaults per family (spec §2.10): total steps T, n_max, g_src, g_tar.
FLOWEDIT_DEFAULTS = {"flux": dict(num_steps=28, n_max=24, source_guidance=1.5, target_guidance=5.5),
                     "sd3": dict(num_steps=50, n_max=33, source_guidance=3.5, target_guidance=13.5)}


# --- the second-order solvers --------------------------------------------------------------------------------
def taylor_velocity(v1: Tensor, v2: Tensor, h: Tensor | float) -> Tensor:
    """RF-Solver's Taylor form as an effective velocity: ``x + h·v_eff = x + h·v1 + (h²/2)·(v2 − v1)/(h/2)``."""
    half = 0.5 * h
    return v1 + half * ((v2 - v1) / half)


def midpoint_velocity(v1: Tensor, v2: Tensor, h: Tensor | float) -> Tensor:
    """The same update in midpoint form (``x + h·v2``); equal to :func:`taylor_velocity` up to rounding."""
    return v2


def refined_schedule(schedule: Schedule) -> Schedule:
    """A grid with 2M+1 points: even points are the original ones (same network times), odd points the interval
    midpoints ``(σ_k + σ_{k+1}) / 2`` (network time ``σ·T``)."""
    if schedule.kind != "rf" or schedule.sigmas is None:
        raise ValueError("RF-Solver and FireFlow need a rectified-flow model (sigma grid)")
    sig = schedule.sigmas
    mid = (sig[:-1] + sig[1:]) / 2
    ext = torch.stack([sig[:-1], mid], dim=1).flatten()
    ext = torch.cat([ext, sig[-1:]])
    ts = torch.stack([schedule.timesteps, mid * schedule.num_train_timesteps], dim=1).flatten()
    return Schedule("rf", ts.to(torch.float32), ext.to(torch.float32), (1 - ext).to(torch.float32),
                    ext.clone().to(torch.float32), schedule.num_train_timesteps)


def _delta_sigma(ref: Schedule, i: int, j: int, like: Tensor) -> Tensor:
    sig = ref.sigmas.to(like.device)  # type: ignore[union-attr]
    return (sig[j] - sig[i]).to(like.dtype)


def _second_order_step(x: Tensor, v1: Tensor, i: int, j: int, ref: Schedule, velocity: Callable[[Tensor, int],
                       Tensor], form: str) -> tuple[Tensor, Tensor]:
    """One RF-Solver step from refined point ``i`` to ``j`` (``|i − j| = 2``) given v1 at ``i``; returns
    ``(x_j, v2)``."""
    mid = (i + j) // 2
    x_mid = fsampling.step(x, v1, ref, i, mid, kind="flow").to(x.dtype)
    v2 = velocity(x_mid, mid)
    h = _delta_sigma(ref, i, j, x)
    v_eff = taylor_velocity(v1, v2, h) if form == "taylor" else midpoint_velocity(v1, v2, h)
    return fsampling.step(x, v_eff, ref, i, j, kind="flow").to(x.dtype), v2


@dataclass
class Inversion:
    """A baseline's inversion: ``latents[k]`` at point k of ``schedule`` (``latents[M] = z0``), its cost."""

    latents: list[Tensor | None]
    schedule: Schedule
    solver: str
    nfe: NFECount = field(default_factory=NFECount)
    seconds: float = 0.0


def solve_inversion(model: Any, z0: Tensor, source_cond: Conditioning, *, solver: str = "euler",
                    num_steps: int = 30, source_guidance: float = 1.0, sigma_grid: Any = "scheduler",
                    state_dtype: torch.dtype = torch.float32, source_uncond: Conditioning | None = None,
                    reference: Tensor | None = None, image_size: tuple[int, int] | None = None,
                    form: str = "taylor") -> Inversion:
    """Invert with ``"euler"`` (as DirectEdit, ``time_at="target"``), ``"rf_solver"`` or ``"fireflow"``.

    Returns the trajectory on the original grid with its NFE; reusable by :func:`rf_solver` / :func:`fireflow`
    through ``inversion=`` (e.g. across a guidance grid, which does not change the inversion).
    """
    start = time.perf_counter()
    if solver not in ("euler", "rf_solver", "fireflow"):
        raise ValueError(f"solver must be 'euler', 'rf_solver' or 'fireflow', got {solver!r}")
    cfg = DirectEditConfig(num_steps=num_steps, source_guidance=source_guidance, injection=None,
                           sigma_grid=sigma_grid, state_dtype=state_dtype)
    z0 = _to_state(model, z0, state_dtype)
    height, width = pixel_size(model, z0, image_size)
    if solver == "euler":
        cache = invert(model, z0, source_cond, config=cfg, source_uncond=source_uncond, reference=reference,
                       image_size=(height, width))
        return Inversion(cache.latents, cache.schedule, solver, cache.nfe, time.perf_counter() - start)
    sched = make_schedule(model, cfg, height, width)
    ref = refined_schedule(sched)
    counter = NFECount()
    caller = BranchCaller(model, n_images=z0.shape[0], source_cond=source_cond,
                          source_uncond=_uncond_for(model, z0.shape[0], source_uncond),
                          source_guidance=source_guidance, reference=reference,
                          grid=token_grid(model, height, width), nfe=counter)

    def velocity(x: Tensor, i: int) -> Tensor:
        return caller(x, i, ref, (SOURCE,), phase="inversion")

    traj: list[Tensor | None] = [None] * (num_steps + 1)
    traj[num_steps] = z0
    x, v_prev = z0, None
    with torch.no_grad():
        for k in reversed(range(num_steps)):
            i_a, i_b = 2 * k + 2, 2 * k
            v1 = velocity(x, i_a) if solver == "rf_solver" or v_prev is None else v_prev
            x, v2 = _second_order_step(x, v1, i_a, i_b, ref, velocity, form)
            v_prev = v2
            traj[k] = x
    return Inversion(traj, sched, solver, counter, time.perf_counter() - start)


# --- shared dual-path machinery ------------------------------------------------------------------------------
def _prepare(model: Any, z0: Tensor, src_cond: Conditioning, tar_cond: Conditioning, *, source_guidance: float,
             target_guidance: Any, state_dtype: torch.dtype, src_uncond: Any, tar_uncond: Any, reference: Any,
             image_size: Any, nfe: NFECount) -> dict[str, Any]:
    z0 = _to_state(model, z0, state_dtype)
    n_images = z0.shape[0]
    if len(src_cond) != n_images:
        raise ValueError(f"{len(src_cond)} source prompt rows for {n_images} latents")
    if len(tar_cond) == 0 or len(tar_cond) % n_images:
        raise ValueError(f"{len(tar_cond)} target rows do not give one or more targets for {n_images} images")
    m = len(tar_cond) // n_images
    guid = (float(target_guidance),) if isinstance(target_guidance, (int, float)) else tuple(
        float(g) for g in target_guidance)
    guid = guid * m if len(guid) == 1 else guid
    if len(guid) != m:
        raise ValueError(f"{len(guid)} target_guidance values for {m} target prompts")
    height, width = pixel_size(model, z0, image_size)
    caller = BranchCaller(model, n_images=n_images, source_cond=src_cond,
                          source_uncond=_uncond_for(model, n_images, src_uncond), target_cond=tar_cond,
                          target_uncond=_uncond_for(model, m * n_images, tar_uncond),
                          source_guidance=source_guidance, target_guidances=guid, reference=reference,
                          grid=token_grid(model, height, width), nfe=nfe)
    return {"z0": z0, "B": n_images, "m": m, "guid": guid, "size": (height, width), "caller": caller}


def _mask(model: Any, mask: Any, size: tuple[int, int], n_images: int, m: int, dtype: torch.dtype,
          dilation: int | None) -> tuple[Tensor | None, dict[str, Any]]:
    ctx = MaskContext(model=model, image_size=size, padded_size=size, n_images=n_images, dilation_px=dilation)
    blend, info = resolve_mask(mask, ctx)
    if blend is not None:
        blend = _expand_rows(blend.to(model.device, dtype), n_images).repeat(m, *[1] * (blend.ndim - 1))
    return blend, info


class _Injector:
    """CallStates for the dual-path baselines: V[target] ← V[source] at steps k < K, in every call of the step."""

    def __init__(self, model: Any, injection: ValueInjection | None, num_steps: int, caller: BranchCaller):
        self.sites = injection_sites(model, injection) if injection is not None else []
        self.K = injection.num_steps(arch_of(model), num_steps) if injection is not None else 0
        kinds = _injection_kinds(model, injection.rows) if injection is not None else ("cond",)
        branches = (SOURCE, *range(caller.m))
        tar, src, _ = injection_pairs(caller.plan(branches), kinds)
        self.pairs = (tar.to(model.device), src.to(model.device))
        self.log: list[tuple[str, int, str]] = []

    def state(self, k: int) -> CallState | None:
        if not self.sites or k >= self.K or not self.pairs[0].numel():
            return None
        return CallState(step=k, phase="forward", inject=self.pairs, log=self.log)


def _finish(method: str, x: Tensor, n_images: int, nfe: NFECount, trace: list[Tensor], blend: Tensor | None,
            info: dict[str, Any], start: float, config: dict[str, Any], injector: _Injector | None,
            inversion_s: float = 0.0) -> EditResult:
    forward = time.perf_counter() - start
    return EditResult(edited=x[n_images:], reconstruction=x[:n_images], mask=blend, nfe=nfe, trace=_floats(trace),
                      timings={"inversion_s": inversion_s, "forward_s": forward, "total_s": inversion_s + forward},
                      config=config, method=method,
                      K=injector.K if injector else 0, sites=injector.sites if injector else [], mask_info=info,
                      injection_log=injector.log if injector else [])


# --- naive Euler ---------------------------------------------------------------------------------------------
@torch.no_grad()
def naive_euler(model: Any, z0: Tensor, src_cond: Conditioning, tar_cond: Conditioning, *, num_steps: int = 30,
                source_guidance: float = 1.0, target_guidance: Any = 2.0,
                injection: ValueInjection | None = ValueInjection(), mask: Any = None,  # noqa: B008
                sigma_grid: Any = "scheduler", state_dtype: torch.dtype = torch.float32, cache: Any = None,
                src_uncond: Conditioning | None = None, tar_uncond: Conditioning | None = None,
                reference: Tensor | None = None, image_size: tuple[int, int] | None = None,
                mask_dilation_px: int | None = None, callback: Callable[[int, Tensor], None] | None = None,
                ) -> EditResult:
    """Euler inversion (DirectEdit's, shared via ``cache=``), then both rows denoised from y_0 with plain Euler:
    no Δ pre-shift, no snapping (spec §2.10). 2M calls."""
    nfe = NFECount()
    if cache is None:
        cfg = DirectEditConfig(num_steps=num_steps, source_guidance=source_guidance, injection=None,
                               sigma_grid=sigma_grid, state_dtype=state_dtype)
        cache = invert(model, z0, src_cond, config=cfg, source_uncond=src_uncond, reference=reference,
                       image_size=image_size)
    else:
        cache.check(model)
        num_steps, source_guidance, state_dtype = cache.num_steps, cache.source_guidance, cache.config.state_dtype
        src_cond, src_uncond, reference = cache.source_cond, cache.source_uncond, cache.reference
    nfe.absorb(cache.nfe)
    start = time.perf_counter()
    run = _prepare(model, cache.z0, src_cond, tar_cond, source_guidance=source_guidance,
                   target_guidance=target_guidance, state_dtype=state_dtype, src_uncond=src_uncond,
                   tar_uncond=tar_uncond, reference=reference, image_size=cache.image_size, nfe=nfe)
    n_images, m, caller, sched = run["B"], run["m"], run["caller"], cache.schedule
    blend, info = _mask(model, mask, cache.image_size, n_images, m, state_dtype, mask_dilation_px)
    injector = _Injector(model, injection, num_steps, caller)
    branches = (SOURCE, *range(m))
    trace: list[Tensor] = []

    def predictor(x: Tensor, k: int) -> Tensor:
        return caller(x, k, sched, branches, phase="forward", state=injector.state(k))

    def on_step(k: int, x_next: Tensor, out: Tensor) -> Tensor:
        src, tar = x_next[:n_images], x_next[n_images:]
        if blend is not None:
            tar = blend * tar + (1 - blend) * src.repeat(m, *[1] * (src.ndim - 1))
            x_next = torch.cat([src, tar])
        trace.append((src - cache.latents[k + 1]).abs().max())  # on the device, like DirectEdit's
        if callback is not None:
            callback(k, x_next)
        return x_next

    x_init = torch.cat([cache.noise] * (1 + m))
    with install_processors(model, inject=injector.sites):
        x = fsampling.sample(predictor, x_init, sched, start=cache.skip, callback=on_step,
                             kind=caller.output_kind)
    config = {"num_steps": num_steps, "source_guidance": source_guidance, "target_guidance": list(run["guid"]),
              "injection": None if injection is None else injection.to_dict()}
    return _finish("naive_euler", x, n_images, nfe, trace, blend, info, start, config, injector,
                   inversion_s=float(cache.timings.get("inversion_s", 0.0)))


# --- RF-Solver and FireFlow ------------------------------------------------------------------------------------
def _second_order_edit(method: str, model: Any, z0: Tensor, src_cond: Conditioning, tar_cond: Conditioning, *,
                       num_steps: int, source_guidance: float, target_guidance: Any,
                       injection: ValueInjection | None, mask: Any, sigma_grid: Any, state_dtype: torch.dtype,
                       src_uncond: Any, tar_uncond: Any, reference: Any, image_size: Any,
                       mask_dilation_px: int | None, form: str, callback: Any,
                       inversion: Inversion | None) -> EditResult:
    nfe = NFECount()
    if inversion is None:
        inversion = solve_inversion(model, z0, src_cond, solver=method, num_steps=num_steps,
                                    source_guidance=source_guidance, sigma_grid=sigma_grid, state_dtype=state_dtype,
                                    source_uncond=src_uncond, reference=reference, image_size=image_size, form=form)
    elif inversion.solver != method or inversion.schedule.num_steps != num_steps:
        raise ValueError(f"inversion= was made by {inversion.solver} with {inversion.schedule.num_steps} steps; "
                         f"{method} with num_steps={num_steps} needs its own")
    start = time.perf_counter()
    nfe.absorb(inversion.nfe)
    traj, sched = inversion.latents, inversion.schedule
    run = _prepare(model, z0, src_cond, tar_cond, source_guidance=source_guidance, target_guidance=target_guidance,
                   state_dtype=state_dtype, src_uncond=src_uncond, tar_uncond=tar_uncond, reference=reference,
                   image_size=image_size, nfe=nfe)
    n_images, m, caller = run["B"], run["m"], run["caller"]
    ref = refined_schedule(sched)
    blend, info = _mask(model, mask, run["size"], n_images, m, state_dtype, mask_dilation_px)
    injector = _Injector(model, injection, num_steps, caller)
    branches = (SOURCE, *range(m))
    trace: list[Tensor] = []
    step_k = {"k": 0}

    def velocity(x: Tensor, i: int) -> Tensor:
        return caller(x, i, ref, branches, phase="forward", state=injector.state(step_k["k"]))

    noise = traj[0]
    assert noise is not None
    x = torch.cat([noise] * (1 + m))
    v_prev = None
    with install_processors(model, inject=injector.sites), torch.no_grad():
        for k in range(num_steps):
            step_k["k"] = k
            v1 = velocity(x, 2 * k) if method == "rf_solver" or v_prev is None else v_prev
            x, v_prev = _second_order_step(x, v1, 2 * k, 2 * k + 2, ref, velocity, form)
            src = x[:n_images]
            if blend is not None:
                x = torch.cat([src, blend * x[n_images:] + (1 - blend) * src.repeat(m, *[1] * (src.ndim - 1))])
            trace.append((src - traj[k + 1]).abs().max())
            if callback is not None:
                callback(k, x)
    config = {"num_steps": num_steps, "source_guidance": source_guidance, "target_guidance": list(run["guid"]),
              "injection": None if injection is None else injection.to_dict(), "form": form}
    return _finish(method, x, n_images, nfe, trace, blend, info, start, config, injector,
                   inversion_s=inversion.seconds)


def rf_solver(model: Any, z0: Tensor, src_cond: Conditioning, tar_cond: Conditioning, *, num_steps: int = 15,
              source_guidance: float = 1.0, target_guidance: Any = 2.0,
              injection: ValueInjection | None = ValueInjection(), mask: Any = None,  # noqa: B008
              sigma_grid: Any = "scheduler", state_dtype: torch.dtype = torch.float32,
              src_uncond: Conditioning | None = None, tar_uncond: Conditioning | None = None,
              reference: Tensor | None = None, image_size: tuple[int, int] | None = None,
              mask_dilation_px: int | None = None, form: str = "taylor",
              callback: Callable[[int, Tensor], None] | None = None,
              inversion: Inversion | None = None) -> EditResult:
    """RF-Solver (second order) inversion and dual path; injection in both calls of steps k < K. 4M calls."""
    return _second_order_edit("rf_solver", model, z0, src_cond, tar_cond, num_steps=num_steps,
                              source_guidance=source_guidance, target_guidance=target_guidance, injection=injection,
                              mask=mask, sigma_grid=sigma_grid, state_dtype=state_dtype, src_uncond=src_uncond,
                              tar_uncond=tar_uncond, reference=reference, image_size=image_size,
                              mask_dilation_px=mask_dilation_px, form=form, callback=callback,
                              inversion=inversion)


def fireflow(model: Any, z0: Tensor, src_cond: Conditioning, tar_cond: Conditioning, *, num_steps: int = 29,
             source_guidance: float = 1.0, target_guidance: Any = 2.0,
             injection: ValueInjection | None = ValueInjection(), mask: Any = None,  # noqa: B008
             sigma_grid: Any = "scheduler", state_dtype: torch.dtype = torch.float32,
             src_uncond: Conditioning | None = None, tar_uncond: Conditioning | None = None,
             reference: Tensor | None = None, image_size: tuple[int, int] | None = None,
             mask_dilation_px: int | None = None, form: str = "taylor",
             callback: Callable[[int, Tensor], None] | None = None,
             inversion: Inversion | None = None) -> EditResult:
    """FireFlow: RF-Solver whose first velocity reuses the previous step's midpoint velocity. 2(M+1) calls."""
    return _second_order_edit("fireflow", model, z0, src_cond, tar_cond, num_steps=num_steps,
                              source_guidance=source_guidance, target_guidance=target_guidance, injection=injection,
                              mask=mask, sigma_grid=sigma_grid, state_dtype=state_dtype, src_uncond=src_uncond,
                              tar_uncond=tar_uncond, reference=reference, image_size=image_size,
                              mask_dilation_px=mask_dilation_px, form=form, callback=callback,
                              inversion=inversion)


# --- FlowEdit --------------------------------------------------------------------------------------------------
@torch.no_grad()
def flowedit(model: Any, z0: Tensor, src_cond: Conditioning, tar_cond: Conditioning, *, num_steps: int | None = None,
             n_max: int | None = None, n_min: int = 0, n_avg: int = 1, source_guidance: float | None = None,
             target_guidance: Any = None, generator: torch.Generator | None = None,
             sigma_grid: Any = "scheduler", state_dtype: torch.dtype = torch.float32,
             src_uncond: Conditioning | None = None, tar_uncond: Conditioning | None = None,
             reference: Tensor | None = None, image_size: tuple[int, int] | None = None,
             mask: Any = None, callback: Callable[[int, Tensor], None] | None = None) -> EditResult:
    """FlowEdit without inversion (spec §2.10). ``num_steps`` = T; defaults per family (FLUX T=28, n_max=24,
    g 1.5 / 5.5; SD3 T=50, n_max=33, g 3.5 / 13.5). (n_max − n_min)·n_avg + n_min calls; no mask, no
    reconstruction (``reconstruction`` is ``None``)."""
    if mask is not None:
        raise ValueError("FlowEdit has no mask (spec §2.10); pass mask=None")
    start = time.perf_counter()
    defaults = FLOWEDIT_DEFAULTS.get(arch_of(model), FLOWEDIT_DEFAULTS["sd3"])
    total = int(num_steps if num_steps is not None else defaults["num_steps"])
    n_max = int(n_max if n_max is not None else min(defaults["n_max"], total))
    g_src = float(source_guidance if source_guidance is not None else defaults["source_guidance"])
    g_tar = target_guidance if target_guidance is not None else defaults["target_guidance"]
    if not 0 <= n_min <= n_max <= total or n_avg < 1:
        raise ValueError(f"need 0 <= n_min ({n_min}) <= n_max ({n_max}) <= num_steps ({total}) and n_avg >= 1")
    nfe = NFECount()
    run = _prepare(model, z0, src_cond, tar_cond, source_guidance=g_src, target_guidance=g_tar,
                   state_dtype=state_dtype, src_uncond=src_uncond, tar_uncond=tar_uncond, reference=reference,
                   image_size=image_size, nfe=nfe)
    z0, n_images, m, caller = run["z0"], run["B"], run["m"], run["caller"]
    cfg = DirectEditConfig(num_steps=total, injection=None, sigma_grid=sigma_grid, state_dtype=state_dtype)
    sched = make_schedule(model, cfg, *run["size"])
    sig = sched.sigmas.to(z0.device)  # type: ignore[union-attr]
    branches = (SOURCE, *range(m))
    z = z0.repeat(m, *[1] * (z0.ndim - 1))
    z0_t = z.clone()
    x_tar = None
    for i in range(total - n_max, total):
        if i < total - n_min:
            dv = torch.zeros_like(z)
            for _ in range(n_avg):
                noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(z0.device, state_dtype)
                x_src = (1 - sig[i]).to(state_dtype) * z0 + sig[i].to(state_dtype) * noise
                x_src_t = x_src.repeat(m, *[1] * (z0.ndim - 1))
                x_tar_i = x_src_t + (z - z0_t)  # equals x_src exactly while z == z0
                v = caller(torch.cat([x_src, x_tar_i]), i, sched, branches, phase="flowedit")
                v_src, v_tar = v[:n_images].repeat(m, *[1] * (z0.ndim - 1)), v[n_images:]
                dv = dv + (v_tar - v_src)
            dv = dv / n_avg if n_avg > 1 else dv
            z = fsampling.step(z, dv, sched, i, i + 1, kind="flow").to(state_dtype)
            if callback is not None:
                callback(i, z)
            continue
        if x_tar is None:  # the last n_min steps: plain Euler on the target branch, from a fresh noisy pair
            noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(z0.device, state_dtype)
            x_src = (1 - sig[i]).to(state_dtype) * z0 + sig[i].to(state_dtype) * noise
            x_tar = x_src.repeat(m, *[1] * (z0.ndim - 1)) + (z - z0_t)
        v = caller(torch.cat([torch.zeros_like(z0), x_tar]), i, sched, tuple(range(m)), phase="flowedit")
        x_tar = fsampling.step(x_tar, v[n_images:], sched, i, i + 1, kind="flow").to(state_dtype)
        if callback is not None:
            callback(i, x_tar)
    out = z if x_tar is None else x_tar
    config = {"num_steps": total, "n_max": n_max, "n_min": n_min, "n_avg": n_avg, "source_guidance": g_src,
              "target_guidance": list(run["guid"])}
    return EditResult(edited=out, reconstruction=None, nfe=nfe, timings={"total_s": time.perf_counter() - start},
                      config=config, method="flowedit")


# --- equal-NFE settings and dispatch ---------------------------------------------------------------------------
def settings_for_nfe(method: str, nfe: int, family: str) -> dict[str, int]:
    """Step settings giving ``nfe`` network calls (spec §6): DirectEdit / naive N = nfe/2, RF-Solver M = nfe/4,
    FireFlow M = nfe/2 − 1, FlowEdit n_max = nfe with T keeping its default n_max/T ratio (FLUX 70, SD3 91 at 60).
    ``family``: ``"flux"`` or ``"sd3"`` (FlowEdit's defaults differ)."""
    method = _ALIASES.get(method, method)
    if method in ("directedit", "naive_euler"):
        if nfe % 2:
            raise ValueError(f"{method} makes 2N calls: nfe must be even, got {nfe}")
        return {"num_steps": nfe // 2}
    if method == "rf_solver":
        if nfe % 4:
            raise ValueError(f"rf_solver makes 4M calls: nfe must be a multiple of 4, got {nfe}")
        return {"num_steps": nfe // 4}
    if method == "fireflow":
        if nfe % 2 or nfe < 4:
            raise ValueError(f"fireflow makes 2(M+1) calls: nfe must be even and >= 4, got {nfe}")
        return {"num_steps": nfe // 2 - 1}
    if method == "flowedit":
        d = FLOWEDIT_DEFAULTS.get(family)
        if d is None:
            raise ValueError(f"unknown family {family!r}; use 'flux' or 'sd3'")
        return {"num_steps": round(nfe * d["num_steps"] / d["n_max"]), "n_max": nfe}
    raise ValueError(f"unknown method {method!r}; use one of {METHODS}")


def run(name: str, model: Any, z0: Tensor, src_cond: Conditioning, tar_cond: Conditioning,
        **kwargs: Any) -> EditResult:
    """Run a method by name (``directedit``, ``naive_euler``/``naive``, ``rf_solver``/``rf-solver``, ``fireflow``,
    ``flowedit``) with its keyword arguments. DirectEdit takes ``config=`` and ``mask=``."""
    from directedit.core import edit

    name = _ALIASES.get(name, name)
    if name == "directedit":
        config = kwargs.pop("config", DirectEditConfig())
        mask = kwargs.pop("mask", None)
        cache = invert(model, z0, src_cond, config=config, **kwargs)
        return edit(model, cache, tar_cond, config=config, mask=mask)
    fns = {"naive_euler": naive_euler, "rf_solver": rf_solver, "fireflow": fireflow, "flowedit": flowedit}
    if name not in fns:
        raise ValueError(f"unknown method {name!r}; use one of {METHODS}")
    return fns[name](model, z0, src_cond, tar_cond, **kwargs)
