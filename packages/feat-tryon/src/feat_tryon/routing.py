"""Semantic-Disentangled Injection (spec §2.3, SDI): per-site routing of two IP-Adapter embeddings.

The IP-Adapter is loaded once. Both embeddings travel as one ``image_embeds`` tensor (B, 2, D_φ) — slot 0 the
style embedding ``e_sty``, slot 1 the content (raw) embedding ``e_img`` — which diffusers projects to
(B, 2, 4, D_x). At each cross-attention site b a :class:`RoutedIPAdapterAttnProcessor` computes

    out_b = W_o [ τ·Attn(Q h, K c, V c) + λ_b·Attn(Q h, K_ip T_slot(b), V_ip T_slot(b)) ] + b_o

with the stock ``to_k_ip``/``to_v_ip`` weights. The routing state lives on the processors (no new
``cross_attention_kwargs``); installation goes through :func:`flowcore.attention.install`, whose handle restores
the stock processors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcore.attention import AttnContext, SiteHandle, SiteInfo, SiteProcessor, install, list_sites

__all__ = [
    "SLOTS",
    "BlockRouting",
    "RoutedIPAdapterAttnProcessor",
    "RoutingHandle",
    "SiteRoute",
    "attention_groups",
    "group_of",
    "install_routing",
]

Slot = Literal["style", "content", "off"]
SLOTS: dict[str, int] = {"style": 0, "content": 1, "off": 1}
"""Index into the (B, 2, ...) embedding tensor read by each slot (off sites read the raw embedding at
``other_scale``, 0 by default)."""

_GROUP = re.compile(r"^(.*?\.attentions\.\d+)\.")


def group_of(site: str) -> str:
    """The attention group (``down_blocks.2.attentions.1``) of a site name; the site itself if none."""
    match = _GROUP.match(site)
    return match.group(1) if match else site.removesuffix(".processor")


def attention_groups(site_names: Iterable[str]) -> dict[str, list[str]]:
    """Sites per attention group, in model order."""
    groups: dict[str, list[str]] = {}
    for name in site_names:
        groups.setdefault(group_of(name), []).append(name)
    return groups


@dataclass(frozen=True)
class SiteRoute:
    """What one site reads: ``slot`` (style, content or off) at scale ``scale``."""

    slot: Slot
    scale: float

    @property
    def index(self) -> int:
        return SLOTS[self.slot]


def _matches(site: str, spec: str) -> bool:
    block = site.removesuffix(".processor")
    return site == spec or block == spec or site.startswith(spec + ".")


@dataclass(frozen=True)
class BlockRouting:
    """Which groups (or sites) get the style and the content embedding, and at which scales.

    ``style``/``content``: attention groups (``up_blocks.0.attentions.1``) or site names; a site matching both
    is a style site. ``group_scales`` overrides the scale of listed groups (``from_diffusers_scale``).
    ``uniform=True`` sends the content (raw) embedding to every site at ``content_scale`` (DDI off).
    """

    style: tuple[str, ...]
    content: tuple[str, ...]
    style_scale: float
    content_scale: float
    other_scale: float = 0.0
    text_scale: float = 0.5
    group_scales: Mapping[str, float] = field(default_factory=dict)
    uniform: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "style", tuple(self.style))
        object.__setattr__(self, "content", tuple(self.content))
        object.__setattr__(self, "group_scales", dict(self.group_scales))

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def uniform_scale(cls, scale: float, text_scale: float = 1.0) -> BlockRouting:
        """The raw embedding at every site at ``scale`` (IP-Adapter as usual, DDI off)."""
        return cls((), (), scale, scale, scale, text_scale, uniform=True)

    @staticmethod
    def rule_groups(unet_config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """§2.3's rule: style ``Up.attentions.1``; content {``Dn.attentions.min(1, n−1)``, mid, ``Up.attentions.0``}
        with ``Up`` the first up block with attentions and ``Dn`` the last such down block (n attentions)."""
        cfg = unet_config if isinstance(unet_config, Mapping) else dict(unet_config)
        down = list(cfg["down_block_types"])
        up = list(cfg["up_block_types"])
        layers = cfg.get("layers_per_block", 2)
        per_down = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(down)
        down_attn = [i for i, t in enumerate(down) if "CrossAttn" in t]
        up_attn = [i for i, t in enumerate(up) if "CrossAttn" in t]
        if not down_attn or not up_attn:
            raise ValueError("the UNet has no cross-attention up/down blocks: no routing rule applies")
        dn, first_up = down_attn[-1], up_attn[0]
        n = int(per_down[dn])
        content = [f"down_blocks.{dn}.attentions.{min(1, n - 1)}"]
        if "CrossAttn" in str(cfg.get("mid_block_type") or "UNetMidBlock2DCrossAttn"):
            content.append("mid_block.attentions.0")
        content.append(f"up_blocks.{first_up}.attentions.0")
        return (f"up_blocks.{first_up}.attentions.1",), tuple(content)

    @classmethod
    def default_for(cls, unet_config: Any, *, style_scale: float = 0.5, content_scale: float = 0.5,
                    other_scale: float = 0.0, text_scale: float = 0.5) -> BlockRouting:
        """The rule routing of a UNet config (SDXL, SD1.5, toy-unet or any UNet2DConditionModel config)."""
        style, content = cls.rule_groups(unet_config)
        return cls(style, content, style_scale, content_scale, other_scale, text_scale)

    @classmethod
    def from_diffusers_scale(cls, scales: Mapping[str, Any] | float, slot: Slot = "content", *,
                             text_scale: float = 1.0) -> BlockRouting:
        """Routing from a diffusers per-block IP scale (``{"down": {"block_2": [0.0, 1.0]}, "mid": 0.0,
        "up": {"block_0": [0.0, 1.0, 0.0]}}``, as in ``set_ip_adapter_scale``): every group with a non-zero
        scale reads ``slot`` at that scale, all others are off. A float is a uniform scale."""
        if isinstance(scales, (int, float)):
            return cls.uniform_scale(float(scales), text_scale)
        if slot not in ("style", "content"):
            raise ValueError(f"slot must be 'style' or 'content', got {slot!r}")
        groups: dict[str, float] = {}
        for part, value in scales.items():
            if part == "mid":
                if isinstance(value, Sequence):
                    value = value[0]
                groups["mid_block.attentions.0"] = float(value)
                continue
            prefix = {"down": "down_blocks", "up": "up_blocks"}.get(part)
            if prefix is None or not isinstance(value, Mapping):
                raise ValueError(f"unknown IP scale entry {part!r}: use 'down'/'up' dicts and a 'mid' float")
            for block, per_attention in value.items():
                index = int(str(block).removeprefix("block_"))
                items = per_attention if isinstance(per_attention, Sequence) else None
                if items is None:
                    groups[f"{prefix}.{index}.attentions.*"] = float(per_attention)
                    continue
                for j, s in enumerate(items):
                    groups[f"{prefix}.{index}.attentions.{j}"] = float(s)
        active = tuple(g for g, s in groups.items() if s != 0)
        style, content = (active, ()) if slot == "style" else ((), active)
        return cls(style, content, 0.0, 0.0, 0.0, text_scale, group_scales=groups)

    # --- resolution ---------------------------------------------------------------------------------------------
    def _group_scale(self, site: str) -> float | None:
        for spec, scale in self.group_scales.items():
            if _matches(site, spec) or (spec.endswith(".*") and site.startswith(spec[:-1])):
                return scale
        return None

    def resolve(self, site_names: Iterable[str]) -> dict[str, SiteRoute]:
        """``{site: SiteRoute(slot, scale)}`` for the given cross-attention site names.

        Raises ``KeyError`` when a style or content entry matches no site (the message lists the groups).
        """
        names = list(site_names)
        if not self.uniform:
            for spec in (*self.style, *self.content):
                glob = spec.endswith(".*")
                if not any(_matches(n, spec) or (glob and n.startswith(spec[:-1])) for n in names):
                    raise KeyError(f"routing entry {spec!r} matches no cross-attention site; groups: "
                                   f"{list(attention_groups(names))}")
        routes: dict[str, SiteRoute] = {}
        for name in names:
            if self.uniform:
                routes[name] = SiteRoute("content", self.content_scale)
                continue
            override = self._group_scale(name)
            if any(_matches(name, s) or (s.endswith(".*") and name.startswith(s[:-1])) for s in self.style):
                routes[name] = SiteRoute("style", self.style_scale if override is None else override)
            elif any(_matches(name, s) or (s.endswith(".*") and name.startswith(s[:-1])) for s in self.content):
                routes[name] = SiteRoute("content", self.content_scale if override is None else override)
            else:
                routes[name] = SiteRoute("off", self.other_scale)
        return routes

    def summary(self, site_names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Per group: slot, scale and number of sites (for the sidecar)."""
        routes = self.resolve(site_names)
        out: dict[str, dict[str, Any]] = {}
        for group, sites in attention_groups(routes).items():
            kinds = {(routes[s].slot, routes[s].scale) for s in sites}
            slot, scale = sorted(kinds)[0] if len(kinds) == 1 else ("mixed", None)
            out[group] = {"slot": slot, "scale": scale, "sites": len(sites)}
        return out

    # --- serialisation --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"style": list(self.style), "content": list(self.content), "style_scale": self.style_scale,
                "content_scale": self.content_scale, "other_scale": self.other_scale,
                "text_scale": self.text_scale, "group_scales": dict(self.group_scales), "uniform": self.uniform}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text_or_dict: str | Mapping[str, Any]) -> BlockRouting:
        data = json.loads(text_or_dict) if isinstance(text_or_dict, str) else dict(text_or_dict)
        known = {"style", "content", "style_scale", "content_scale", "other_scale", "text_scale", "group_scales",
                 "uniform"}
        unknown = set(data) - known - {"format", "note", "scores"}
        if unknown:
            raise ValueError(f"unknown routing keys {sorted(unknown)}; expected {sorted(known)}")
        data.setdefault("style_scale", 0.5)
        data.setdefault("content_scale", 0.5)
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_scales(self, **scales: float) -> BlockRouting:
        from dataclasses import replace

        return replace(self, **{k: v for k, v in scales.items() if v is not None})


