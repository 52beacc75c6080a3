"""Guidance: classifier-free guidance, embedded guidance and weighted composition of prediction differences.

``cfg``, ``compose`` and ``gate`` are pure tensor maths; ``guided`` turns a :class:`~flowcore.adapters.FlowModel`
and its conditioning into a :data:`~flowcore.sampling.Predictor` that batches the CFG rows into one call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowcore.sampling import Predictor, current_loop

if TYPE_CHECKING:
    from flowcore.adapters import Conditioning, FlowModel
    from flowcore.schedules import Schedule

__all__ = ["cfg", "compose", "gate", "guided", "per_row"]


def per_row(value: float | Tensor, like: Tensor) -> Tensor | float:
    """Broadcast a scalar or a per-row ``(B,)`` scale against ``like`` ``(B, ...)``."""
    if isinstance(value, Tensor) and value.ndim == 1:
        if value.shape[0] != like.shape[0]:
            raise ValueError(f"per-row scale has {value.shape[0]} entries for {like.shape[0]} rows")
        return value.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))
    return value


def cfg(uncond: Tensor, cond: Tensor, scale: float | Tensor) -> Tensor:
    """Classifier-free guidance ``u + g·(c − u)``; ``scale`` may be a float or a per-row ``(B,)`` tensor."""
    if uncond.shape != cond.shape:
        raise ValueError(f"uncond {tuple(uncond.shape)} and cond {tuple(cond.shape)} rows differ in shape")
    return uncond + per_row(scale, cond) * (cond - uncond)


def compose(base: Tensor, terms: Sequence[tuple[float | Tensor, Tensor, Tensor]]) -> Tensor:
    """``base + Σ w·(pos − neg)``: several weighted prediction differences (style-attr's Eq. 3 for instance).

    Each term is ``(weight, pos, neg)``; weights may be per-row ``(B,)`` tensors.
    """
    out = base
    for w, pos, neg in terms:
        if pos.shape != base.shape or neg.shape != base.shape:
            raise ValueError("every composed term must have the base prediction's shape")
        out = out + per_row(w, base) * (pos - neg)
    return out


def gate(i: int, num_steps: int, start: float) -> bool:
    """True from step ``ceil(start·num_steps)`` on: the gate opens by sampling progress, never by sigma."""
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"gate start must lie in [0, 1], got {start}")
    return i >= math.ceil(start * num_steps - 1e-9)


def _double_rows(value: Any, n: int, uncond_value: Any = None) -> Any:
    """Rows for the batched [uncond, cond] call: tensors with ``n`` rows are repeated (or paired with
    ``uncond_value``), everything else is shared."""
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == n:
        first = value if uncond_value is None else uncond_value
        return torch.cat([first, value], dim=0)
    return value


def _double_control(control: Any, n: int) -> Any:
    if control is None:
        return None
    changes: dict[str, Any] = {}
    for field in ("image", "scale", "residual_gate"):
        val = getattr(control, field)
        if isinstance(val, Tensor) and val.ndim >= 1 and val.shape[0] == n:
            changes[field] = torch.cat([val, val], dim=0)
    rows = control.rows
    if isinstance(rows, Tensor):  # a (B,) bool mask or row indices
        changes["rows"] = torch.cat([rows, rows]) if rows.dtype == torch.bool else torch.cat([rows, rows + n])
    return dataclasses.replace(control, **changes) if changes else control


def guided(
    model: FlowModel,
    cond: Conditioning,
    *,
    uncond: Conditioning | None = None,
    scale: float | Tensor = 1.0,
    guidance: float | Tensor | None = None,
    schedule: Schedule | None = None,
    uncond_image_embeds: Tensor | None = None,
    **predict_kwargs: Any,
) -> Predictor:
    """A predictor ``(x, i) -> output`` for ``model`` with plain CFG in one batched call.

    Args:
        model: a :class:`~flowcore.adapters.FlowModel`.
        cond, uncond: conditioning rows (``uncond`` = the encoding of ``""`` rows); CFG runs when ``uncond`` is
            given and ``scale`` is not exactly 1 (``scale`` may be per row).
        guidance: the embedded guidance value (FLUX-dev / guidance-distilled models), per row allowed.
        schedule: the grid that maps point ``i`` to the network time; default: the running loop's
            (:func:`flowcore.sampling.current_loop`), so ``sample(guided(m, c), x, sched)`` just works.
        uncond_image_embeds: IP-Adapter embeds for the uncond rows (default zeros, as diffusers does).
        predict_kwargs: passed to ``model.predict`` (``control``, ``image_embeds``, ``reference``, ``ctx``...).
    """
    use_cfg = uncond is not None and not (isinstance(scale, (int, float)) and scale == 1.0)

    def predict(x: Tensor, i: int) -> Tensor:
        loop = current_loop()
        sched = schedule if schedule is not None else (loop.schedule if loop is not None else None)
        if sched is None:
            raise RuntimeError("guided(...) predictor called outside sample()/invert(): pass schedule=...")
        t = sched.t(i)
        kwargs = dict(predict_kwargs)
        kwargs["ctx"] = _call_context(kwargs.get("ctx"), i, sched, loop.phase if loop is not None else "sample")
        if not use_cfg:
            return model.predict(x, t, cond, guidance=guidance, **kwargs)
        n = x.shape[0]
        from flowcore.adapters import Conditioning

        both = Conditioning.cat([uncond, cond])  # type: ignore[list-item]
        if "image_embeds" in kwargs and kwargs["image_embeds"] is not None:
            emb = kwargs["image_embeds"]
            neg = uncond_image_embeds if uncond_image_embeds is not None else torch.zeros_like(emb)
            kwargs["image_embeds"] = _double_rows(emb, n, neg)
        if "control" in kwargs:
            kwargs["control"] = _double_control(kwargs["control"], n)
        if isinstance(kwargs.get("reference"), Tensor):  # per-row reference tokens serve both CFG rows
            kwargs["reference"] = _double_rows(kwargs["reference"], n)
        g = _double_rows(guidance, n) if isinstance(guidance, Tensor) else guidance
        out = model.predict(torch.cat([x, x]), t, both, guidance=g, **kwargs)
        out_u, out_c = out.chunk(2)
        return cfg(out_u, out_c, scale)

    predict.kind = model.prediction  # type: ignore[attr-defined]
    return predict


def _call_context(ctx: Any, i: int, schedule: Schedule, phase: str) -> Any:
    from flowcore.attention import CallContext

    if ctx is None:
        return CallContext(step=i, num_steps=schedule.num_steps, phase=phase)
    ctx.step, ctx.num_steps, ctx.phase = i, schedule.num_steps, phase
    return ctx
