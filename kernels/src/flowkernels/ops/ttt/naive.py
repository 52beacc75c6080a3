"""Plain-torch reference of the TTT attention operator (t5-linearize.md §2, kernels.md §3.2).

Readable, float64-capable and differentiable by ordinary autograd (the training path uses it).
Shapes: B batch, N rows, H heads, D head dim, C = H·D; channel c = h·D + j.

``compute_dtype`` selects the matmul operand dtype. Default: fp32 (fp64 for fp64 inputs) everywhere.
A low dtype (fp16/bf16) gives the *low-precision torch run* of the tolerance rule (kernels.md §7): every
matmul takes operands rounded to that dtype (W cast from its fp32 master) and returns a result in that dtype;
statistics, convs and element-wise maths stay in fp32, as in the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._segments import Segment, normalize_segments, split_rows, stats_layout


def elementwise_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def key_stats_reference(
    k: Tensor, segments: Sequence[Segment] = (), *, stats: str = "joint", eps: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and 1/sqrt(var + eps) of the keys over each statistics set.

    k: [B, N, H, D]. Returns (mean, rstd), each [B, n_sets, C] in fp32 (fp64 for fp64 input); the variance
    is biased. Sets: ``joint`` = all rows; ``per_segment`` = each image segment, then all text rows as one
    set (kernels.md §3.2).
    """
    B, N, H, D = k.shape
    segs = normalize_segments(segments, N)
    n_sets, row_set = stats_layout(N, segs, stats)
    kf = k.reshape(B, N, H * D).to(elementwise_dtype(k.dtype))
    set_of_row = torch.tensor(row_set, device=k.device)
    means, rstds = [], []
    for s in range(n_sets):
        rows = kf[:, set_of_row == s] if n_sets > 1 else kf
        mean = rows.mean(dim=1)
        var = (rows - mean[:, None]).square().mean(dim=1)
        means.append(mean)
        rstds.append(torch.rsqrt(var + eps))
    return torch.stack(means, dim=1), torch.stack(rstds, dim=1)


def normalize_keys_reference(
    k: Tensor, mean: Tensor, rstd: Tensor, segments: Sequence[Segment] = (), *, stats: str = "joint"
) -> Tensor:
    """k̂ = (k − μ_set(row))·rstd_set(row). k: [B, N, H, D]; mean, rstd: [B, n_sets, C]. Returns [B, N, H, D]."""
    B, N, H, D = k.shape
    n_sets, row_set = stats_layout(N, normalize_segments(segments, N), stats)
    kf = k.reshape(B, N, H * D).to(mean.dtype)
    if n_sets == 1:
        return ((kf - mean[:, :1]) * rstd[:, :1]).reshape(B, N, H, D)
    index = torch.tensor(row_set, device=k.device)
    return ((kf - mean[:, index]) * rstd[:, index]).reshape(B, N, H, D)


def dwconv_residual_reference(x: Tensor, segments: Sequence[Segment], weight: Tensor, bias: Tensor) -> Tensor:
    """x + DW(x) on every image segment (depthwise 3×3, zero padding, bias); text rows unchanged.

    x: [B, N, H, D]; weight: [C, 1, 3, 3]; bias: [C]. Each segment is viewed as (C, h, w) row-major, so
    non-square grids work. Returns a new tensor [B, N, H, D] in x's dtype.
    """
    B, N, H, D = x.shape
    C = H * D
    segs = normalize_segments(segments, N)
    flat = x.reshape(B, N, C)
    w = weight.to(x.dtype)
    b = bias.to(x.dtype)
    pieces = []
    for rng in split_rows(segs, 0, N):
        rows = flat[:, rng.start : rng.end]
        if rng.segment >= 0:
            seg = segs[rng.segment]
            grid = rows.transpose(1, 2).reshape(B, C, seg.h, seg.w)
            conv = F.conv2d(grid, w, b, padding=1, groups=C)
            rows = rows + conv.reshape(B, C, seg.h * seg.w).transpose(1, 2)
        pieces.append(rows)
    return torch.cat(pieces, dim=1).reshape(B, N, H, D)


def _matmul(a: Tensor, b: Tensor, compute_dtype: torch.dtype, out_dtype: torch.dtype) -> Tensor:
    return torch.matmul(a.to(compute_dtype), b.to(compute_dtype)).to(out_dtype)


