"""The TTT operator in plain torch (spec §2.2), for every variant the config allows.

The default variant (``mlp2`` + ``mse``, one inner step) is also computed by flowkernels' ``ttt_attention``
(torch reference or fused Triton kernel); :class:`t5_linearize.modules.TTTAttention` dispatches there. This module
holds the readable maths for everything else (swiglu3, the dot loss, several inner steps, the linear-attention
ablation, the windowed-softmax hybrid) and the closed-form inner gradients the property tests pin.

Shapes: B batch, N tokens, H heads, d head dim, C = H·d (channel c = h·d + j). Token tensors are ``[B, N, H, d]``
unless stated; inner-model tensors are heads-first ``[B, H, N, d]``. Image segments are ``(start, h, w)`` row-major
grids inside the N rows; every other row is text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dwconv_residual",
    "dwconv_residual_scattered",
    "inner_forward",
    "inner_gradients",
    "inner_loss",
    "key_instance_norm",
    "linear_attention",
    "silu_grad",
    "stats_sets",
    "ttt_core",
    "window_attention",
]

Segments = Sequence[tuple[int, int, int]]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (the property tests); everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- step 2: key instance norm ----------------------------------------------------------------------------------
def stats_sets(n_rows: int, segments: Segments, stats: str, device: torch.device | None = None) -> tuple[int, Tensor]:
    """(number of statistics sets, set index of every row as a long tensor [N]).

    ``joint``: one set. ``per_segment``: set i for image segment i (in the given order), then one set holding
    every other (text) row, when there is any.
    """
    if stats == "joint" or not segments:
        return 1, torch.zeros(n_rows, dtype=torch.long, device=device)
    if stats != "per_segment":
        raise ValueError(f"key_norm_stats must be 'joint' or 'per_segment', got {stats!r}")
    row_set = torch.full((n_rows,), len(segments), dtype=torch.long, device=device)
    for index, (start, h, w) in enumerate(segments):
        row_set[start : start + h * w] = index
    has_text = bool((row_set == len(segments)).any())
    return len(segments) + int(has_text), row_set


def key_instance_norm(k: Tensor, segments: Segments = (), *, eps: float = 1.0, stats: str = "joint") -> Tensor:
    """k̂ = (k − μ)/sqrt(σ² + ε) per sample and channel over the token axis (biased variance, no affine).

    k: [B, N, H, d]. Statistics over all rows (``joint``) or per image segment and the text rows together
    (``per_segment``). Returns [B, N, H, d] in k's dtype.
    """
    B, N, H, d = k.shape
    flat = k.reshape(B, N, H * d)
    n_sets, row_set = stats_sets(N, segments, stats, k.device)
    if n_sets == 1:
        mean = flat.mean(dim=1, keepdim=True)
        var = (flat - mean).square().mean(dim=1, keepdim=True)
        return ((flat - mean) * torch.rsqrt(var + eps)).reshape(B, N, H, d)
    one_hot = F.one_hot(row_set, n_sets).to(flat.dtype)  # [N, S]
    counts = one_hot.sum(dim=0)  # [S]
    mean = torch.einsum("ns,bnc->bsc", one_hot, flat) / counts[:, None]
    centred = flat - mean[:, row_set]
    var = torch.einsum("ns,bnc->bsc", one_hot, centred.square()) / counts[:, None]
    return (centred * torch.rsqrt(var + eps)[:, row_set]).reshape(B, N, H, d)


# --- step 3: locality module -----------------------------------------------------------------------------------
def dwconv_residual(x: Tensor, segments: Segments, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x + DW(x) on every image segment (depthwise k×k conv with zero padding); other rows unchanged.

    x: [B, N, H, d]; weight: [C, 1, k, k]; bias: [C] or None. Each segment's rows are viewed as (C, h, w) in
    row-major order, so non-square grids work and the grid never comes from sqrt(N).
    """
    B, N, H, d = x.shape
    C = H * d
    flat = x.reshape(B, N, C)
    pad = weight.shape[-1] // 2
    w = weight.to(x.dtype)
    b = None if bias is None else bias.to(x.dtype)
    pieces, row = [], 0
    for start, h, w_ in sorted(segments):
        if start > row:
            pieces.append(flat[:, row:start])
        rows = flat[:, start : start + h * w_]
        grid = rows.transpose(1, 2).reshape(B, C, h, w_)
        conv = F.conv2d(grid, w, b, padding=pad, groups=C)
        pieces.append(rows + conv.reshape(B, C, h * w_).transpose(1, 2))
        row = start + h * w_
    if row < N:
        pieces.append(flat[:, row:])
    return torch.cat(pieces, dim=1).reshape(B, N, H, d)


