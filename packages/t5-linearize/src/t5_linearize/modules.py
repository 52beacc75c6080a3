"""``TTTAttention``: the new parameters of one attention site and the operator that uses them (spec §2.2)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from t5_linearize import operator as ops
from t5_linearize.config import LinearizeConfig

__all__ = ["TTTAttention", "new_parameter_count"]

RopeFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def new_parameter_count(config: LinearizeConfig, heads: int, head_dim: int) -> int:
    """New parameters of one site (spec §2.3): 2·H·d² (3·H·d² for swiglu3) fast weights + 2·(k²C + C) for the
    two depthwise convs + 4C for the q/k affine. ``operator="linear"`` has no fast weights; ``"softmax"`` none."""
    if config.operator == "softmax":
        return 0
    C = heads * head_dim
    count = 0
    if config.operator == "ttt":
        count += (3 if config.inner == "swiglu3" else 2) * heads * head_dim * head_dim
    if config.locality:
        count += 2 * (config.conv_kernel**2 * C + C)
    if config.qk_affine:
        count += 4 * C
    return count


class TTTAttention(nn.Module):
    """The TTT layer of one site: fast-weight inits W⁰ (``w1, w2[, w3]``, [H, d, d] each), locality convs
    (``q_conv``, ``k_conv``: depthwise, C channels) and the optional q/k affine (``q_scale`` … ``k_shift``, [C]).

    ``forward(q, k, v, segments)`` maps the projected, RMS-normed q, k, v ([B, N, H, d]) to the attention output
    [B, N_out, C] before the inherited output projection. The maths runs in fp32 (fp64 for fp64 inputs) with
    autocast disabled; the result has q's dtype.
    """

    def __init__(self, heads: int, head_dim: int, config: LinearizeConfig, *, device=None, dtype=None):
        super().__init__()
        if config.operator == "softmax":
            raise ValueError("operator='softmax' has no TTT layer; the processor keeps the stock attention")
        self.heads, self.head_dim, self.config = heads, head_dim, config
        C = heads * head_dim
        factory = {"device": device, "dtype": dtype}
        if config.operator == "ttt":
            n_weights = 3 if config.inner == "swiglu3" else 2
            for index in range(1, n_weights + 1):
                setattr(self, f"w{index}", nn.Parameter(torch.empty(heads, head_dim, head_dim, **factory)))
        if config.locality:
            kernel = config.conv_kernel
            self.q_conv = nn.Conv2d(C, C, kernel, padding=kernel // 2, groups=C, bias=True, **factory)
            self.k_conv = nn.Conv2d(C, C, kernel, padding=kernel // 2, groups=C, bias=True, **factory)
        if config.qk_affine:
            for name in ("q_scale", "q_shift", "k_scale", "k_shift"):
                setattr(self, name, nn.Parameter(torch.empty(C, **factory)))
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    @property
    def fast_weights(self) -> tuple[Tensor, ...]:
        if self.config.operator != "ttt":
            return ()
        return (self.w1, self.w2, self.w3) if self.config.inner == "swiglu3" else (self.w1, self.w2)

    @property
    def scale(self) -> float:
        return self.config.scale if self.config.scale is not None else self.head_dim**-0.5

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """W⁰ ~ N(0, fast_init_std²) (trunc_normal_ at ±2, effectively untruncated); convs zero (identity) or
        PyTorch's default; affine a = 1, b = 0. Draws come from ``generator`` (global RNG when None)."""
        cfg = self.config
        for w in self.fast_weights:
            nn.init.trunc_normal_(w, std=cfg.fast_init_std, generator=generator)
        if cfg.locality:
            for conv in (self.q_conv, self.k_conv):
                if cfg.conv_init == "zero":
                    nn.init.zeros_(conv.weight)
                    nn.init.zeros_(conv.bias)
                else:  # nn.Conv2d.reset_parameters, with our generator
                    nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=generator)
                    fan_in = conv.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in)
                    nn.init.uniform_(conv.bias, -bound, bound, generator=generator)
        if cfg.qk_affine:
            nn.init.ones_(self.q_scale)
            nn.init.zeros_(self.q_shift)
            nn.init.ones_(self.k_scale)
            nn.init.zeros_(self.k_shift)

    # --- forward -----------------------------------------------------------------------------------------------
    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        segments: Sequence[tuple[int, int, int]] = (),
        *,
        rope: RopeFn | None = None,
        out_rows: tuple[int, int] | None = None,
        backend: str | None = None,
        return_state: bool = False,
        scattered: Sequence[Any] = (),
    ) -> Tensor | tuple[Tensor, tuple[Tensor, ...]]:
        """q, k, v: [B, N, H, d]; ``segments``: image grids ``(start, h, w)`` (other rows are text); ``rope``: a
        function applied to (q̃, k̃) after the locality module (FLUX); ``out_rows``: read out rows [a, b) only;
        ``scattered``: grid-less image segments that tile a canvas (``layouts.ScatteredSegment``), convolved there.
        Returns [B, N_out, C] in q's dtype; with ``return_state`` also the updated fast weights W' (one
        [B, H, d, d] fp32 tensor per weight; empty for ``operator="linear"``)."""
        cfg = self.config
        backend = backend or cfg.backend
        if backend == "triton" and not cfg.kernel_compatible:
            raise ValueError(f"backend='triton' does not cover this config ({cfg.describe()}); use 'torch' or 'auto'")
        out_dtype = q.dtype
        with torch.autocast(q.device.type, enabled=False):
            q, k = self._affine(q, k)
            raw_q, raw_k = q, k
            if cfg.kernel_compatible and rope is None and not scattered:
                out, state = self._fused(q, k, v, segments, out_rows, backend, prepared=False)
            else:
                qt, kt = self.prepare(q, k, segments, scattered)
                if rope is not None:
                    qt, kt = rope(qt, kt)
                if cfg.kernel_compatible:
                    if qt.is_cuda:  # the kernel reads bf16/fp16 operands; the stats and conv were fp32
                        qt, kt = qt.to(v.dtype), kt.to(v.dtype)
                    out, state = self._fused(qt, kt, v, segments, out_rows, backend, prepared=True)
                else:
                    out, state = self._torch(qt, kt, v, out_rows)
            if cfg.local_attn == "window" and segments:
                out = self._mix_window(out, raw_q, raw_k, v, segments, out_rows)
        out = out.to(out_dtype)
        return (out, state) if return_state else out

    def _affine(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        if not self.config.qk_affine:
            return q, k
        shape = (self.heads, self.head_dim)
        return (q * self.q_scale.view(shape) + self.q_shift.view(shape),
                k * self.k_scale.view(shape) + self.k_shift.view(shape))

    def prepare(self, q: Tensor, k: Tensor, segments: Sequence[tuple[int, int, int]],
                scattered: Sequence[Any] = ()) -> tuple[Tensor, Tensor]:
        """Steps 2–3 in torch: q̃ = q + DW_q(q), k̃ = k̂ + DW_k(k̂) with k̂ the key instance norm (compute dtype);
        ``scattered`` segments are convolved on the canvas their tokens tile."""
        cfg = self.config
        dtype = ops.compute_dtype(q.dtype)
        q, k = q.to(dtype), k.to(dtype)
        if cfg.key_norm:
            k = ops.key_instance_norm(k, segments, eps=cfg.key_norm_eps, stats=cfg.key_norm_stats)
        if cfg.locality and segments:
            q = ops.dwconv_residual(q, segments, self.q_conv.weight, self.q_conv.bias)
            k = ops.dwconv_residual(k, segments, self.k_conv.weight, self.k_conv.bias)
        for seg in scattered if cfg.locality else ():
            q = ops.dwconv_residual_scattered(q, seg.start, seg.cover, seg.canvas, self.q_conv.weight, self.q_conv.bias)
            k = ops.dwconv_residual_scattered(k, seg.start, seg.cover, seg.canvas, self.k_conv.weight, self.k_conv.bias)
        return q, k

    def _torch(self, qt: Tensor, kt: Tensor, v: Tensor, out_rows: tuple[int, int] | None
               ) -> tuple[Tensor, tuple[Tensor, ...]]:
        cfg = self.config
        v = v.to(qt.dtype)
        if cfg.operator == "linear":
            return ops.linear_attention(qt, kt, v, out_rows=out_rows), ()
        return ops.ttt_core(qt, kt, v, self.fast_weights, inner=cfg.inner, loss=cfg.resolved_inner_loss,  # type: ignore[return-value]
                            scale=self.scale, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, out_rows=out_rows,
                            return_state=True)

    def _fused(self, q, k, v, segments, out_rows, backend, *, prepared: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
        """flowkernels' operator (torch reference or Triton kernel); ``prepared``: q, k are already q̃, k̃."""
        from flowkernels import Segment, ttt_attention

        cfg = self.config
        use_norm = cfg.key_norm and not prepared
        convs = cfg.locality and not prepared
        if v.dtype != q.dtype:
            v = v.to(q.dtype)
        out, w1, w2 = ttt_attention(
            q, k, v, self.w1, self.w2, segments=[Segment(*s) for s in segments], key_norm=use_norm,
            key_norm_eps=cfg.key_norm_eps, key_norm_stats=cfg.key_norm_stats,
            q_conv=(self.q_conv.weight, self.q_conv.bias) if convs else None,
            k_conv=(self.k_conv.weight, self.k_conv.bias) if convs else None,
            scale=self.scale, inner_lr=cfg.inner_lr, out_rows=out_rows, return_state=True,
            backend=None if backend == "auto" else backend,  # None: flowkernels reads $FLOWKERNELS_BACKEND, then auto
        )
        return out, (w1, w2)

    def _mix_window(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, segments, out_rows) -> Tensor:
        """o ← (1 − m)·o + m·window-softmax(q, k, v) on image rows (q, k before the key norm and conv)."""
        cfg = self.config
        dtype = out.dtype if out.dtype == torch.float64 else torch.float32
        local = ops.window_attention(q.to(dtype), k.to(dtype), v.to(dtype), segments, window=cfg.local_window,
                                     scale=self.scale)
        N = q.shape[1]
        is_image = torch.zeros(N, dtype=torch.bool, device=q.device)
        for start, h, w in segments:
            is_image[start : start + h * w] = True
        a, b = out_rows if out_rows is not None else (0, N)
        mixed = (1 - cfg.local_mix) * out.to(dtype) + cfg.local_mix * local[:, a:b]
        return torch.where(is_image[a:b, None], mixed, out.to(dtype))

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"heads={self.heads}, head_dim={self.head_dim}, operator={cfg.operator}, inner={cfg.inner}, "
                f"loss={cfg.resolved_inner_loss}, key_norm={cfg.key_norm}, locality={cfg.locality}")
