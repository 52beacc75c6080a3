"""Regional Adaptive Noise Fusion (spec §2.4): the three-region sampling loop.

Per step ``i`` (flowcore point ``i → i+1``):

1. ``ε_s = U(z | ControlNet(sketch))`` and ``ε_r = U(z | no ControlNet)`` (``U`` = CFG-combined prediction);
2. ``ε̂ = M̄_s ⊙ ε_s + (1 − M̄_s) ⊙ ε_r``;
3. ``ẑ = flowcore.sampling.step(z, ε̂, i, i+1)`` — DDIM η = 0 for VP models, Euler for rectified flow;
4. ``z ← M̄ ⊙ ẑ + M̄_k ⊙ (a(i+1)·z̃ + s(i+1)·ξ_i)``, with exactly ``z̃`` in the keep region at the end
   (``final_keep="clean"``).

The loop itself is :func:`flowcore.sampling.sample`; this module supplies the predictor (the batched passes and
the sketch gating) and the re-injection callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from feat_tryon.config import FEATConfig
from feat_tryon.masks import RegionMasks
from flowcore.adapters import Conditioning, ControlInput
from flowcore.attention import CallContext
from flowcore.sampling import sample
from flowcore.schedules import Schedule

__all__ = ["CallStats", "num_run_steps", "ranf_sample", "start_index"]


@dataclass
class CallStats:
    """Network work done by one run: denoiser calls and rows, ControlNet rows, encoder and VAE images."""

    unet_calls: int = 0
    unet_samples: int = 0
    controlnet_samples: int = 0
    encoder_images: int = 0
    vae_encode_images: int = 0
    vae_decode_images: int = 0
    steps: int = 0
    per_step: list[tuple[int, int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "per_step"}
        if self.steps:
            out["unet_samples_per_step"] = self.unet_samples / self.steps
            out["unet_calls_per_step"] = self.unet_calls / self.steps
            out["controlnet_samples_per_step"] = self.controlnet_samples / self.steps
        return out


def num_run_steps(num_steps: int, strength: float) -> int:
    """``round(strength·N)`` (halves round up), at least 1: the number of steps a run takes."""
    return max(1, min(num_steps, math.floor(strength * num_steps + 0.5)))


def start_index(num_steps: int, strength: float) -> int:
    """``k₀ = N − round(strength·N)``: the first point of the run (see :func:`num_run_steps`)."""
    return num_steps - num_run_steps(num_steps, strength)


def _cat_cond(parts: list[Conditioning]) -> Conditioning:
    return parts[0] if len(parts) == 1 else Conditioning.cat(parts)


def _native_mask(adapter: Any, mask: Tensor, like: Tensor) -> Tensor:
    """A (B,1,h,w) latent mask broadcast to the adapter's latent layout of ``like`` (bool)."""
    if like.ndim == 4:
        return mask.to(like.device).bool().expand(like.shape[0], like.shape[1], *mask.shape[-2:])
    grid = mask.expand(like.shape[0], -1, -1, -1).to(like.device)
    channels = like.shape[-1] // 4
    return adapter.from_grid(grid.expand(-1, channels, -1, -1).contiguous()).bool()


def _residual_gate(adapter: Any, new: Tensor) -> Tensor:
    """The residual_mask gate: ``M̄_s`` itself for UNets (flowcore area-pools it to each residual's grid), area-
    pooled over the patch and flattened to (B, T, 1) for token ControlNets (SD3: 2×2)."""
    if getattr(adapter, "family", "vp") == "vp":
        return new
    p = int(getattr(adapter, "patch_size", 1) or 1)
    if p == 1 and new.shape[-1] % 2 == 0 and type(adapter).__name__.startswith("Flux"):
        p = 2
    pooled = F.avg_pool2d(new.float(), p) if p > 1 else new.float()
    return pooled.flatten(2).transpose(1, 2)