# --- the processor --------------------------------------------------------------------------------------------------
class RoutedIPAdapterAttnProcessor(SiteProcessor):
    """flowcore site processor for a UNet cross-attention site with slot routing, an IP scale and a text scale.

    Reads slot ``route.index`` of the projected image tokens (B, n_slots, 4, D) that diffusers passes next to the
    text, with the stock ``to_k_ip``/``to_v_ip`` of the site (adopted by :func:`flowcore.attention.install`).
    ``text_scale`` multiplies the text attention (before ``to_out``); a scale-0 route skips the IP branch, so
    ``τ = 1`` with every ``λ = 0`` computes exactly the UNet without IP-Adapter. ``mask`` (B,1,H,W), when set,
    multiplies the IP branch, area-pooled to the site's token grid.
    """

    def __init__(self, route: SiteRoute, text_scale: float = 1.0, mask: Tensor | None = None):
        super().__init__()
        self.route = route
        self.text_scale = float(text_scale)
        self.mask = mask
        self._grid: tuple[int, int] | None = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> Tensor:
        out = super().attend(q, k, v, ctx)
        layout = ctx.layout
        self._grid = layout.grid("target") if layout is not None and layout.has("target") else None
        return out * self.text_scale if self.text_scale != 1.0 else out

    def _add_ip(self, attn, ip, query, out, ip_states, head_dim):  # type: ignore[override]
        scale = self.route.scale
        if scale == 0 or not ip_states:
            return out
        states = ip_states[0]
        if states.ndim == 4:  # (B, n_slots, tokens, D): pick this site's slot
            states = states[:, min(self.route.index, states.shape[1] - 1)]
        b = query.shape[0]
        ik = ip.to_k_ip[0](states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
        iv = ip.to_v_ip[0](states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
        extra = F.scaled_dot_product_attention(query, ik, iv, attn_mask=None, dropout_p=0.0, is_causal=False)
        extra = extra.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        if self.mask is not None:
            extra = extra * self._token_mask(b, extra.shape[1]).to(extra.dtype)
        return out + scale * extra

    def _token_mask(self, rows: int, tokens: int) -> Tensor:
        mask = self.mask
        assert mask is not None
        if rows % mask.shape[0]:
            raise ValueError(f"the IP mask has {mask.shape[0]} rows but the UNet call has {rows}")
        grid = self._grid if self._grid is not None and self._grid[0] * self._grid[1] == tokens else None
        if grid is None:
            side = int(round(tokens**0.5))
            grid = (side, tokens // side)
        pooled = F.adaptive_avg_pool2d(mask.float(), grid).flatten(2).transpose(1, 2)  # (B, T, 1)
        return pooled.repeat(rows // mask.shape[0], 1, 1)


class RoutingHandle:
    """Installed routing on one UNet: restores the stock processors on ``remove()`` / ``__exit__``."""

    def __init__(self, unet: nn.Module, routing: BlockRouting, routes: dict[str, SiteRoute], handle: SiteHandle):
        self.unet = unet
        self.routing = routing
        self.routes = routes
        self.handle = handle

    @property
    def processors(self) -> dict[str, RoutedIPAdapterAttnProcessor]:
        return dict(self.handle.processors)

    def set_mask(self, mask: Tensor | None) -> None:
        """Set (or clear) the IP mask (B,1,H,W) on every routed site."""
        for proc in self.handle.processors.values():
            proc.mask = mask

    def summary(self) -> dict[str, dict[str, Any]]:
        return self.routing.summary(self.routes)

    def remove(self) -> None:
        self.handle.remove()

    def __enter__(self) -> RoutingHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _unet_of(adapter: Any) -> nn.Module:
    return getattr(adapter, "denoiser", adapter)


def cross_sites(unet: nn.Module) -> dict[str, SiteInfo]:
    """The UNet's cross-attention sites (``unet_cross``) in model order."""
    return list_sites(unet, "unet_cross")


def install_routing(adapter: Any, routing: BlockRouting, *, ip_mask: Tensor | None = None) -> RoutingHandle:
    """Install a :class:`RoutedIPAdapterAttnProcessor` at every cross-attention site of the adapter's UNet.

    Args:
        adapter: a flowcore ``UNetModel`` (or a bare ``UNet2DConditionModel``).
        routing: the :class:`BlockRouting` to apply.
        ip_mask: optional (B,1,H,W) mask multiplying the IP branch (area-pooled per site).
    Returns:
        A :class:`RoutingHandle` (context manager) that restores the previous processors.
    """
    unet = _unet_of(adapter)
    sites = cross_sites(unet)
    if not sites:
        raise ValueError(f"{type(unet).__name__} has no UNet cross-attention sites: DDI needs an SD/SDXL-style UNet")
    routes = routing.resolve(sites)

    def factory(info: SiteInfo) -> RoutedIPAdapterAttnProcessor:
        return RoutedIPAdapterAttnProcessor(routes[info.name], routing.text_scale, ip_mask)

    handle = install(unet, {name: factory for name in sites})
    return RoutingHandle(unet, routing, routes, handle)


def stack_slots(e_sty: Tensor, e_img: Tensor) -> Tensor:
    """The (B, 2, D) ``image_embeds`` of the two slots from (B, 1, D) or (B, D) embeddings."""
    def flat(e: Tensor) -> Tensor:
        return e[:, 0] if e.ndim == 3 else e

    return torch.stack([flat(e_sty), flat(e_img)], dim=1)
