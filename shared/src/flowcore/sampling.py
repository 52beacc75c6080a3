"""The one deterministic step and the sampling / inversion loops built on it.

``step(x, out, schedule, i, j)`` moves a latent from point ``i`` to point ``j`` of a :class:`~flowcore.schedules.
Schedule`: ``a[j]·x0_hat + s[j]·eps_hat``. For rectified flow with a velocity output this is exactly diffusers'
Euler update ``x + (sigma_j - sigma_i)·v`` (computed the same way, so it matches ``FlowMatchEulerDiscreteScheduler.
step`` bit for bit); for VP models it is DDIM with eta 0 (matching ``DDIMScheduler.step``). ``j < i`` inverts.

``sample`` and ``invert`` are small pure functions of a predictor ``(x, i) -> output`` (guidance already applied),
the latents and the schedule. While they run, :func:`current_loop` tells predictors which schedule and phase
they serve (a context variable, so nested or concurrent loops do not interfere); :func:`flowcore.guidance.guided`
uses it to map the point index to the network time and to fill the :class:`~flowcore.attention.CallContext`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowcore.prediction import to_x0_eps
from flowcore.schedules import Schedule

__all__ = ["LoopInfo", "Predictor", "Trajectory", "current_loop", "invert", "sample", "step"]

Predictor = Callable[[Tensor, int], Tensor]
"""``(x, i) -> native network output at point i's time``, guidance applied."""

Callback = Callable[[int, Tensor, Tensor], "Tensor | None"]
"""``callback(i, x_next, out)`` after each step; returning a tensor replaces ``x_next`` (e.g. mask blending)."""


@dataclass(frozen=True)
class LoopInfo:
    """What the running loop tells its predictor: the schedule, the phase and the output kind."""

    schedule: Schedule
    phase: str
    kind: str | None = None


_LOOP: contextvars.ContextVar[LoopInfo | None] = contextvars.ContextVar("flowcore_loop", default=None)


def current_loop() -> LoopInfo | None:
    """The :class:`LoopInfo` of the innermost running :func:`sample` / :func:`invert` call, or ``None``."""
    return _LOOP.get()


@contextlib.contextmanager
def loop_context(schedule: Schedule, phase: str, kind: str | None = None) -> Iterator[LoopInfo]:
    """Run predictors by hand with the loop information set (what ``sample``/``invert`` do internally)."""
    info = LoopInfo(schedule, phase, kind)
    token = _LOOP.set(info)
    try:
        yield info
    finally:
        _LOOP.reset(token)


def _default_kind(schedule: Schedule, kind: str | None) -> str:
    if kind is not None:
        return kind
    return "flow" if schedule.kind == "rf" else "eps"


def step(x: Tensor, out: Tensor, schedule: Schedule, i: int, j: int, *, kind: str | None = None) -> Tensor:
    """Move ``x`` from point ``i`` to point ``j`` given the network output ``out`` at point ``i``'s coefficients.

    Args:
        x: latents at point ``i`` (any shape); ``out`` the same shape.
        schedule: the grid; ``i``, ``j`` point indices in ``0..N`` (``j > i`` denoises, ``j < i`` inverts).
        kind: the output's prediction type (``"flow" | "eps" | "v" | "x0"``); default ``"flow"`` for rf grids and
            ``"eps"`` for vp grids.
    Returns:
        Latents at point ``j`` in ``promote_types(x.dtype, out.dtype)``.
    """
    kind = _default_kind(schedule, kind)
    if torch.isnan(out).any():
        raise FloatingPointError(
            f"the network output at point {i} contains NaNs; check the model dtype (fp16 overflows are common: "
            "try bfloat16 or float32) and the inputs"
        )
    dtype = torch.promote_types(x.dtype, out.dtype)
    if kind == "flow" and schedule.kind == "rf":
        sig = schedule.sigmas.to(out.device)  # type: ignore[union-attr]
        dt = sig[j] - sig[i]
        # diffusers upcasts to fp32 before the add; fp64 latents stay fp64 (exact-inversion tests need it)
        return (x.to(torch.promote_types(x.dtype, torch.float32)) + dt * out).to(dtype)
    a = schedule.a.to(out.device)
    s = schedule.s.to(out.device)
    x0, eps = to_x0_eps(out, x, a[i], s[i], kind=kind)  # type: ignore[arg-type]
    return (a[j] * x0 + s[j] * eps).to(dtype)


