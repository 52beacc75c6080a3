"""Sampling grids for every model family, equal to diffusers' scheduler objects value by value.

A :class:`Schedule` has points ``0..N``: point 0 is the noisiest, point N is clean, and step ``i -> i+1``
denoises. At every point ``x_i = a[i]·x0 + s[i]·eps``:

* rectified flow (``kind="rf"``; SD3, FLUX, Kontext, Qwen-Image): ``a = 1 - sigma``, ``s = sigma``;
* VP diffusion (``kind="vp"``; SD1.5, SDXL, DDIM eta 0): ``a = sqrt(alphabar)``, ``s = sqrt(1 - alphabar)``.

``timesteps[i]`` (``i < N``) is what the network receives at point ``i``, in the scheduler's units (0..1000), exactly
as the stock pipelines pass it. Rather than re-deriving diffusers' formulas, :func:`make_schedule` asks a *copy*
of the scheduler for its grid, so every configuration diffusers supports (static shift, dynamic ``mu``, custom
sigmas, Karras, DDIM "leading"/"trailing" spacing with ``steps_offset``) comes out value for value.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Schedule", "calculate_shift", "make_schedule", "scheduler_kind"]

_RF_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


@dataclass(frozen=True)
class Schedule:
    """A sampling grid. ``timesteps`` has N entries; ``a``, ``s`` (and ``sigmas`` for rf) have N+1.

    Attributes:
        kind: ``"rf"`` (rectified flow) or ``"vp"`` (variance-preserving diffusion).
        timesteps: (N,) float32, the network's time input at points ``0..N-1``.
        sigmas: (N+1,) float32 for rf (``sigmas[N] == 0``), ``None`` for vp.
        a, s: (N+1,) float32 path coefficients, ``x_i = a[i]·x0 + s[i]·eps``.
        num_train_timesteps: the scheduler's training horizon (1000 for every model we support).
    """

    kind: str
    timesteps: Tensor
    sigmas: Tensor | None
    a: Tensor
    s: Tensor
    num_train_timesteps: int = 1000

    @property
    def num_steps(self) -> int:
        """N, the number of denoising steps (points ``0..N``)."""
        return int(self.timesteps.shape[0])

    def t(self, i: int) -> Tensor:
        """The network time input at point ``i`` (``0 <= i <= N``); point N has time 0 (rf: ``sigma_N·1000``)."""
        n = self.num_steps
        if not 0 <= i <= n:
            raise IndexError(f"point {i} is outside 0..{n}")
        if i < n:
            return self.timesteps[i]
        if self.sigmas is not None:
            return self.sigmas[n] * self.num_train_timesteps
        return torch.zeros((), dtype=self.timesteps.dtype, device=self.timesteps.device)

    def to(self, device: torch.device | str) -> Schedule:
        """The same grid on ``device`` (values unchanged)."""
        move = lambda v: None if v is None else v.to(device)  # noqa: E731
        return Schedule(self.kind, move(self.timesteps), move(self.sigmas), move(self.a), move(self.s),
                        self.num_train_timesteps)

    def sub(self, start: int, end: int | None = None) -> Schedule:
        """Points ``start..end`` as a schedule of their own (``end`` defaults to N)."""
        end = self.num_steps if end is None else end
        sig = None if self.sigmas is None else self.sigmas[start:end + 1]
        return Schedule(self.kind, self.timesteps[start:end], sig, self.a[start:end + 1], self.s[start:end + 1],
                        self.num_train_timesteps)

    def to_tensors(self, prefix: str = "schedule.") -> dict[str, Tensor]:
        """The grid's tensors for a file: ``{prefix}timesteps`` (N,), ``{prefix}a``, ``{prefix}s`` and, for rf,
        ``{prefix}sigmas`` (N+1,). ``kind`` and ``num_train_timesteps`` are not tensors: store them beside (e.g. in
        the file's metadata) and give them back to :meth:`from_tensors`."""
        tensors = {f"{prefix}timesteps": self.timesteps, f"{prefix}a": self.a, f"{prefix}s": self.s}
        if self.sigmas is not None:
            tensors[f"{prefix}sigmas"] = self.sigmas
        return tensors

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], kind: str, *, num_train_timesteps: int = 1000,
                     prefix: str = "schedule.") -> Schedule:
        """The grid :meth:`to_tensors` stored under ``prefix`` (other keys of ``tensors`` are ignored)."""
        if kind not in ("rf", "vp"):
            raise ValueError(f"schedule kind must be 'rf' or 'vp', got {kind!r}")
        missing = [f"{prefix}{name}" for name in ("timesteps", "a", "s") if f"{prefix}{name}" not in tensors]
        if missing:
            raise ValueError(f"the tensors hold no schedule under {prefix!r}: {missing} missing")
        timesteps, a, s = (tensors[f"{prefix}{name}"] for name in ("timesteps", "a", "s"))
        sigmas = tensors.get(f"{prefix}sigmas")
        points = timesteps.shape[0] + 1
        lengths = {name: v.shape[0] for name, v in (("a", a), ("s", s), ("sigmas", sigmas)) if v is not None}
        if any(length != points for length in lengths.values()):
            raise ValueError(f"schedule tensors under {prefix!r} disagree: {points - 1} timesteps need N+1 = {points} "
                             f"points, got lengths {lengths}")
        return cls(kind, timesteps, sigmas, a, s, int(num_train_timesteps))


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's resolution-dependent ``mu``: linear in the number of image tokens (same formula as diffusers)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def scheduler_kind(scheduler: Any) -> str:
    """``"rf"`` for flow-matching schedulers, ``"vp"`` for the DDPM/DDIM family."""
    name = type(scheduler).__name__
    if name in _RF_SCHEDULERS or "FlowMatch" in name:
        return "rf"
    if hasattr(scheduler, "alphas_cumprod"):
        return "vp"
    raise TypeError(f"cannot tell whether {name} is a flow-matching or a VP scheduler")