class _Passes:
    """The CFG-combined prediction with the sketch gating of §2.4 (one batched call where possible)."""

    def __init__(self, adapter: Any, cond: Conditioning, uncond: Conditioning | None, masks: RegionMasks,
                 config: FEATConfig, control: ControlInput | None, image_embeds: Tensor | None, stats: CallStats,
                 schedule: Schedule, guidance: float | None):
        self.adapter = adapter
        self.cond, self.uncond = cond, uncond
        self.config = config
        self.control = control
        self.image_embeds = image_embeds
        self.stats = stats
        self.schedule = schedule
        self.guidance = guidance
        self.cfg = uncond is not None and config.cfg_on and getattr(adapter, "guidance_kind", "cfg") == "cfg"
        self.new = masks.new
        ranf = config.ranf
        gating = ranf.sketch_gating if ranf.enabled else "none"
        if control is None:
            self.mode = "plain"
        elif gating == "none":
            self.mode = "control"
        elif gating == "residual_mask":
            self.mode = "residual_mask"
        elif bool(masks.new_empty.all()):
            self.mode = "plain"  # nothing gets the sketch: no ControlNet at all
        elif bool(masks.removal_empty.all()):
            self.mode = "control"  # nothing to remove: ε_r is skipped
        else:
            self.mode = "two_pass"
        self.mode_note = self.mode

    # one network call over the given pass list; each pass is (with_control: bool)
    def _call(self, x: Tensor, i: int, passes: list[bool], gate: Tensor | None) -> list[Tensor]:
        b = x.shape[0]
        rows_per_pass = 2 * b if self.cfg else b
        conds: list[Conditioning] = []
        embeds: list[Tensor] = []
        for _ in passes:
            if self.cfg:
                assert self.uncond is not None
                conds += [self.uncond, self.cond]
                if self.image_embeds is not None:
                    embeds += [torch.zeros_like(self.image_embeds), self.image_embeds]
            else:
                conds.append(self.cond)
                if self.image_embeds is not None:
                    embeds.append(self.image_embeds)
        n_pass = len(passes)
        xs = torch.cat([x] * (n_pass * (2 if self.cfg else 1)))
        control = None
        if any(passes):
            assert self.control is not None
            with_rows = torch.cat([torch.full((rows_per_pass,), p, dtype=torch.bool) for p in passes])
            image = self.control.image
            if image is not None and image.shape[0] not in (1, xs.shape[0]):
                image = image.repeat(xs.shape[0] // image.shape[0], 1, 1, 1)
            rows = None if bool(with_rows.all()) else with_rows.to(x.device)
            residual_gate = None
            if gate is not None:
                residual_gate = gate.repeat(xs.shape[0] // gate.shape[0], *([1] * (gate.ndim - 1)))
            control = replace(self.control, image=image, rows=rows, residual_gate=residual_gate)
            self.stats.controlnet_samples += int(with_rows.sum())
        ctx = CallContext(step=i, num_steps=self.schedule.num_steps, phase="feat")
        kwargs: dict[str, Any] = {"control": control, "ctx": ctx}
        if embeds:
            kwargs["image_embeds"] = torch.cat(embeds)
        if self.guidance is not None:
            kwargs["guidance"] = self.guidance
        out = self.adapter.predict(xs, self.schedule.t(i), _cat_cond(conds), **kwargs)
        self.stats.unet_calls += 1
        self.stats.unet_samples += xs.shape[0]
        chunks = out.chunk(n_pass)
        results = []
        for chunk in chunks:
            if self.cfg:
                u, c = chunk.chunk(2)
                results.append(self.adapter.combine_cfg(u, c, self.config.guidance_scale))
            else:
                results.append(chunk)
        return results

    def __call__(self, x: Tensor, i: int) -> Tensor:
        before = (self.stats.unet_calls, self.stats.unet_samples, self.stats.controlnet_samples)
        if self.mode == "plain":
            (eps,) = self._call(x, i, [False], None)
        elif self.mode == "control":
            (eps,) = self._call(x, i, [True], None)
        elif self.mode == "residual_mask":
            (eps,) = self._call(x, i, [True], _residual_gate(self.adapter, self.new))
        elif self.config.ranf.batch_passes:
            eps_s, eps_r = self._call(x, i, [True, False], None)
            eps = torch.where(_native_mask(self.adapter, self.new, eps_s), eps_s, eps_r)
        else:
            (eps_s,) = self._call(x, i, [True], None)
            (eps_r,) = self._call(x, i, [False], None)
            eps = torch.where(_native_mask(self.adapter, self.new, eps_s), eps_s, eps_r)
        after = (self.stats.unet_calls, self.stats.unet_samples, self.stats.controlnet_samples)
        self.stats.per_step.append(tuple(a - b for a, b in zip(after, before)))  # type: ignore[arg-type]
        self.stats.steps += 1
        return eps


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def ranf_sample(
    adapter: Any,
    z_tilde: Tensor,
    masks: RegionMasks,
    cond: Conditioning,
    *,
    config: FEATConfig,
    control: ControlInput | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], Tensor | None] | None = None,
    uncond: Conditioning | None = None,
    image_embeds: Tensor | None = None,
    z_person: Tensor | None = None,
    schedule: Schedule | None = None,
    stats: CallStats | None = None,
    noise: Tensor | None = None,
    progress: bool = False,
) -> Tensor:
    """Denoise the operating region while re-injecting the forward-noised ``z̃`` in the keep region.

    Args:
        adapter: a flowcore ``FlowModel`` (UNet adapters for SDXL/SD1.5/toy-unet; SD3/FLUX adapters for the flow
            port).
        z_tilde: the OFR latent ``z̃`` in the adapter's latent layout, (B,C,h,w) (FLUX: packed (B,T,4C)).
        masks: the :class:`~feat_tryon.masks.RegionMasks` on the latent grid.
        cond, uncond: conditioning rows (B each); ``uncond`` (the ``""`` rows) enables CFG when
            ``config.guidance_scale != 1`` and the model uses CFG.
        config: the run's :class:`~feat_tryon.config.FEATConfig` (steps, CFG, RANF options).
        control: the ControlNet input (image (B|1,3,H,W), ``scale`` = the sketch scale) or ``None``.
        generator: draws ξ₀ (``adapter.prepare_noise``) and then one fresh ξ_i per step.
        callback: ``callback(i, z)`` after each fused step; a returned tensor replaces ``z``.
        image_embeds: (B, 2, D) slot embeddings (IP-Adapter UNets); zeros are the CFG negatives.
        z_person: ``z_p``, used when ``keep_source="person"`` or ``init_from="person"`` (default ``z_tilde``).
        schedule: the grid (default ``adapter.schedule(N, ...)`` at the image size).
        stats: a :class:`CallStats` to fill.
        noise: ξ₀ to use instead of drawing it.
    Returns:
        The final latents ``z`` (same layout as ``z_tilde``).
    """
    ranf = config.ranf
    z_tilde = z_tilde.float()
    z_person = z_tilde if z_person is None else z_person.float()
    stats = stats if stats is not None else CallStats()
    b = z_tilde.shape[0]
    grid_h, grid_w = masks.op.shape[-2:]
    f = int(getattr(adapter, "vae_scale_factor", 1))
    height, width = grid_h * f, grid_w * f
    n = config.num_inference_steps
    sched = schedule if schedule is not None else adapter.schedule(n, height=height, width=width)
    k0 = start_index(sched.num_steps, ranf.init_strength)
    if not ranf.enabled:  # no fusion: the whole canvas from q(z̃, t₁), the sketch everywhere
        ones = torch.ones_like(masks.op)
        masks = replace(masks, op=ones, new=ones, removal=torch.zeros_like(ones), keep=torch.zeros_like(ones))
    xi0 = noise if noise is not None else adapter.prepare_noise(b, height, width, generator=generator)
    xi0 = xi0.to(z_tilde.device, torch.float32)
    keep_src = z_tilde if ranf.keep_source == "ofr" else z_person
    init_src = z_person if ranf.init_from == "person" else z_tilde
    a, s = sched.a.to(z_tilde.device), sched.s.to(z_tilde.device)
    z = xi0.clone() if ranf.init_from == "noise" else a[k0] * init_src + s[k0] * xi0
    op_native = _native_mask(adapter, masks.op, z)
    if not bool(masks.op.any()):  # M̄ = ∅: nothing to generate
        return keep_src.clone()
    guidance = config.guidance_scale if getattr(adapter, "guidance_kind", "cfg") == "embedded" else None
    passes = _Passes(adapter, cond, uncond, masks, config, control, image_embeds, stats, sched, guidance)
    last = sched.num_steps

    def fuse(i: int, z_next: Tensor, out: Tensor) -> Tensor:
        j = i + 1
        if j == last and ranf.final_keep == "clean":
            keep = keep_src
        else:
            xi = xi0 if ranf.reinject_noise == "fixed" else _randn(z_next, generator)
            keep = a[j] * keep_src + s[j] * xi
        fused = torch.where(op_native, z_next.to(keep.dtype), keep)
        if callback is not None:
            replaced = callback(i, fused)
            if replaced is not None:
                fused = replaced
        return fused

    with torch.no_grad():
        z = sample(passes, z, sched, start=k0, callback=fuse, kind=adapter.prediction, progress=progress)
    return z
