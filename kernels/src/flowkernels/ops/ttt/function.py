"""Public entry points of TTT attention: validation, dispatch, and the inference-only grad contract."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ..._backend import record_backend, select_backend
from ..._segments import Segment, check_stats_mode, normalize_segments
from . import naive

OP_NAME = "TTT"


def ttt_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    w1: Tensor,
    w2: Tensor,
    *,
    segments: Sequence[Segment] = (),
    key_norm: bool = True,
    key_norm_eps: float = 1.0,
    key_norm_stats: Literal["joint", "per_segment"] = "joint",
    q_conv: tuple[Tensor, Tensor] | None = None,
    k_conv: tuple[Tensor, Tensor] | None = None,
    scale: float | None = None,
    inner_lr: float = 1.0,
    out_rows: tuple[int, int] | None = None,
    n_split: int | None = None,
    fuse_conv: bool | None = None,
    backend: Literal["auto", "triton", "torch"] | None = None,
    return_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Bidirectional TTT attention: one full-batch gradient step of a 2-layer MLP, read out at the queries.

    Per sample b and head h (t5-linearize.md §2): k̂ = key instance norm of k (stats over ``key_norm_stats``
    sets, ε = ``key_norm_eps``); q̃ = q + DW_q(q), k̃ = k̂ + DW_k(k̂) on image segments (3×3 depthwise,
    zero padding, text rows unchanged); W' = W − η∇L with L = (s/2N)Σ‖SiLU(k̃W1)W2 − v‖²; o = SiLU(q̃W1')W2'.

    Args:
        q, k, v: [B, N, H, D], one dtype (fp16/bf16/fp32 for the kernel; fp64 on torch), any strides.
        w1, w2: [H, D, D] initial fast weights (fp32 masters; shared over the batch).
        segments: image segments ``Segment(start, h, w)`` (row-major grids); other rows are text.
        q_conv, k_conv: depthwise weight [C, 1, 3, 3] and bias [C], or None (C = H·D, channel c = h·D + j).
        scale: s, default D^-1/2. inner_lr: η.
        out_rows: read out rows [a, b) only (the update always uses all N rows).
        n_split: row ranges of the Triton update pass (None: ≈ 4 waves); results do not depend on it
            beyond fp32 rounding.
        fuse_conv: Triton only; None/True builds q̃, k̃ inside the tiles, False materialises them first.
        backend: "auto" (Triton for CUDA tensors without grad), "torch", "triton"; None reads
            $FLOWKERNELS_BACKEND. The choice is recorded in ``flowkernels.last_backend()``.
        return_state: also return W1', W2'.

    Returns:
        o [B, N_out, C] contiguous in q.dtype; with ``return_state`` also W1', W2' [B, H, D, D] fp32
        (fp64 for fp64 inputs on torch).

    The Triton kernel is forward-only: with ``backend="auto"`` inputs that require grad take the torch
    reference (differentiable); ``backend="triton"`` raises ``NotImplementedError`` for them.
    """
    _, N, H, D = _check_qkv(q, k, v)
    _check_weights(w1, w2, H, D)
    segs = normalize_segments(segments, N)
    check_stats_mode(key_norm_stats)
    for name, conv in (("q_conv", q_conv), ("k_conv", k_conv)):
        _check_conv(name, conv, H * D)
    rows = _check_out_rows(out_rows, N)
    if key_norm and not key_norm_eps > 0:
        raise ValueError(f"key_norm_eps must be > 0, got {key_norm_eps}")
    if n_split is not None and n_split < 1:
        raise ValueError(f"n_split must be >= 1 or None, got {n_split}")
    s = float(scale) if scale is not None else D**-0.5
    if not (math.isfinite(s) and math.isfinite(inner_lr)):
        raise ValueError(f"scale and inner_lr must be finite, got {s} and {inner_lr}")

    params = [w1, w2, *(t for c in (q_conv, k_conv) if c is not None for t in c)]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *params))
    chosen = select_backend(
        OP_NAME, (q, k, v), backend=backend, requires_grad=needs_grad, grad_supported=False, head_dim=D
    )
    record_backend(chosen)
    if chosen == "torch":
        return naive.ttt_attention_reference(
            q, k, v, w1, w2, segments=segs, key_norm=key_norm, key_norm_eps=key_norm_eps,
            key_norm_stats=key_norm_stats, q_conv=q_conv, k_conv=k_conv, scale=s, inner_lr=inner_lr,
            out_rows=rows, return_state=return_state,
        )  # fmt: skip
    o, w1p, w2p = _triton_forward(
        q, k, v, w1, w2, segs, key_norm, key_norm_eps, key_norm_stats, q_conv, k_conv, s, inner_lr, rows,
        n_split, fuse_conv,
    )  # fmt: skip
    return (o, w1p, w2p) if return_state else o


Conv = tuple[Tensor, Tensor] | None


