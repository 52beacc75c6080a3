"""DirectEdit: step-level exact inversion and dual-path editing (spec §2).

* :func:`invert` runs ``flowcore.sampling.invert`` (Euler / DDIM inversion, ``time_at="target"``) with the source
  rows' guided output as predictor and keeps the trajectory y_s..y_N in an :class:`InversionCache`.
* :func:`edit` denoises the source and target branches in one batch per step with
  ``flowcore.sampling.sample``: the predictor feeds every row its state *plus* the stored inversion increment
  Δ_k (the source row, when snapped, the stored y_{k+1} itself), so the source row sees exactly what inversion
  call k saw; the update runs on the unshifted state; the step callback snaps the source and blends the mask.
* :func:`direct_edit` does it all from an image and prompts (encode, pad, invert, edit, decode, crop).

The state holds ``(1 + m)·B`` rows (sources first, then targets target-major) in ``config.state_dtype``; the
adapter casts to the model dtype at the network input only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import flowcore.sampling as fsampling
from directedit.cache import InversionCache, conditioning_fingerprint, model_fingerprint
from directedit.config import DirectEditConfig, arch_of
from directedit.injection import injection_pairs, injection_sites, install_processors, probe_sites
from directedit.masks import AttentionMask, MaskContext, resolve_mask
from directedit.rows import SOURCE, BranchCaller, CallState, NFECount
from flowcore.adapters import Conditioning
from flowcore.images import check_image, crop, pad_to_multiple, to_tensor
from flowcore.schedules import Schedule

__all__ = ["EditResult", "direct_edit", "edit", "encode_prompts", "fwd_update", "inv_update", "invert",
           "make_schedule"]

StepCallback = Callable[[int, Tensor], None]


@dataclass
class EditResult:
    """What an edit returns (DirectEdit and every baseline).

    Attributes:
        edited: target latents x^t_N, ``(m·B, ...)`` target-major (``(m, ...)`` for one image).
        reconstruction: source latents x^s_N ``(B, ...)`` (``None`` for FlowEdit, which has no source path).
        images: decoded targets, a list of ``(3, H, W)`` float tensors in [0, 1] cropped to the original size
            (``direct_edit`` and the pipelines fill it; ``None`` otherwise).
        reconstruction_image: decoded reconstructions, same format.
        mask: the blend mask used (``None`` without one).
        nfe: network calls (the reported NFE) and rows, per phase.
        trace: ``max|x^s_{k+1} − y_{k+1}|`` after every step (0 when snapped).
        snap_residual: (ours) the same before snapping, where the source row ran (NaN where it did not).
        timings: seconds per phase. config: the settings as a dict. K: injection steps. sites: injection sites.
        injection_log: ``(phase, step, site)`` for every V the processors changed.
        cache: the inversion cache (set by :func:`direct_edit`, for saving and reuse).
    """

    edited: Tensor
    reconstruction: Tensor | None
    images: list[Tensor] | None = None
    reconstruction_image: list[Tensor] | None = None
    mask: Tensor | None = None
    nfe: NFECount = field(default_factory=NFECount)
    trace: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    method: str = "directedit"
    snap_residual: list[float] = field(default_factory=list)
    K: int = 0
    sites: list[str] = field(default_factory=list)
    mask_info: dict[str, Any] = field(default_factory=dict)
    injection_log: list[tuple[str, int, str]] = field(default_factory=list)
    cache: InversionCache | None = field(default=None, repr=False)

    @property
    def images_tensor(self) -> Tensor | None:
        """``images`` stacked as ``(m·B, 3, H, W)``."""
        return None if self.images is None else torch.stack(self.images)


# --- helpers ------------------------------------------------------------------------------------------------
def make_schedule(model: Any, config: DirectEditConfig, height: int, width: int) -> Schedule:
    """The grid of spec §2.2 from flowcore (``FlowModel.schedule``): the scheduler's, FluxPipeline's or a list."""
    grid = config.sigma_grid
    if model.family == "vp":
        if grid != "scheduler":
            raise ValueError("VP models only take sigma_grid='scheduler' (their DDIM timesteps)")
        return model.schedule(config.num_steps, height=height, width=width)
    if grid == "scheduler":
        return model.schedule(config.num_steps, height=height, width=width)
    if grid == "flux-pipeline":
        return model.schedule(config.num_steps, height=height, width=width, sigmas="pipeline")
    return model.schedule(config.num_steps, height=height, width=width, sigmas=list(grid))


def inv_update(y_next: Tensor, out: Tensor, schedule: Schedule, k: int, *, kind: str) -> Tensor:
    """Inversion step k: y_k from y_{k+1} and the update output (flow velocity, or ε̂ for VP models)."""
    return fsampling.step(y_next, out, schedule, k + 1, k, kind=kind)


def fwd_update(x: Tensor, out: Tensor, schedule: Schedule, k: int, *, kind: str) -> Tensor:
    """Denoising step k: x_{k+1} from x_k; for a fixed ``out`` it inverts :func:`inv_update` exactly (Euler on a
    velocity; DDIM with ε̂ fixed). ``flowcore.sampling.invert`` / ``sample`` apply these same steps."""
    return fsampling.step(x, out, schedule, k, k + 1, kind=kind)


def pixel_size(model: Any, latents: Tensor, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The padded pixel size ``(H, W)`` of latents (FLUX packed tokens are taken as a square grid)."""
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    if latents.ndim == 3:
        side = int(round(latents.shape[1] ** 0.5))
        if side * side != latents.shape[1]:
            raise ValueError(f"{latents.shape[1]} packed tokens are not a square grid: pass image_size=(H, W)")
        return side * model.pad_multiple, side * model.pad_multiple
    f = model.vae_scale_factor
    return latents.shape[-2] * f, latents.shape[-1] * f