def dwconv_residual_scattered(x: Tensor, start: int, cover: Tensor, canvas: tuple[int, int], weight: Tensor,
                              bias: Tensor | None) -> Tensor:
    """x + DW(x) for one segment of tokens that tile a fine canvas with squares of different sizes (specedit's
    mixed-resolution sequences: fine tokens cover one cell, coarse tokens a 2×2 block).

    ``cover``: [h·w] long, the segment-relative token that covers each canvas cell (row-major). The conv runs on
    the canvas filled with each token's value (a coarse token is repeated over its block, i.e. nearest
    upsampling) and every token gets the mean of DW over its cells; on a plain grid this is ``dwconv_residual``.
    x: [B, N, H, d] → [B, N, H, d].
    """
    B, N, H, d = x.shape
    C = H * d
    h, w = canvas
    flat = x.reshape(B, N, C)
    cover = cover.to(x.device)
    n = int(cover.max()) + 1
    rows = flat[:, start : start + n]
    grid = rows[:, cover].transpose(1, 2).reshape(B, C, h, w)
    conv = F.conv2d(grid, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                    padding=weight.shape[-1] // 2, groups=C).reshape(B, C, h * w).transpose(1, 2)
    counts = torch.bincount(cover, minlength=n).to(x.dtype)
    per_token = torch.zeros(B, n, C, dtype=x.dtype, device=x.device).index_add(1, cover, conv) / counts[:, None]
    out = torch.cat([flat[:, :start], rows + per_token, flat[:, start + n :]], dim=1)
    return out.reshape(B, N, H, d)


# --- steps 5-7: the inner model, its closed-form gradient, the read-out ----------------------------------------
def silu_grad(z: Tensor) -> Tensor:
    """SiLU'(z) = σ(z)(1 + z(1 − σ(z)))."""
    sig = torch.sigmoid(z)
    return sig * (1 + z * (1 - sig))


def inner_forward(u: Tensor, weights: Sequence[Tensor], inner: str) -> Tensor:
    """f_W(u). u: [B, H, M, d]; weights [B or 1, H, d, d] each. mlp2: SiLU(uW1)W2; swiglu3: (SiLU(uW1)⊙uW2)W3."""
    if inner == "mlp2":
        w1, w2 = weights
        return F.silu(u @ w1) @ w2
    if inner == "swiglu3":
        w1, w2, w3 = weights
        return (F.silu(u @ w1) * (u @ w2)) @ w3
    raise ValueError(f"unknown inner model {inner!r}; use 'mlp2' or 'swiglu3'")


def inner_loss(k: Tensor, v: Tensor, weights: Sequence[Tensor], inner: str, loss: str, scale: float) -> Tensor:
    """The inner loss per sample and head, [B, H]: mse (s/2N)Σ‖f(k_i) − v_i‖², dot −(s/N)Σ⟨f(k_i), v_i⟩."""
    n = k.shape[-2]
    y = inner_forward(k, weights, inner)
    if loss == "mse":
        return scale / (2 * n) * (y - v).square().sum(dim=(-1, -2))
    if loss == "dot":
        return -scale / n * (y * v).sum(dim=(-1, -2))
    raise ValueError(f"unknown inner loss {loss!r}; use 'mse' or 'dot'")


def inner_gradients(
    k: Tensor, v: Tensor, weights: Sequence[Tensor], inner: str, loss: str, scale: float
) -> tuple[Tensor, ...]:
    """Closed-form ∇_W of :func:`inner_loss` (no autograd inside), one tensor [B, H, d, d] per weight.

    k, v: [B, H, N, d]; weights: [B or 1, H, d, d]. With E = ∂L/∂Y (mse: (s/N)(Y − V); dot: −(s/N)V):
    mlp2: Z = KW1, A = SiLU(Z); G2 = AᵀE, G1 = Kᵀ[(EW2ᵀ) ⊙ SiLU'(Z)].
    swiglu3: Z1 = KW1, Z2 = KW2, Hd = SiLU(Z1) ⊙ Z2, R = EW3ᵀ; G3 = HdᵀE, G1 = Kᵀ[R ⊙ Z2 ⊙ SiLU'(Z1)],
    G2 = Kᵀ[R ⊙ SiLU(Z1)].
    """
    n = k.shape[-2]
    kt = k.transpose(-1, -2)
    if inner == "mlp2":
        w1, w2 = weights
        z = k @ w1
        a = F.silu(z)
        e = _output_grad(a @ w2, v, loss, scale, n)
        g2 = a.transpose(-1, -2) @ e
        g1 = kt @ ((e @ w2.transpose(-1, -2)) * silu_grad(z))
        return g1, g2
    if inner == "swiglu3":
        w1, w2, w3 = weights
        z1, z2 = k @ w1, k @ w2
        gate = F.silu(z1)
        hidden = gate * z2
        e = _output_grad(hidden @ w3, v, loss, scale, n)
        r = e @ w3.transpose(-1, -2)
        g3 = hidden.transpose(-1, -2) @ e
        g1 = kt @ (r * z2 * silu_grad(z1))
        g2 = kt @ (r * gate)
        return g1, g2, g3
    raise ValueError(f"unknown inner model {inner!r}; use 'mlp2' or 'swiglu3'")


def _output_grad(y: Tensor, v: Tensor, loss: str, scale: float, n: int) -> Tensor:
    if loss == "mse":
        return (scale / n) * (y - v)
    if loss == "dot":
        return (-scale / n) * v.expand_as(y)
    raise ValueError(f"unknown inner loss {loss!r}; use 'mse' or 'dot'")


def ttt_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    weights: Sequence[Tensor],
    *,
    inner: str = "mlp2",
    loss: str = "mse",
    scale: float,
    inner_lr: float = 1.0,
    inner_steps: int = 1,
    out_rows: tuple[int, int] | None = None,
    return_state: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, ...]]:
    """Steps 5–7 on prepared tensors: W' = W⁰ − η∇L (``inner_steps`` times), o = f_{W'}(q̃) on ``out_rows``.

    q, k, v: [B, N, H, d] (q̃, k̃ already normalised/convolved); weights: W⁰ [H, d, d] each (shared over the
    batch). Computed in the dtype of q (callers pass fp32 or fp64). Returns o [B, N_out, C] and, with
    ``return_state``, W' (one [B, H, d, d] tensor per weight).
    """
    B, N, H, d = q.shape
    dtype = q.dtype
    kh, vh = k.transpose(1, 2), v.transpose(1, 2)
    state = tuple(w.to(dtype)[None] for w in weights)
    for _ in range(inner_steps):
        grads = inner_gradients(kh, vh, state, inner, loss, scale)
        state = tuple(w - inner_lr * g for w, g in zip(state, grads))
    a, b = out_rows if out_rows is not None else (0, N)
    out = inner_forward(q[:, a:b].transpose(1, 2), state, inner)  # [B, H, N_out, d]
    out = out.transpose(1, 2).reshape(B, b - a, H * d)
    return (out, state) if return_state else out