def _triton_forward(
    q: Tensor, k: Tensor, v: Tensor, w1: Tensor, w2: Tensor, segs: tuple[Segment, ...], key_norm: bool,
    eps: float, stats_mode: str, q_conv: Conv, k_conv: Conv, s: float, inner_lr: float, rows: tuple[int, int],
    n_split: int | None, fuse_conv: bool | None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Fused: stats kernel, then norm and convs inside the TTT tiles. Unfused: k̃, q̃ materialised by torch."""
    from . import triton_fwd  # imported lazily: the kernels are decorated on first use

    fuse = True if fuse_conv is None else bool(fuse_conv)
    if fuse:
        stats = triton_fwd.key_stats_triton(k, segs, stats=stats_mode, eps=eps) if key_norm else None
        k_in, kc, qc = k, k_conv, q_conv
        q_in = q
    else:
        stats = None
        k_in = _materialize_keys(k, segs, key_norm, eps, stats_mode, k_conv)
        q_in = q if q_conv is None else naive.dwconv_residual_reference(q.float(), segs, *q_conv).to(q.dtype)
        kc = qc = None
    return triton_fwd.ttt_forward_triton(
        q_in, k_in, v, w1, w2, segments=segs, stats=stats, key_norm_stats=stats_mode, q_conv=qc, k_conv=kc,
        scale=s, inner_lr=inner_lr, out_rows=rows, n_split=n_split,
    )  # fmt: skip


def _materialize_keys(
    k: Tensor, segs: tuple[Segment, ...], key_norm: bool, eps: float, stats_mode: str, k_conv: Conv
) -> Tensor:
    """k̃ in fp32 maths, stored in k's dtype (the unfused path: the kernel then reads k̃ as given)."""
    if not key_norm and k_conv is None:
        return k
    kf = k.float()
    if key_norm:
        mean, rstd = naive.key_stats_reference(kf, segs, stats=stats_mode, eps=eps)
        kf = naive.normalize_keys_reference(kf, mean, rstd, segs, stats=stats_mode)
    if k_conv is not None:
        kf = naive.dwconv_residual_reference(kf, segs, *k_conv)
    return kf.to(k.dtype)


def key_stats(
    k: Tensor,
    *,
    segments: Sequence[Segment] = (),
    stats: Literal["joint", "per_segment"] = "joint",
    eps: float = 1.0,
    backend: Literal["auto", "triton", "torch"] | None = None,
) -> tuple[Tensor, Tensor]:
    """Key instance-norm statistics: per-sample, per-channel mean and 1/sqrt(var + eps) (biased variance).

    k: [B, N, H, D], any strides. Returns (mean, rstd), each [B, n_sets, C] fp32 (fp64 for fp64 on torch).
    Sets: ``joint`` → one set of all rows; ``per_segment`` → set i = image segment i (sorted by start), then
    one set of all text rows if there are any. Forward-only on Triton (like ``ttt_attention``).
    """
    if k.dim() != 4:
        raise ValueError(f"k must be [B, N, H, D], got shape {tuple(k.shape)}")
    segs = normalize_segments(segments, k.shape[1])
    check_stats_mode(stats)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    needs_grad = torch.is_grad_enabled() and k.requires_grad
    chosen = select_backend(
        "key stats", (k,), backend=backend, requires_grad=needs_grad, grad_supported=False, head_dim=k.shape[3]
    )
    record_backend(chosen)
    if chosen == "torch":
        return naive.key_stats_reference(k, segs, stats=stats, eps=eps)
    from . import triton_fwd

    return triton_fwd.key_stats_triton(k, segs, stats=stats, eps=eps)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> tuple[int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a [B, N, H, D] tensor, got {getattr(t, 'shape', type(t))}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k, v must share the shape [B, N, H, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, N, H, D = q.shape
    if min(B, N, H, D) < 1:
        raise ValueError(f"q, k, v must be non-empty, got shape {tuple(q.shape)}")
    return B, N, H, D


def _check_weights(w1: Tensor, w2: Tensor, H: int, D: int) -> None:
    for name, w in (("w1", w1), ("w2", w2)):
        if tuple(w.shape) != (H, D, D):
            raise ValueError(f"{name} must be [H, D, D] = [{H}, {D}, {D}] (per-head fast weights), got {tuple(w.shape)}")


def _check_conv(name: str, conv: tuple[Tensor, Tensor] | None, C: int) -> None:
    if conv is None:
        return
    try:
        weight, bias = conv
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a (weight [C, 1, 3, 3], bias [C]) pair") from exc
    if tuple(weight.shape) != (C, 1, 3, 3) or tuple(bias.shape) != (C,):
        raise ValueError(
            f"{name} must be (weight [{C}, 1, 3, 3], bias [{C}]) (depthwise 3×3 over C = H·D channels), "
            f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )


def _check_out_rows(out_rows: tuple[int, int] | None, N: int) -> tuple[int, int]:
    if out_rows is None:
        return (0, N)
    a, b = (int(x) for x in out_rows)
    if not 0 <= a < b <= N:
        raise ValueError(f"out_rows must be [a, b) with 0 <= a < b <= N = {N}, got {tuple(out_rows)}")
    return a, b