def _as_scheduler(scheduler: Any) -> Any:
    """Accept a scheduler object or a config dict holding ``_class_name``."""
    if isinstance(scheduler, dict):
        import diffusers

        cls_name = scheduler.get("_class_name")
        if cls_name is None or not hasattr(diffusers, cls_name):
            raise ValueError(f"scheduler config needs a known '_class_name', got {cls_name!r}")
        return getattr(diffusers, cls_name).from_config(scheduler)
    return scheduler


def make_schedule(
    scheduler: Any,
    num_steps: int,
    *,
    mu: float | None = None,
    sigmas: Sequence[float] | None = None,
) -> Schedule:
    """The grid of ``scheduler`` at ``num_steps`` steps.

    Args:
        scheduler: a diffusers scheduler (it is copied, never mutated) or its config dict. VP schedulers other
            than DDIM (PNDM, Euler, DPM-Solver, ...) are converted with ``DDIMScheduler.from_config`` because the
            universal step is DDIM (eta 0) for VP models.
        num_steps: N >= 1.
        mu: FLUX-style dynamic shift; required when the scheduler uses dynamic shifting.
        sigmas: an explicit rf sigma list of length N (e.g. FluxPipeline's ``linspace(1, 1/N, N)``), shifted by the
            scheduler exactly as ``set_timesteps(sigmas=...)`` does.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler = _as_scheduler(scheduler)
    kind = scheduler_kind(scheduler)
    if kind == "rf":
        return _rf_schedule(scheduler, num_steps, mu=mu, sigmas=sigmas)
    if sigmas is not None or mu is not None:
        raise ValueError("sigmas= and mu= apply to flow-matching schedulers only")
    return _vp_schedule(scheduler, num_steps)


def _rf_schedule(scheduler: Any, n: int, *, mu: float | None, sigmas: Sequence[float] | None) -> Schedule:
    sched = copy.deepcopy(scheduler)
    if getattr(sched.config, "use_dynamic_shifting", False) and mu is None:
        raise ValueError(
            f"{type(sched).__name__} uses dynamic shifting: pass mu= (e.g. calculate_shift(image_seq_len))"
        )
    kwargs: dict[str, Any] = {"mu": mu}
    if sigmas is not None:
        if len(sigmas) != n:
            raise ValueError(f"got {len(sigmas)} sigmas for {n} steps")
        kwargs["sigmas"] = list(sigmas)
        sched.set_timesteps(**kwargs)
    else:
        sched.set_timesteps(n, **kwargs)
    sig = sched.sigmas.to(torch.float32).cpu()
    ts = sched.timesteps.to(torch.float32).cpu()
    return Schedule("rf", ts, sig, 1.0 - sig, sig.clone(), int(sched.config.num_train_timesteps))


def _vp_schedule(scheduler: Any, n: int) -> Schedule:
    from diffusers import DDIMScheduler

    sched = scheduler if isinstance(scheduler, DDIMScheduler) else DDIMScheduler.from_config(scheduler.config)
    sched = copy.deepcopy(sched)
    sched.set_timesteps(n)
    ts = sched.timesteps
    acp = sched.alphas_cumprod.to(torch.float32)
    final = sched.final_alpha_cumprod.to(torch.float32)
    # Point 0 sits at timesteps[0]; point i+1 is where DDIMScheduler.step lands from timesteps[i]:
    # prev = t - T // N (for "leading" spacing that is timesteps[i+1]); a negative prev means the final alpha.
    ratio = sched.config.num_train_timesteps // n
    prev = [int(t) - ratio for t in ts]
    alphabar = [acp[int(ts[0])]] + [acp[p] if p >= 0 else final for p in prev]
    # Same operations as DDIMScheduler.step so the universal step reproduces it bit for bit.
    a = torch.stack([ab ** 0.5 for ab in alphabar])
    s = torch.stack([(1 - ab) ** 0.5 for ab in alphabar])
    return Schedule("vp", ts.to(torch.float32).cpu(), None, a, s, int(sched.config.num_train_timesteps))
