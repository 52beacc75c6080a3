"""TTT attention processors: flowcore ``SiteProcessor`` subclasses that swap the operator (spec §4.2).

The projections, RMS q/k norms, stream concatenation and RoPE plumbing are flowcore's (bit-identical to the stock
diffusers processors); :meth:`attend` replaces softmax attention by :class:`~t5_linearize.modules.TTTAttention`.
The token layout arrives as the named keyword ``ttt_layout`` (the linearized model classes build it in their
``forward``); ``ttt_backend`` overrides the config's backend for one call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor, nn

from flowcore.attention import AttnContext, CallContext, SiteInfo, SiteProcessor
from flowcore.layout import TokenLayout
from t5_linearize.config import LinearizeConfig
from t5_linearize.modules import TTTAttention

__all__ = ["TTTFluxAttnProcessor", "TTTJointAttnProcessor", "processor_for"]


class _TTTSiteProcessor(SiteProcessor):
    """Shared plumbing: holds the site's :class:`TTTAttention` (``self.ttt``; ``None`` for ``operator="softmax"``,
    which keeps flowcore's stock attention) and the per-call layout/backend."""

    def __init__(self, site: SiteInfo, config: LinearizeConfig):
        super().__init__()
        self.site = site
        self.config = config
        self.ttt: TTTAttention | None = None
        if config.operator != "softmax":
            self.ttt = TTTAttention(site.heads, site.head_dim, config)
        self._backend: str | None = None

    def __call__(  # type: ignore[override]
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_rotary_emb: Any = None,
        *,
        encoder_hidden_states_mask: Tensor | None = None,
        temb: Tensor | None = None,
        ip_adapter_masks: Any = None,
        flowcore_ctx: CallContext | None = None,
        ttt_layout: TokenLayout | None = None,
        ttt_backend: str | None = None,
    ) -> Any:
        layout = ttt_layout if ttt_layout is not None else getattr(flowcore_ctx, "layout", None)
        if self.ttt is not None and layout is None:
            raise ValueError(
                f"{self.site.name}: TTT attention needs the token layout (image grid and text rows). Call the "
                "linearized model's forward (T5SD3Transformer2DModel / T5FluxTransformer2DModel build it), or pass "
                "joint_attention_kwargs={'ttt_layout': flowcore.layout.TokenLayout...}"
            )
        if ttt_backend not in (None, "auto", "torch", "triton"):
            raise ValueError(f"ttt_backend must be 'auto', 'torch', 'triton' or None, got {ttt_backend!r}")
        call = dataclasses.replace(flowcore_ctx, layout=layout) if flowcore_ctx is not None else \
            CallContext(layout=layout)
        self._backend = ttt_backend
        try:
            return self._dispatch(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                                  encoder_hidden_states_mask, temb, ip_adapter_masks, call)
        finally:
            self._backend = None

    def _dispatch(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                  encoder_hidden_states_mask, temb, ip_adapter_masks, call) -> Any:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                                encoder_hidden_states_mask=encoder_hidden_states_mask, temb=temb,
                                ip_adapter_masks=ip_adapter_masks, flowcore_ctx=call)

    # helpers ---------------------------------------------------------------------------------------------------
    def _layout(self, ctx: AttnContext, n_rows: int) -> TokenLayout:
        """The call's layout restricted to what this site sees; raises when it does not cover ``n_rows``."""
        layout = ctx.call.layout if ctx.call is not None else None
        if layout is None:
            raise ValueError(f"{self.site.name}: no token layout reached the processor")
        if self.site.kind == "sd3_attn2":
            layout = layout.image_only()
        if layout.total != n_rows:
            grids = [s.grid for s in layout.segments if s.grid is not None]
            raise ValueError(
                f"{self.site.name}: the token layout covers {layout.total} rows (image grids {grids}, text "
                f"{sum(s.length for s in layout.find('text'))}) but the attention sequence has {n_rows} rows; "
                "the grid (h, w) must match the image token count (pass the true grid in ttt_layout)"
            )
        return layout

    @property
    def backend(self) -> str:
        return self._backend or self.config.backend


class TTTJointAttnProcessor(_TTTSiteProcessor):
    """SD3/SD3.5 joint attention (``[image, text]``) and SD3.5-Medium ``attn2`` (image only).

    In the last block (``context_pre_only``) the block discards the text output, so only image rows are read out
    (the text rows still feed the update) and the processor returns ``(image_out, None)``.
    """

    def _dispatch(self, attn, *args: Any) -> Any:
        out = super()._dispatch(attn, *args)
        if self.ttt is not None and isinstance(out, tuple) and getattr(attn, "context_pre_only", False):
            return out[0], None
        return out

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> Tensor:
        if self.ttt is None:
            return super().attend(q, k, v, ctx)
        layout = self._layout(ctx, q.shape[1])
        out_rows = None
        if self.site.kind == "sd3_joint" and getattr(ctx.module, "context_pre_only", False):
            image = layout.find("target")
            out_rows = (image[0].start, image[0].stop) if len(image) == 1 else None
        return self.ttt(q, k, v, layout.kernel_segments(), out_rows=out_rows, backend=self.backend)


class TTTFluxAttnProcessor(_TTTSiteProcessor):
    """FLUX double and single blocks (``[text, target(, reference)]``); RoPE goes between the locality module
    and the inner model (``rope="apply"``) or is skipped (``"skip"``)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> Tensor:
        if self.ttt is None:
            return super().attend(q, k, v, ctx)
        if ctx.attn_bias is not None:
            raise NotImplementedError(
                f"{self.site.name}: TTT attention has no attention mask (every token feeds the update); "
                "call without attention_mask or exclude this site (LinearizeConfig.exclude_sites)"
            )
        layout = self._layout(ctx, q.shape[1])
        rope = None
        if self.config.rope == "apply" and ctx.rope is not None:
            def rope(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
                return self.apply_rope(a, b, ctx)
        return self.ttt(q, k, v, layout.kernel_segments(), rope=rope, backend=self.backend,
                        scattered=getattr(layout, "scattered", ()))


def processor_for(site: SiteInfo, config: LinearizeConfig) -> _TTTSiteProcessor:
    """The processor class of ``site.kind`` (SD3 joint/attn2 or FLUX double/single)."""
    if site.kind in ("sd3_joint", "sd3_attn2"):
        return TTTJointAttnProcessor(site, config)
    if site.kind in ("flux_double", "flux_single"):
        return TTTFluxAttnProcessor(site, config)
    raise TypeError(f"{site.name}: sites of kind {site.kind!r} cannot be linearized (SD3 and FLUX only)")