@dataclass
class Trajectory:
    """The latents an inversion visited: ``latents[i]`` is x at point ``i`` for ``end <= i <= N`` (else ``None``)."""

    latents: list[Tensor | None]
    schedule: Schedule
    nfe: int
    end: int = 0

    @property
    def noise(self) -> Tensor:
        """The noisiest latent reached (point ``end``)."""
        z = self.latents[self.end]
        assert z is not None
        return z


def _check_latents(x: Tensor, what: str) -> None:
    if not torch.is_floating_point(x):
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if torch.isnan(x).any():
        raise FloatingPointError(f"{what} contain NaNs; refusing to run the loop on them")


def _progress(it: range, enabled: bool, desc: str) -> Iterator[int] | range:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


def sample(
    predictor: Predictor,
    x: Tensor,
    schedule: Schedule,
    *,
    start: int = 0,
    end: int | None = None,
    callback: Callback | None = None,
    kind: str | None = None,
    progress: bool = False,
) -> Tensor:
    """Denoise ``x`` from point ``start`` to point ``end`` (default N).

    Args:
        predictor: ``(x, i) -> output`` at point ``i`` (guidance applied), e.g. :func:`flowcore.guidance.guided`.
        x: latents at point ``start``.
        callback: ``callback(i, x_next, out)`` after step ``i -> i+1``; a returned tensor replaces ``x_next``.
        kind: the predictor's output kind (default: ``predictor.kind`` if it has one, else by schedule kind).
        progress: show a tqdm bar.
    """
    end = schedule.num_steps if end is None else end
    if not 0 <= start <= end <= schedule.num_steps:
        raise ValueError(f"need 0 <= start ({start}) <= end ({end}) <= N ({schedule.num_steps})")
    _check_latents(x, "initial latents")
    kind = kind or getattr(predictor, "kind", None)
    with loop_context(schedule, "sample", kind):
        for i in _progress(range(start, end), progress, "sampling"):
            out = predictor(x, i)
            x_next = step(x, out, schedule, i, i + 1, kind=kind)
            if callback is not None:
                replaced = callback(i, x_next, out)
                if replaced is not None:
                    x_next = replaced
            x = x_next
    return x


def invert(
    predictor: Predictor,
    x0: Tensor,
    schedule: Schedule,
    *,
    end: int = 0,
    time_at: Literal["target", "source"] = "target",
    callback: Callback | None = None,
    kind: str | None = None,
    progress: bool = False,
) -> Trajectory:
    """Run the step backwards from point N (clean ``x0``) to point ``end``; N - end predictor calls.

    Args:
        time_at: which time labels the network call of step ``i+1 -> i``. ``"target"`` (Euler/DDIM inversion as
            used by directedit, null-text pivots and style-attr): the less noisy latent ``x_{i+1}`` is evaluated at
            point ``i``'s time. ``"source"``: at its own time, point ``i+1``.
        callback: ``callback(i, x_i, out)`` after each inversion step; a returned tensor replaces ``x_i``.
    Returns:
        A :class:`Trajectory` with ``latents[i]`` for ``end <= i <= N`` and ``nfe = N - end``.
    """
    n = schedule.num_steps
    if not 0 <= end <= n:
        raise ValueError(f"end must lie in 0..{n}, got {end}")
    if time_at not in ("target", "source"):
        raise ValueError(f"time_at must be 'target' or 'source', got {time_at!r}")
    _check_latents(x0, "clean latents")
    kind = kind or getattr(predictor, "kind", None)
    latents: list[Tensor | None] = [None] * (n + 1)
    latents[n] = x0
    x = x0
    with loop_context(schedule, "invert", kind):
        for i in _progress(range(n - 1, end - 1, -1), progress, "inverting"):
            out = predictor(x, i if time_at == "target" else i + 1)
            x_prev = step(x, out, schedule, i + 1, i, kind=kind)
            if callback is not None:
                replaced = callback(i, x_prev, out)
                if replaced is not None:
                    x_prev = replaced
            latents[i] = x_prev
            x = x_prev
    return Trajectory(latents=latents, schedule=schedule, nfe=n - end, end=end)