def token_grid(model: Any, height: int, width: int) -> tuple[int, int] | None:
    """FLUX's target token grid (passed to ``predict(grid=...)``); ``None`` for grid latents."""
    if arch_of(model) != "flux":
        return None
    return height // model.pad_multiple, width // model.pad_multiple


def encode_prompts(model: Any, prompts: Sequence[str] | str) -> Conditioning:
    """``model.encode_prompt`` with a clear error when the tokenizer / text encoder cannot read a prompt."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {type(p).__name__}: {p!r}")
    try:
        return model.encode_prompt(prompts)
    except Exception as err:
        raise ValueError(f"the model's tokenizer / text encoder cannot read the prompt(s) {prompts!r}: {err}") from err


def _uncond_for(model: Any, n: int, given: Conditioning | None) -> Conditioning | None:
    if model.guidance_kind != "cfg":
        return None
    if given is not None:
        if len(given) != n:
            raise ValueError(f"{len(given)} uncond rows for {n} rows: pass one encoding of '' per row")
        return given
    return encode_prompts(model, [""] * n)


def _to_state(model: Any, z: Tensor, dtype: torch.dtype) -> Tensor:
    if not isinstance(z, Tensor) or not torch.is_floating_point(z):
        raise TypeError("latents must be a floating-point tensor (encode images with model.encode_image)")
    return z.to(model.device, dtype)


def _recorded_rows(plan: Any, kinds: tuple[str, ...]) -> tuple[Tensor, list[tuple[str, int]]]:
    rows, layout = [], []
    for r, (br, kind, b) in enumerate(plan.rows):
        if br == SOURCE and kind in kinds:
            rows.append(r)
            layout.append((kind, b))
    return torch.tensor(rows, dtype=torch.long), layout


def _injection_kinds(model: Any, rows: str) -> tuple[str, ...]:
    return ("cond", "uncond") if rows == "all" and model.guidance_kind == "cfg" else ("cond",)


# --- inversion ----------------------------------------------------------------------------------------------
@torch.no_grad()
def invert(
    model: Any,
    z0: Tensor,
    source_cond: Conditioning,
    *,
    config: DirectEditConfig = DirectEditConfig(),  # noqa: B008 - frozen dataclass
    mask_probe: AttentionMask | None = None,
    callback: StepCallback | None = None,
    source_uncond: Conditioning | None = None,
    reference: Tensor | None = None,
    image_size: tuple[int, int] | None = None,
    original_size: tuple[int, int] | None = None,
    progress: bool = False,
) -> InversionCache:
    """Invert ``z0`` to y_s with N − s network calls and keep the trajectory (spec §2.3).

    Args:
        model: a :class:`flowcore.adapters.FlowModel` (or a toy's ``bundle.adapter()``).
        z0: clean latents ``(B, ...)`` in the model's layout (``model.encode_image``).
        source_cond: B conditioning rows (``model.encode_prompt``).
        config: the run settings; inversion uses ``num_steps``, ``skip_steps``, ``sigma_grid``,
            ``source_guidance``, ``fold_unit_guidance``, ``state_dtype`` and, for ``source_branch="cached"``, the
            injection (the source Values of steps k < K are recorded).
        mask_probe: an :class:`AttentionMask` to record the attention map during the inversion.
        callback: ``callback(k, y_k)`` after each inversion step.
        source_uncond: the ``""`` rows for true-CFG models (encoded when omitted).
        reference: Kontext reference tokens ``(1|B, Tr, C)`` shared by every row.
        image_size: padded pixel size (needed for non-square FLUX latents); original_size: before padding.
    """
    start = time.perf_counter()
    cfg = config
    arch = arch_of(model)
    z0 = _to_state(model, z0, cfg.state_dtype)
    n_images = z0.shape[0]
    if len(source_cond) != n_images:
        raise ValueError(f"{len(source_cond)} source prompt rows for {n_images} latents")
    height, width = pixel_size(model, z0, image_size)
    sched = make_schedule(model, cfg, height, width)
    n_steps, skip = cfg.num_steps, cfg.skip_steps
    k_inject = cfg.injection_steps(arch)
    if cfg.injection is not None and skip >= k_inject:
        why = (f"K = int(r·N) = 0 at N = {n_steps}" if k_inject == 0 else
               f"skip_steps = {skip} >= K = {k_inject} (injection steps are absolute)")
        warnings.warn(f"{why}: no step injects Values", stacklevel=3)
    nfe = NFECount()
    source_uncond = _uncond_for(model, n_images, source_uncond) if not (
        cfg.fold_unit_guidance and cfg.source_guidance == 1.0) else None
    caller = BranchCaller(model, n_images=n_images, source_cond=source_cond, source_uncond=source_uncond,
                          source_guidance=cfg.source_guidance, fold_unit_guidance=cfg.fold_unit_guidance,
                          reference=reference, grid=token_grid(model, height, width), nfe=nfe)
    plan = caller.plan((SOURCE,))
    record = cfg.source_branch == "cached" and cfg.injection is not None and k_inject > skip
    sites = injection_sites(model, cfg.injection) if cfg.injection is not None else []
    kinds = _injection_kinds(model, cfg.injection.rows) if cfg.injection is not None else ("cond",)
    if cfg.injection is not None and "uncond" in kinds and "uncond" not in plan.kinds(SOURCE):
        raise ValueError("rows='all' needs the source uncond row; it is dropped by fold_unit_guidance at g_src = 1")
    record_rows, value_layout = _recorded_rows(plan, kinds)
    record_rows = record_rows.to(model.device)
    values: dict[int, dict[str, Tensor]] = {}
    columns: list[int] = []
    if mask_probe is not None:
        mask_probe.reset()
        src_prompt = source_cond.prompts[0] if source_cond.prompts else None
        columns = mask_probe.select(model, src_prompt)
    probe_rows = torch.tensor([plan.find(SOURCE, "cond", b) for b in range(n_images)], dtype=torch.long,
                              device=model.device)
    sigmas = sched.sigmas if sched.sigmas is not None else sched.s

    def predictor(x: Tensor, i: int) -> Tensor:
        rec = record and i < k_inject
        probe = mask_probe is not None and mask_probe.active(float(sigmas[i]))
        state = None
        if rec or probe:
            state = CallState(step=i, phase="inversion", record=record_rows if rec else None,
                              store=values.setdefault(i, {}) if rec else None,
                              store_device=cfg.value_cache_device, probe=mask_probe if probe else None,
                              probe_rows=probe_rows)
        return caller(x, i, sched, (SOURCE,), phase="inversion", state=state)

    def on_step(i: int, y_i: Tensor, out: Tensor) -> None:
        if callback is not None:
            callback(i, y_i)

    handle = install_processors(model, inject=sites if record else [],
                                probe=probe_sites(model) if mask_probe is not None and columns else [])
    with handle:
        traj = fsampling.invert(predictor, z0, sched, end=skip, time_at="target", kind=caller.output_kind,
                                callback=on_step, progress=progress)
    latents = [None if z is None else z.to(cfg.state_dtype) for z in traj.latents]
    amap = mask_probe.attention_map() if mask_probe is not None else None
    return InversionCache(
        latents=latents, schedule=sched, skip=skip, source_guidance=float(cfg.source_guidance), config=cfg,
        source_cond=source_cond, source_uncond=source_uncond, model_fingerprint=model_fingerprint(model),
        cond_fingerprint=conditioning_fingerprint(source_cond, source_uncond), arch=arch, n_images=n_images,
        image_size=(height, width), original_size=original_size, reference=reference,
        value_cache=values if record else None, value_layout=value_layout if record else None,
        injection={"sites": sites, "K": k_inject, "rows": cfg.injection.rows} if record and cfg.injection else None,
        attention_map=amap, attention_info=mask_probe.describe() if mask_probe is not None else None,
        nfe=nfe, timings={"inversion_s": time.perf_counter() - start},
    )


# --- the forward pass ---------------------------------------------------------------------------------------
_INVERSION_FIELDS = ("num_steps", "skip_steps", "sigma_grid", "source_guidance", "fold_unit_guidance", "state_dtype")


def _check_config(cfg: DirectEditConfig, cache: InversionCache) -> None:
    inv = cache.config
    for name in _INVERSION_FIELDS:
        if getattr(cfg, name) != getattr(inv, name):
            raise ValueError(f"config.{name} = {getattr(cfg, name)!r} but the inversion cache was made with "
                             f"{getattr(inv, name)!r}; these are fixed by the inversion (the source branch must "
                             "retrace it): invert again, or edit with the cache's value")


def _check_value_cache(cache: InversionCache, sites: list[str], k_inject: int, rows: str) -> None:
    wanted = {"sites": sites, "K": k_inject, "rows": rows}
    if cache.value_cache is None or cache.injection is None:
        raise ValueError("source_branch='cached' needs Values recorded during the inversion: invert with "
                         "config.source_branch='cached' (and the same injection settings)")
    have = {k: cache.injection.get(k) for k in wanted}
    if have != wanted:
        raise ValueError(f"the inversion recorded Values for {have} but this edit asks for {wanted}; invert again "
                         "with the same injection settings, or use source_branch='batched'")


def _expand_rows(t: Tensor, n: int) -> Tensor:
    return t if t.shape[0] == n else t.expand(n, *t.shape[1:])


@torch.no_grad()
def edit(
    model: Any,
    cache: InversionCache,
    target_cond: Conditioning,
    *,
    config: DirectEditConfig | None = None,
    mask: Any = None,
    callback: StepCallback | None = None,
    target_uncond: Conditioning | None = None,
    progress: bool = False,
) -> EditResult:
    """Denoise the source and target branches from y_s with the Δ pre-shift (spec §2.4); 2(N − s) calls in all.

    Args:
        model: the FlowModel the cache was made with (checked by fingerprint).
        cache: from :func:`invert` (or :meth:`InversionCache.load`).
        target_cond: m·B rows (m target prompts per image, target-major).
        config: forward settings (default: the cache's); the inversion-time fields must match the cache.
        mask: ``None``, a path / image / tensor (``UserMask``), ``"attention"`` / an :class:`AttentionMask`, or a
            callable provider (spec §2.9); 1 = editable.
        callback: ``callback(k, x_{k+1})`` after each step with the whole state (sources first).
        target_uncond: the ``""`` rows for the targets (encoded when needed and omitted).
    """
    start = time.perf_counter()
    cfg = config if config is not None else cache.config
    _check_config(cfg, cache)
    cache.check(model)
    arch = arch_of(model)
    n_images, skip, sched = cache.n_images, cache.skip, cache.schedule
    if len(target_cond) == 0 or len(target_cond) % n_images:
        raise ValueError(f"{len(target_cond)} target rows do not give one or more targets for {n_images} images")
    m = len(target_cond) // n_images
    guid = cfg.target_guidances()
    if len(guid) == 1:
        guid = guid * m
    if len(guid) != m:
        raise ValueError(f"{len(guid)} target_guidance values for {m} target prompts")
    needs_uncond = model.guidance_kind == "cfg" and any(not (cfg.fold_unit_guidance and g == 1.0) for g in guid)
    target_uncond = _uncond_for(model, m * n_images, target_uncond) if needs_uncond else None
    k_inject = cfg.injection_steps(arch)
    sites = injection_sites(model, cfg.injection) if cfg.injection is not None else []
    kinds = _injection_kinds(model, cfg.injection.rows) if cfg.injection is not None else ("cond",)
    if cfg.source_branch == "cached" and cfg.injection is not None and k_inject > skip:
        _check_value_cache(cache, sites, k_inject, cfg.injection.rows)
    nfe = NFECount()
    height, width = cache.image_size
    caller = BranchCaller(model, n_images=n_images, source_cond=cache.source_cond,
                          source_uncond=cache.source_uncond, target_cond=target_cond, target_uncond=target_uncond,
                          source_guidance=cache.source_guidance, target_guidances=guid,
                          fold_unit_guidance=cfg.fold_unit_guidance, reference=cache.reference,
                          grid=token_grid(model, height, width), nfe=nfe)
    if "uncond" in kinds and cfg.injection is not None and "uncond" not in caller.plan((SOURCE,)).kinds(SOURCE):
        raise ValueError("rows='all' needs the source uncond row; it is dropped by fold_unit_guidance at g_src = 1")
    blend, mask_info = _blend_mask(model, cache, mask, cfg, target_cond)
    if blend is not None:
        blend = _expand_rows(blend.to(model.device, cfg.state_dtype), n_images).repeat(
            m, *[1] * (blend.ndim - 1))
    full = (SOURCE, *range(m))
    targets_only = tuple(range(m))

    def branches_at(k: int) -> tuple[int, ...]:
        if not cfg.snap_source or cfg.source_branch == "batched":
            return full
        if cfg.source_branch == "auto":
            return full if k < k_inject else targets_only
        return targets_only

    value_pos = {key: i for i, key in enumerate(cache.value_layout or [])}
    log: list[tuple[str, int, str]] = []
    lat = cache.latents

    row_maps: dict[tuple[int, ...], tuple[Any, Any]] = {}

    def maps_for(branches: tuple[int, ...]) -> tuple[Any, Any]:
        """(inject pairs, replay map) of a plan, as index tensors on the model's device, built once."""
        if branches not in row_maps:
            tar, src, missing = injection_pairs(caller.plan(branches), kinds)
            dev = model.device
            inject = (tar.to(dev), src.to(dev)) if tar.numel() else None
            replay = None
            if missing:
                replay = (torch.tensor([r for r, _, _ in missing], dtype=torch.long, device=dev),
                          torch.tensor([value_pos[(kind, b)] for _, kind, b in missing], dtype=torch.long,
                                       device=dev))
            row_maps[branches] = (inject, replay)
        return row_maps[branches]

    def state_for(k: int, branches: tuple[int, ...]) -> CallState | None:
        if not sites or k >= k_inject:
            return None
        inject, replay = maps_for(branches)
        if replay is not None and (cache.value_cache is None or k not in cache.value_cache):
            raise ValueError(f"no recorded source Values for step {k}: invert with source_branch='cached'")
        values = cache.value_cache.get(k) if replay is not None and cache.value_cache else None
        return CallState(step=k, phase="forward", inject=inject, replay=replay, values=values, log=log)

    def predictor(x: Tensor, k: int) -> Tensor:
        delta = cache.delta(k)
        src_in = lat[k + 1] if cfg.snap_source else x[:n_images] + delta
        tar_in = x[n_images:] + delta.repeat(m, *[1] * (delta.ndim - 1))
        branches = branches_at(k)
        return caller(torch.cat([src_in, tar_in]), k, sched, branches, phase="forward",
                      state=state_for(k, branches))

    trace: list[Tensor] = []  # kept on the device; converted once at the end (no host sync per step)
    residual: list[Tensor] = []

    def on_step(k: int, x_next: Tensor, out: Tensor) -> Tensor:
        y_next = lat[k + 1]
        assert y_next is not None
        src, tar = x_next[:n_images], x_next[n_images:]
        ran = SOURCE in branches_at(k)
        residual.append((src - y_next).abs().max() if ran else torch.full((), float("nan"), device=src.device))
        if cfg.snap_source:
            src = y_next
        if blend is not None:
            tar = blend * tar + (1 - blend) * y_next.repeat(m, *[1] * (y_next.ndim - 1))
        x_next = torch.cat([src, tar])
        trace.append((x_next[:n_images] - y_next).abs().max())
        if callback is not None:
            callback(k, x_next)
        return x_next

    y_start = lat[skip]
    assert y_start is not None
    x_init = torch.cat([y_start] + [y_start] * m)
    handle = install_processors(model, inject=sites)
    with handle:
        x_final = fsampling.sample(predictor, x_init, sched, start=skip, callback=on_step, kind=caller.output_kind,
                                   progress=progress)
    return EditResult(
        edited=x_final[n_images:], reconstruction=x_final[:n_images], mask=blend, nfe=cache.nfe.merged(nfe),
        trace=_floats(trace), snap_residual=_floats(residual),
        timings={**cache.timings, "forward_s": time.perf_counter() - start}, config=cfg.to_dict(), K=k_inject,
        sites=sites, mask_info=mask_info, injection_log=log,
    )


def _floats(values: list[Tensor]) -> list[float]:
    return [] if not values else [float(v) for v in torch.stack(values).double().cpu()]


def _blend_mask(model: Any, cache: InversionCache, mask: Any, cfg: DirectEditConfig,
                target_cond: Conditioning) -> tuple[Tensor | None, dict[str, Any]]:
    height, width = cache.image_size
    ctx = MaskContext(model=model, image_size=cache.original_size or (height, width), padded_size=(height, width),
                      n_images=cache.n_images, cache=cache, source_prompts=cache.source_cond.prompts,
                      target_prompts=target_cond.prompts, dilation_px=cfg.mask_dilation_px)
    blend, info = resolve_mask(mask, ctx)
    if blend is not None:
        if blend.shape[0] not in (1, cache.n_images):
            raise ValueError(f"the mask has {blend.shape[0]} rows for {cache.n_images} images")
        if cache.z0.ndim == 4 and tuple(blend.shape[-2:]) != tuple(cache.z0.shape[-2:]):
            raise ValueError(f"the blend mask grid {tuple(blend.shape[-2:])} does not match the latent grid "
                             f"{tuple(cache.z0.shape[-2:])}")
        if cache.z0.ndim == 3 and blend.shape[1] != cache.z0.shape[1]:
            raise ValueError(f"the blend mask has {blend.shape[1]} tokens, the latents {cache.z0.shape[1]}")
    return blend, info


# --- everything from an image --------------------------------------------------------------------------------
@torch.no_grad()
def direct_edit(
    model: Any,
    image: Any,
    source_prompt: str,
    target_prompt: str | Sequence[str],
    *,
    config: DirectEditConfig = DirectEditConfig(),  # noqa: B008 - frozen dataclass
    mask: Any = None,
    generator: torch.Generator | None = None,
    reference_image: Any = None,
    pad_mode: str = "white",
    decode: bool = True,
    progress: bool = False,
) -> EditResult:
    """Encode, pad, invert, edit and decode one image (spec §5).

    Args:
        image: PIL image, path, array or ``(1,3,H,W)`` tensor in [0, 1]; sizes that are not multiples of the
            model's ``pad_multiple`` are padded (``pad_mode``, white by default) and the outputs cropped back.
        source_prompt: describes the image. target_prompt: one edit prompt or several (one batch).
        mask: see :func:`edit` (``"attention"`` probes the inversion).
        generator: accepted for API symmetry; DirectEdit draws no noise.
        reference_image: Kontext reference (default: the image being edited).
    Returns:
        An :class:`EditResult` with ``images`` / ``reconstruction_image`` filled when ``decode``.
    """
    del generator
    img = check_image(to_tensor(image), name="image")
    if img.shape[0] != 1:
        raise ValueError(f"direct_edit edits one image at a time, got a batch of {img.shape[0]}")
    original = (img.shape[-2], img.shape[-1])
    padded, pad = pad_to_multiple(img, model.pad_multiple, mode=pad_mode)  # type: ignore[arg-type]
    z0 = model.encode_image(padded.to(model.device))
    targets = [target_prompt] if isinstance(target_prompt, str) else list(target_prompt)
    if not targets:
        raise ValueError("give at least one target prompt")
    source_cond = encode_prompts(model, [source_prompt])
    target_cond = encode_prompts(model, targets)
    reference = None
    if type(model).__name__ == "FluxKontextModel" or any(c.__name__ == "FluxKontextModel"
                                                         for c in type(model).__mro__):
        ref_img = padded if reference_image is None else pad_to_multiple(
            check_image(to_tensor(reference_image), name="reference_image"), model.pad_multiple, mode=pad_mode)[0]
        reference = model.encode_image(ref_img.to(model.device))
    probe = None
    if isinstance(mask, AttentionMask):
        probe = mask
    elif isinstance(mask, str) and mask == "attention":
        probe = AttentionMask(source_prompt=source_prompt, target_prompt=targets[0])
        mask = probe
    cache = invert(model, z0, source_cond, config=config, mask_probe=probe, reference=reference,
                   image_size=(padded.shape[-2], padded.shape[-1]), original_size=original, progress=progress)
    result = edit(model, cache, target_cond, config=config, mask=mask, progress=progress)
    result.cache = cache
    if decode:
        start = time.perf_counter()
        result.images = decode_latents(model, result.edited, cache, pad)
        if result.reconstruction is not None:
            result.reconstruction_image = decode_latents(model, result.reconstruction, cache, pad)
        result.timings["decode_s"] = time.perf_counter() - start
    return result


def decode_latents(model: Any, latents: Tensor, cache: InversionCache, pad: Any = None) -> list[Tensor]:
    """Decode state latents to ``(3, H, W)`` float images in [0, 1], cropped to the original size."""
    height, width = cache.image_size
    images = model.decode_image(latents, height=height, width=width).float().cpu()
    if pad is not None:
        images = crop(images, pad)
    elif cache.original_size is not None:
        images = images[..., : cache.original_size[0], : cache.original_size[1]]
    return list(images)
