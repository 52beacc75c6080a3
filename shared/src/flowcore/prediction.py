"""Convert any network output into ``(x0_hat, eps_hat)`` on a Gaussian path ``x = a·x0 + s·eps``.

Kinds:
* ``"flow"``: rectified-flow velocity ``v = eps - x0`` (with ``a = 1 - s``);
* ``"eps"``: the noise;
* ``"v"``: VP v-prediction ``v = a·eps - s·x0`` (with ``a² + s² = 1``);
* ``"x0"``: the clean sample.

The formulas use the same operations as diffusers' DDIM step, so the universal step built on them reproduces it
bit for bit.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

__all__ = ["PREDICTION_KINDS", "to_x0_eps"]

PREDICTION_KINDS = ("flow", "eps", "v", "x0")


def to_x0_eps(
    out: Tensor,
    x: Tensor,
    a: Tensor | float,
    s: Tensor | float,
    *,
    kind: Literal["flow", "eps", "v", "x0"],
) -> tuple[Tensor, Tensor]:
    """``(x0_hat, eps_hat)`` from the network output ``out`` at the point ``x = a·x0 + s·eps``.

    Args:
        out, x: tensors of the same shape (any layout: (B,C,H,W) latents or (B,T,C) packed tokens).
        a, s: the path coefficients at the time the output refers to (scalars or tensors broadcastable to x).
        kind: the network's prediction type.
    """
    if out.shape != x.shape:
        raise ValueError(f"network output {tuple(out.shape)} and latents {tuple(x.shape)} must have the same shape")
    if kind == "flow":
        return x - s * out, x + a * out
    if kind == "eps":
        return (x - s * out) / a, out
    if kind == "v":
        return a * x - s * out, a * out + s * x
    if kind == "x0":
        return out, (x - a * out) / s
    raise ValueError(f"unknown prediction kind {kind!r}; use one of {PREDICTION_KINDS}")