# --- ablation and hybrid ----------------------------------------------------------------------------------------
def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, out_rows: tuple[int, int] | None = None) -> Tensor:
    """o_i = φ(q_i)ᵀS / (φ(q_i)ᵀz + 1e-6), S = Σ_j φ(k_j)v_jᵀ, z = Σ_j φ(k_j), φ = elu + 1. Returns [B, N_out, C]."""
    B, N, H, d = q.shape
    a, b = out_rows if out_rows is not None else (0, N)
    phi_q = F.elu(q[:, a:b].transpose(1, 2)) + 1
    phi_k = F.elu(k.transpose(1, 2)) + 1
    state = phi_k.transpose(-1, -2) @ v.transpose(1, 2)  # [B, H, d, d]
    norm = phi_k.sum(dim=-2, keepdim=True)  # [B, H, 1, d]
    out = (phi_q @ state) / ((phi_q * norm).sum(dim=-1, keepdim=True) + 1e-6)
    return out.transpose(1, 2).reshape(B, b - a, H * d)


def window_attention(q: Tensor, k: Tensor, v: Tensor, segments: Segments, *, window: int, scale: float) -> Tensor:
    """Softmax attention of every image query over the ``window``×``window`` neighbourhood of its own segment.

    q, k, v: [B, N, H, d]. Out-of-grid positions are masked (not zero-padded keys). Returns [B, N, C] with the
    windowed output on image rows and zeros on every other row.
    """
    B, N, H, d = q.shape
    C = H * d
    out = q.new_zeros(B, N, C)
    pad = window // 2
    for start, h, w in segments:
        rows = slice(start, start + h * w)
        L = h * w

        def unfold(x: Tensor, rows: slice = rows, h: int = h, w: int = w, L: int = L) -> Tensor:
            grid = x[:, rows].reshape(B, L, C).transpose(1, 2).reshape(B, C, h, w)
            cols = F.unfold(grid, kernel_size=window, padding=pad)  # [B, C·k², L]
            return cols.reshape(B, H, d, window * window, L).permute(0, 1, 4, 3, 2)  # [B, H, L, k², d]

        valid = F.unfold(q.new_ones(1, 1, h, w), kernel_size=window, padding=pad) > 0  # [1, k², L]
        qs = q[:, rows].transpose(1, 2)  # [B, H, L, d]
        logits = torch.einsum("bhld,bhlkd->bhlk", qs, unfold(k)) * scale
        logits = logits.masked_fill(~valid.transpose(1, 2)[:, None], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        seg_out = torch.einsum("bhlk,bhlkd->bhld", probs, unfold(v))
        out[:, rows] = seg_out.transpose(1, 2).reshape(B, L, C)
    return out