def silu_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
    """SiLU(z) and SiLU'(z) = σ(z)(1 + z(1 − σ(z)))."""
    sig = torch.sigmoid(z)
    return z * sig, sig * (1 + z * (1 - sig))


def inner_step_reference(
    k_tilde: Tensor,
    v: Tensor,
    w1: Tensor,
    w2: Tensor,
    *,
    scale: float,
    inner_lr: float = 1.0,
    compute_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """One full-batch gradient step of the inner MLP f(u) = SiLU(u W1) W2 on L = (s/2N) Σ‖f(k̃_i) − v_i‖².

    k_tilde, v: [B, H, N, D] (heads first); w1, w2: [H, D, D]. Returns W1', W2' [B, H, D, D] in the element
    dtype (fp32, or fp64 for fp64 inputs). Closed form (see README.md): with R = Y − V,
    G2 = (s/N)·AᵀR, G1 = (s/N)·K̃ᵀ[(R W2ᵀ) ⊙ SiLU'(Z)]; the factor s/N is applied after the matmuls (the
    kernel does the same, so that fp16 operands never hold the tiny values (s/N)·R).
    """
    elem = elementwise_dtype(k_tilde.dtype)
    mm = compute_dtype or elem
    N = k_tilde.shape[-2]
    W1 = w1.to(elem)[None]
    W2 = w2.to(elem)[None]
    z = _matmul(k_tilde, W1, mm, elem)
    a, dsilu = silu_and_grad(z)
    residual = _matmul(a, W2, mm, elem) - v.to(elem)
    factor = inner_lr * scale / N
    g2 = _matmul(a.transpose(-1, -2), residual, mm, elem)
    p = _matmul(residual, W2.transpose(-1, -2), mm, elem) * dsilu
    g1 = _matmul(k_tilde.transpose(-1, -2), p, mm, elem)
    return W1 - factor * g1, W2 - factor * g2


def ttt_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    w1: Tensor,
    w2: Tensor,
    *,
    segments: Sequence[Segment] = (),
    key_norm: bool = True,
    key_norm_eps: float = 1.0,
    key_norm_stats: str = "joint",
    q_conv: tuple[Tensor, Tensor] | None = None,
    k_conv: tuple[Tensor, Tensor] | None = None,
    scale: float | None = None,
    inner_lr: float = 1.0,
    out_rows: tuple[int, int] | None = None,
    compute_dtype: torch.dtype | None = None,
    return_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """TTT attention forward in plain torch (kernels.md §3.2).

    q, k, v: [B, N, H, D]; w1, w2: [H, D, D]; convs: (weight [C, 1, 3, 3], bias [C]).
    Returns o [B, N_out, C] in q.dtype (rows ``out_rows``, default all), plus W1', W2' [B, H, D, D]
    (fp32, fp64 for fp64 inputs) with ``return_state``.
    """
    B, N, H, D = q.shape
    segs = normalize_segments(segments, N)
    elem = elementwise_dtype(q.dtype)
    kf = k.to(elem)
    if key_norm:
        mean, rstd = key_stats_reference(kf, segs, stats=key_norm_stats, eps=key_norm_eps)
        kf = normalize_keys_reference(kf, mean, rstd, segs, stats=key_norm_stats)
    if k_conv is not None:
        kf = dwconv_residual_reference(kf, segs, *k_conv)
    qf = q.to(elem)
    if q_conv is not None:
        qf = dwconv_residual_reference(qf, segs, *q_conv)
    s = float(scale) if scale is not None else D**-0.5
    w1p, w2p = inner_step_reference(
        kf.transpose(1, 2), v.transpose(1, 2), w1, w2, scale=s, inner_lr=inner_lr, compute_dtype=compute_dtype
    )
    a, b = out_rows if out_rows is not None else (0, N)
    mm = compute_dtype or elem
    z = _matmul(qf[:, a:b].transpose(1, 2), w1p, mm, elem)
    o = _matmul(F.silu(z), w2p, mm, elem)  # [B, H, N_out, D]
    o = o.transpose(1, 2).reshape(B, b - a, H * D).to(q.dtype)
    return (o, w1p, w2p) if return_state else o
