"""Attention sites: the one hooking mechanism (architecture §3.3).

Every attention module of a supported model is a *site* with a name (its ``attn_processors`` key, e.g.
``"transformer_blocks.3.attn.processor"``) and a kind:

===============  ==========================================================================================
``sd3_joint``    SD3/SD3.5 joint attention, joint order ``[image, text]`` (stock ``JointAttnProcessor2_0``)
``sd3_attn2``    SD3.5's image-only second attention of dual-attention blocks
``flux_double``  FLUX double-stream blocks, ``[text, image(, reference)]`` (stock ``FluxAttnProcessor``)
``flux_single``  FLUX single-stream blocks on the concatenated sequence
``qwen_joint``   Qwen-Image ``[text, image(, reference)]`` (stock ``QwenDoubleStreamAttnProcessor2_0``)
``unet_self``    UNet / ControlNet ``attn1`` (stock ``AttnProcessor2_0``)
``unet_cross``   UNet / ControlNet ``attn2``, text cross-attention, plus IP-Adapter image tokens when loaded
===============  ==========================================================================================

A :class:`SiteProcessor` reproduces the stock processor of its kind bit for bit, and exposes two overridable
points: :meth:`SiteProcessor.on_qkv` sees ``q, k, v`` as ``[B, S, heads, d]`` after projections, q/k norms and the
text–image concatenation, before RoPE; :meth:`SiteProcessor.attend` computes attention from them (RoPE, bias,
SDPA by default), so a method can swap the operator. Per-call information travels as the named keyword argument
``flowcore_ctx`` (a :class:`CallContext`) inside ``joint_attention_kwargs`` / ``cross_attention_kwargs`` /
``attention_kwargs``; diffusers drops unnamed keys, so the processors declare it.

:func:`install` puts processors on sites through ``set_attn_processor`` (never by patching ``forward``) and returns
a :class:`SiteHandle` that restores the previous processors. While anything is installed, every site accepts
``flowcore_ctx`` (stock processors on the other sites are wrapped to ignore it).
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcore.layout import TokenLayout

__all__ = [
    "SITE_KINDS",
    "AttnContext",
    "CallContext",
    "SiteHandle",
    "SiteInfo",
    "SiteProcessor",
    "install",
    "installed",
    "list_sites",
]

SITE_KINDS = ("sd3_joint", "sd3_attn2", "flux_double", "flux_single", "qwen_joint", "unet_self", "unet_cross")
CTX_KEY = "flowcore_ctx"


@dataclass(frozen=True)
class SiteInfo:
    """One attention site: its ``attn_processors`` key, kind, head count and head size."""

    name: str
    kind: str
    heads: int
    head_dim: int

    @property
    def block(self) -> str:
        """The site name without the trailing ``.processor`` (e.g. ``transformer_blocks.3.attn``)."""
        return self.name[: -len(".processor")] if self.name.endswith(".processor") else self.name


@dataclass
class CallContext:
    """Per-call information for the processors, passed as ``flowcore_ctx`` (``predict(ctx=...)`` sets it).

    Attributes:
        step, num_steps: the sampling step (point index) and N; set by the loops of ``flowcore.sampling``.
        phase: ``"sample"``, ``"invert"`` or a method's own label.
        rows: method-defined row roles (e.g. directedit's source/target map).
        state: method state (e.g. directedit's inject flag and value cache).
        layout: the token layout of the joint sequence, filled by the adapter (``None``: derived per site).
        latent_grid: the latent grid ``(h, w)`` of the call (UNet sites derive their per-resolution grid from it).
    """

    step: int | None = None
    num_steps: int | None = None
    phase: str = "sample"
    rows: object | None = None
    state: dict = field(default_factory=dict)
    layout: TokenLayout | None = None
    latent_grid: tuple[int, int] | None = None


@dataclass
class AttnContext:
    """What a processor's hooks see at one site in one call."""

    site: SiteInfo
    call: CallContext | None
    layout: TokenLayout | None
    rope: object
    attn_bias: Tensor | None
    module: nn.Module | None = None


# --- site discovery ---------------------------------------------------------------------------------------------
def _model_family(model: nn.Module) -> str:
    names = [c.__name__ for c in type(model).__mro__]
    if any(n in ("SD3Transformer2DModel", "SD3ControlNetModel") for n in names):
        return "sd3"
    if any(n in ("FluxTransformer2DModel", "FluxControlNetModel") for n in names):
        return "flux"
    if any(n.startswith("QwenImageTransformer2DModel") or n == "QwenImageControlNetModel" for n in names):
        return "qwen"
    if any(n in ("UNet2DConditionModel", "ControlNetModel", "UNetControlNetXSModel") for n in names):
        return "unet"
    raise TypeError(f"{type(model).__name__} has no known attention sites (supported: SD3, FLUX, Qwen-Image, UNet)")


def _site_kind(family: str, block: str) -> str:
    last = block.rsplit(".", 1)[-1]
    if family == "sd3":
        return "sd3_attn2" if last == "attn2" else "sd3_joint"
    if family == "flux":
        return "flux_single" if block.startswith("single_transformer_blocks") else "flux_double"
    if family == "qwen":
        return "qwen_joint"
    return "unet_cross" if last == "attn2" else "unet_self"


def list_sites(model: nn.Module, kind: str | Sequence[str] | None = None) -> dict[str, SiteInfo]:
    """All attention sites of ``model`` (optionally only the given kinds), keyed by ``attn_processors`` name."""
    family = _model_family(model)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind) if kind is not None else None
    for k in kinds or ():
        if k not in SITE_KINDS:
            raise ValueError(f"unknown site kind {k!r}; use one of {SITE_KINDS}")
    sites: dict[str, SiteInfo] = {}
    for name in model.attn_processors:
        block = name[: -len(".processor")]
        module = model.get_submodule(block)
        heads = int(module.heads)
        head_dim = int(getattr(module, "head_dim", 0) or module.inner_dim // heads)
        info = SiteInfo(name, _site_kind(family, block), heads, head_dim)
        if kinds is None or info.kind in kinds:
            sites[name] = info
    return sites


def _match(pattern: str, sites: Mapping[str, SiteInfo]) -> list[str]:
    """Site names matching a name or glob; ``.processor`` may be omitted; a kind name selects its sites."""
    if pattern in SITE_KINDS:
        return [n for n, s in sites.items() if s.kind == pattern]
    out = []
    for name, info in sites.items():
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(info.block, pattern):
            out.append(name)
    return out


# --- the processor -------------------------------------------------------------------------------------------
class SiteProcessor(nn.Module):
    """Default attention processor of every site kind, bit-identical to the stock diffusers processor.

    Subclass and override :meth:`on_qkv` (edit q/k/v) and/or :meth:`attend` (swap the operator). Subclasses that
    need extra named keyword arguments from the pipeline must override ``__call__`` with those names (diffusers
    drops undeclared ones) and forward to ``super().__call__``.
    """

    _attention_backend = None  # set by diffusers' set_attention_backend, like the stock FLUX/Qwen processors
    _parallel_config = None

    # overridable hooks -----------------------------------------------------------------------------------
    def on_qkv(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k, v``: ``[B, S, heads, d]`` after projections, norms and concatenation, before RoPE."""
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> Tensor:
        """Attention output ``[B, S_q, heads·d]`` from ``[B, S, heads, d]`` inputs: RoPE, ``ctx.attn_bias``, SDPA."""
        q, k = self.apply_rope(q, k, ctx)
        return self.sdpa(q, k, v, ctx)

    # helpers subclasses may call ------------------------------------------------------------------------------
    def apply_rope(self, q: Tensor, k: Tensor, ctx: AttnContext) -> tuple[Tensor, Tensor]:
        """Rotary embedding as the stock processor applies it (FLUX, Qwen); identity for other kinds."""
        if ctx.rope is None:
            return q, k
        kind = ctx.site.kind
        if kind in ("flux_double", "flux_single"):
            from diffusers.models.embeddings import apply_rotary_emb

            return (apply_rotary_emb(q, ctx.rope, sequence_dim=1), apply_rotary_emb(k, ctx.rope, sequence_dim=1))
        if kind == "qwen_joint":
            from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

            img_freqs, txt_freqs = ctx.rope  # type: ignore[misc]
            n_txt = txt_freqs.shape[0] if ctx.layout is None else ctx.layout.find("text")[0].length

            def rot(x: Tensor) -> Tensor:
                txt = apply_rotary_emb_qwen(x[:, :n_txt], txt_freqs, use_real=False)
                img = apply_rotary_emb_qwen(x[:, n_txt:], img_freqs, use_real=False)
                return torch.cat([txt, img], dim=1)

            return rot(q), rot(k)
        return q, k

    def sdpa(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> Tensor:
        """Scaled dot-product attention exactly as the stock processor of the site's kind calls it."""
        kind = ctx.site.kind
        if kind in ("flux_double", "flux_single", "qwen_joint"):
            from diffusers.models.attention_dispatch import dispatch_attention_fn

            extra = {"dropout_p": 0.0, "is_causal": False} if kind == "qwen_joint" else {}
            out = dispatch_attention_fn(q, k, v, attn_mask=ctx.attn_bias, backend=self._attention_backend,
                                        parallel_config=self._parallel_config, **extra)
            return out.flatten(2, 3).to(q.dtype)
        b = q.shape[0]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=ctx.attn_bias, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(b, -1, q.shape[2] * q.shape[3]).to(q.dtype)

    # dispatch ------------------------------------------------------------------------------------------------
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
    ) -> Any:
        site: SiteInfo | None = getattr(attn, "_flowcore_site", None)
        if site is None:
            raise RuntimeError("SiteProcessor used on a module flowcore did not set up: use flowcore.attention.install")
        if site.kind in ("sd3_joint", "sd3_attn2"):
            return self._call_sd3(attn, site, hidden_states, encoder_hidden_states, flowcore_ctx)
        if site.kind in ("flux_double", "flux_single"):
            return self._call_flux(attn, site, hidden_states, encoder_hidden_states, attention_mask,
                                   image_rotary_emb, flowcore_ctx)
        if site.kind == "qwen_joint":
            return self._call_qwen(attn, site, hidden_states, encoder_hidden_states, encoder_hidden_states_mask,
                                   attention_mask, image_rotary_emb, flowcore_ctx)
        return self._call_unet(attn, site, hidden_states, encoder_hidden_states, attention_mask, temb,
                               ip_adapter_masks, flowcore_ctx)

    def _qkv(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> tuple[Tensor, Tensor, Tensor]:
        """This processor's :meth:`on_qkv`, then those of processors stacked on the site (``install(stack=True)``)."""
        q, k, v = self.on_qkv(q, k, v, ctx)
        for stacked in getattr(ctx.module, "_flowcore_stack", ()):
            q, k, v = stacked.on_qkv(q, k, v, ctx)
        return q, k, v

    def _ctx(self, attn: nn.Module, site: SiteInfo, call: CallContext | None, layout: TokenLayout | None,
             rope: Any, bias: Tensor | None) -> AttnContext:
        return AttnContext(site=site, call=call, layout=layout, rope=rope, attn_bias=bias, module=attn)

    # SD3 / SD3.5 (JointAttnProcessor2_0) -------------------------------------------------------------------------
    def _call_sd3(self, attn, site, hidden_states, encoder_hidden_states, call):
        b, n_img = hidden_states.shape[0], hidden_states.shape[1]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        # Work in the stock [B, H, S, d] layout so the SDPA inputs keep the stock strides (bitwise equality).
        query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        n_txt = 0
        if encoder_hidden_states is not None:
            n_txt = encoder_hidden_states.shape[1]
            eq = attn.add_q_proj(encoder_hidden_states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
            ek = attn.add_k_proj(encoder_hidden_states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
            ev = attn.add_v_proj(encoder_hidden_states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = (torch.cat([query, eq], dim=2), torch.cat([key, ek], dim=2),
                                 torch.cat([value, ev], dim=2))
        layout = _sd3_layout(call, n_img, n_txt, site)
        ctx = self._ctx(attn, site, call, layout, None, None)
        q, k, v = self._qkv(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), ctx)
        out = self.attend(q, k, v, ctx)
        if encoder_hidden_states is not None:
            out, txt = out[:, :n_img], out[:, n_img:]
            if not attn.context_pre_only:
                txt = attn.to_add_out(txt)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, txt) if encoder_hidden_states is not None else out

    # FLUX (FluxAttnProcessor) --------------------------------------------------------------------------------
    def _call_flux(self, attn, site, hidden_states, encoder_hidden_states, attention_mask, rope, call):
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        n_txt = 0
        if attn.added_kv_proj_dim is not None:
            n_txt = encoder_hidden_states.shape[1]
            eq = attn.norm_added_q(eq.unflatten(-1, (-1, attn.head_dim)))
            ek = attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim)))
            ev = ev.unflatten(-1, (-1, attn.head_dim))
            query, key, value = (torch.cat([eq, query], dim=1), torch.cat([ek, key], dim=1),
                                 torch.cat([ev, value], dim=1))
        layout = call.layout if call is not None else None
        if layout is not None and layout.total != query.shape[1]:
            layout = None
        ctx = self._ctx(attn, site, call, layout, rope, attention_mask)
        q, k, v = self._qkv(query, key, value, ctx)
        out = self.attend(q, k, v, ctx)
        if encoder_hidden_states is not None:
            txt, out = out.split_with_sizes([n_txt, out.shape[1] - n_txt], dim=1)
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            return out, attn.to_add_out(txt.contiguous())
        return out

    # Qwen-Image (QwenDoubleStreamAttnProcessor2_0) ------------------------------------------------------------
    def _call_qwen(self, attn, site, hidden_states, encoder_hidden_states, enc_mask, attention_mask, rope, call):
        if encoder_hidden_states is None:
            raise ValueError("Qwen-Image attention needs encoder_hidden_states (the text stream)")
        if attention_mask is not None:
            raise ValueError("Qwen-Image attention takes encoder_hidden_states_mask, not an external attention_mask")
        if enc_mask is not None:
            img_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([enc_mask, img_mask], dim=1)[:, None, None, :]
        n_txt = encoder_hidden_states.shape[1]
        head_dim = attn.inner_dim // attn.heads

        def proj(lin, x):
            return lin(x).unflatten(-1, (-1, head_dim))

        iq, ik, iv = proj(attn.to_q, hidden_states), proj(attn.to_k, hidden_states), proj(attn.to_v, hidden_states)
        tq = proj(attn.add_q_proj, encoder_hidden_states)
        tk = proj(attn.add_k_proj, encoder_hidden_states)
        tv = proj(attn.add_v_proj, encoder_hidden_states)
        if attn.norm_q is not None:
            iq = attn.norm_q(iq)
        if attn.norm_k is not None:
            ik = attn.norm_k(ik)
        if attn.norm_added_q is not None:
            tq = attn.norm_added_q(tq)
        if attn.norm_added_k is not None:
            tk = attn.norm_added_k(tk)
        query, key, value = torch.cat([tq, iq], dim=1), torch.cat([tk, ik], dim=1), torch.cat([tv, iv], dim=1)
        layout = call.layout if call is not None else None
        if layout is None or layout.total != query.shape[1]:
            layout = TokenLayout.from_qwen([(1, 1, hidden_states.shape[1])], n_txt)
        ctx = self._ctx(attn, site, call, layout, rope, attention_mask)
        q, k, v = self._qkv(query, key, value, ctx)
        out = self.attend(q, k, v, ctx)
        txt, img = out[:, :n_txt, :], out[:, n_txt:, :]
        img = attn.to_out[0](img.contiguous())
        if len(attn.to_out) > 1:
            img = attn.to_out[1](img)
        return img, attn.to_add_out(txt.contiguous())

    # UNet / ControlNet (AttnProcessor2_0, IPAdapterAttnProcessor2_0) ----------------------------------------------
    def _call_unet(self, attn, site, hidden_states, encoder_hidden_states, attention_mask, temb, ip_masks, call):
        ip = getattr(self, "ip", None)
        ip_states = None
        if ip is not None and encoder_hidden_states is not None:
            if not isinstance(encoder_hidden_states, tuple):
                raise ValueError("IP-Adapter sites expect (text, [image tokens]) as encoder_hidden_states")
            encoder_hidden_states, ip_states = encoder_hidden_states
        if ip_masks is not None:
            raise NotImplementedError("ip_adapter_masks are not supported by flowcore site processors")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        b, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        if ip is None:  # the IP-Adapter processor applies no q/k norms
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
        layout = TokenLayout.image(_unet_grid(call, query.shape[2]))
        ctx = self._ctx(attn, site, call, layout, None, attention_mask)
        q, k, v = self._qkv(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), ctx)
        out = self.attend(q, k, v, ctx)
        if ip_states is not None:
            out = self._add_ip(attn, ip, q.transpose(1, 2), out, ip_states, head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    @staticmethod
    def _add_ip(attn, ip, query, out, ip_states, head_dim):
        """Add the IP-Adapter image-token attention exactly as IPAdapterAttnProcessor2_0 does (no masks)."""
        b = query.shape[0]
        for states, scale, to_k_ip, to_v_ip in zip(ip_states, ip.scale, ip.to_k_ip, ip.to_v_ip):
            if (all(s == 0 for s in scale) if isinstance(scale, list) else scale == 0):
                continue
            ik = to_k_ip(states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
            iv = to_v_ip(states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
            extra = F.scaled_dot_product_attention(query, ik, iv, attn_mask=None, dropout_p=0.0, is_causal=False)
            extra = extra.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
            out = out + scale * extra
        return out


def _sd3_layout(call: CallContext | None, n_img: int, n_txt: int, site: SiteInfo) -> TokenLayout:
    layout = call.layout if call is not None else None
    if layout is not None:
        if site.kind == "sd3_attn2" or n_txt == 0:
            layout = layout.image_only()
        if layout.total == n_img + n_txt:
            return layout
    side = int(round(n_img ** 0.5))
    grid = (side, side) if side * side == n_img else (1, n_img)
    return TokenLayout.from_sd3(grid, n_txt)


def _unet_grid(call: CallContext | None, n: int) -> tuple[int, int]:
    """The token grid of a UNet site with ``n`` tokens: the call's latent grid halved until it fits."""
    if call is not None and call.latent_grid is not None:
        h, w = call.latent_grid
        for _ in range(8):
            if h * w == n:
                return h, w
            h, w = (h + 1) // 2, (w + 1) // 2
    side = int(round(n ** 0.5))
    return (side, side) if side * side == n else (1, n)


# --- wrapping foreign processors so they accept (and ignore) flowcore_ctx --------------------------------------
class _IgnoreCtx(nn.Module):
    """Wraps any processor so it accepts the ``flowcore_ctx`` keyword and drops it."""

    def __init__(self, inner: Any):
        super().__init__()
        if isinstance(inner, nn.Module):
            self.inner = inner
        else:
            object.__setattr__(self, "inner", inner)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__["inner"] if "inner" in self.__dict__ else self._modules["inner"]
            return getattr(inner, name)


_WRAPPER_CLASSES: dict[type, type] = {}


def _ignore_ctx(processor: Any) -> nn.Module:
    """A wrapper whose ``__call__`` signature is the processor's plus ``flowcore_ctx`` (diffusers filters kwargs
    by the processor's signature, so the wrapper must declare every name the processor takes)."""
    cls = type(processor)
    if cls not in _WRAPPER_CLASSES:

        def __call__(self: Any, *args: Any, flowcore_ctx: Any = None, **kwargs: Any) -> Any:
            return self.inner(*args, **kwargs)

        params = list(inspect.signature(processor.__call__).parameters.values())
        params.append(inspect.Parameter(CTX_KEY, inspect.Parameter.KEYWORD_ONLY, default=None))
        params.sort(key=lambda p: p.kind)  # stable: positional, *args, keyword-only, **kwargs
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        __call__.__signature__ = inspect.Signature([self_param, *params])  # type: ignore[attr-defined]
        _WRAPPER_CLASSES[cls] = type(f"IgnoreCtx{cls.__name__}", (_IgnoreCtx,), {"__call__": __call__})
    return _WRAPPER_CLASSES[cls](processor)


def _accepts_ctx(processor: Any) -> bool:
    try:
        return CTX_KEY in inspect.signature(processor.__call__).parameters
    except (TypeError, ValueError):
        return False


# --- install / remove -------------------------------------------------------------------------------------------
class SiteHandle:
    """Restores the processors that were in place before :func:`install` (context manager or ``.remove()``)."""

    def __init__(self, model: nn.Module, previous: dict[str, Any], sites: dict[str, SiteInfo],
                 processors: dict[str, Any], stacked: list[tuple[nn.Module, Any]] | None = None):
        self.model = model
        self.previous = previous
        self.sites = sites
        self.processors = processors
        self.stacked = stacked or []
        self._active = True

    def remove(self) -> None:
        if not self._active:
            return
        for module, proc in self.stacked:
            module._flowcore_stack.remove(proc)
        self.model.set_attn_processor(dict(self.previous))
        stack = getattr(self.model, "_flowcore_handles", [])
        if self in stack:
            stack.remove(self)
        self._active = False

    def __enter__(self) -> SiteHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def installed(model: nn.Module) -> bool:
    """True while flowcore processors are installed on ``model`` (its sites then accept ``flowcore_ctx``)."""
    return bool(getattr(model, "_flowcore_handles", None))


def install(
    model: nn.Module,
    processors: Mapping[str, SiteProcessor | nn.Module | Callable[[SiteInfo], Any]],
    *,
    stack: bool = False,
) -> SiteHandle:
    """Put processors on the sites of ``model`` and return a handle that restores the previous ones.

    Args:
        model: an SD3 / FLUX / Qwen-Image transformer, a UNet or a ControlNet.
        processors: keys are site names, globs over names (``"single_transformer_blocks.*"``; the ``.processor``
            suffix may be left out) or site kinds (``"sd3_joint"``); values are processor instances (shared by
            every matched site) or factories ``SiteInfo -> processor`` (one per site). Later keys win.
        stack: where a site already runs a flowcore :class:`SiteProcessor` (e.g. a t5-linearize TTT layer), keep it
            and run the new processor's :meth:`~SiteProcessor.on_qkv` after its own (methods compose: directedit's
            Value injection on a linearized model); the new processor's ``attend`` is then not used (a warning says
            so when it overrides it). Elsewhere the new processor is installed as usual.
    Raises:
        KeyError: a key matches no site (the message lists the available kinds and a few names).
    """
    sites = list_sites(model)
    previous = dict(model.attn_processors)
    chosen: dict[str, Any] = {}
    for pattern, proc in processors.items():
        names = _match(pattern, sites)
        if not names:
            examples = ", ".join(list(sites)[:4])
            raise KeyError(f"{pattern!r} matches no attention site of {type(model).__name__} (e.g. {examples}; "
                           f"kinds {sorted({s.kind for s in sites.values()})})")
        for name in names:
            chosen[name] = proc(sites[name]) if _is_factory(proc) else proc
    new: dict[str, Any] = {}
    stacked: list[tuple[nn.Module, Any]] = []
    for name, info in sites.items():
        module = model.get_submodule(info.block)
        object.__setattr__(module, "_flowcore_site", info)
        current = previous[name]
        proc = chosen.get(name, current)
        if stack and name in chosen and isinstance(current, SiteProcessor) and isinstance(proc, SiteProcessor):
            if type(proc).attend is not SiteProcessor.attend:
                warnings.warn(f"{type(proc).__name__}.attend is not used at {name}: the site keeps "
                              f"{type(current).__name__}'s operator (install(stack=True))", stacklevel=2)
            if not hasattr(module, "_flowcore_stack"):
                object.__setattr__(module, "_flowcore_stack", [])
            module._flowcore_stack.append(proc)
            stacked.append((module, proc))
            new[name] = current
            continue
        if isinstance(proc, SiteProcessor):
            proc = _adopt_ip(proc, current)
        elif not _accepts_ctx(proc):
            proc = _ignore_ctx(proc)
        new[name] = proc
    model.set_attn_processor(dict(new))  # diffusers pops from the dict it is given
    on_stack = {id(proc) for _, proc in stacked}
    placed = {n: (chosen[n] if id(chosen[n]) in on_stack and new[n] is previous[n] else new[n]) for n in chosen}
    handle = SiteHandle(model, previous, sites, placed, stacked)
    if not hasattr(model, "_flowcore_handles"):
        object.__setattr__(model, "_flowcore_handles", [])
    model._flowcore_handles.append(handle)
    return handle


def _is_factory(obj: Any) -> bool:
    """Functions, lambdas, partials and classes build one processor per site; anything else *is* a processor."""
    return inspect.isfunction(obj) or inspect.ismethod(obj) or isinstance(obj, (type, functools.partial))


def _adopt_ip(proc: SiteProcessor, current: Any) -> SiteProcessor:
    """At an IP-Adapter site, give the processor a per-site copy that owns the stock IP weights (as ``.ip``)."""
    stock_ip = current if hasattr(current, "to_k_ip") else getattr(current, "ip", None)
    if stock_ip is None or not hasattr(stock_ip, "to_k_ip"):
        return proc
    site_proc = copy.copy(proc)
    site_proc._modules = dict(proc._modules)
    site_proc.ip = stock_ip
    return site_proc
