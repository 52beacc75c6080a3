"""The attention-site processor that adds specedit's per-key bias (proportional attention, spec §2.5).

A flowcore :class:`~flowcore.attention.SiteProcessor` (bit-identical to the stock FLUX/Qwen processors) whose
:meth:`attend` adds ``key_bias`` — a ``(S,)`` float vector over the joint ``[text, image]`` keys set by the hook for
the duration of one mixed-resolution call — to the attention logits as a ``(1, 1, 1, S)`` additive mask. A boolean
mask already present (Qwen's text padding) is turned into ``0 / −inf`` first. With ``key_bias = None`` the stock
computation runs unchanged.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from flowcore.attention import AttnContext, SiteProcessor

__all__ = ["SpecEditProcessor"]


class SpecEditProcessor(SiteProcessor):
    """Shared by every site of one transformer; ``key_bias`` is set and cleared by the specedit hook."""

    def __init__(self) -> None:
        super().__init__()
        self.key_bias: Tensor | None = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> Tensor:
        bias = self.key_bias
        if bias is not None:
            if bias.shape[-1] != k.shape[1]:
                raise RuntimeError(f"specedit key bias covers {bias.shape[-1]} keys but the site has {k.shape[1]}")
            add = bias.to(device=q.device, dtype=q.dtype).view(1, 1, 1, -1)
            existing = ctx.attn_bias
            if existing is not None:
                if existing.dtype == torch.bool:
                    existing = torch.zeros(existing.shape, dtype=q.dtype, device=q.device).masked_fill(
                        ~existing, float("-inf"))
                add = existing.to(q.dtype) + add
            ctx = dataclasses.replace(ctx, attn_bias=add)
        return super().attend(q, k, v, ctx)
