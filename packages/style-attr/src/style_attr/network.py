"""The attribute network C_A: an edge ControlNet plus λ-token cross-attention at its text-attention sites (§2.2).

Only the new layers train; the ControlNet C and C_A share every other weight in memory. Each λ-site is an
attention processor that wraps the site's existing processor (installed with ``flowcore.attention.install``):

    a = inner(attn, h_n, ...)                           # the stock output (SD3: the image part of the tuple)
    u = LayerNorm(h_n + a);  q = u·W_q;  k = T·W_k;  v = T·W_v
    return a + rowmask ⊙ (softmax(q kᵀ/√(D/H)) v · W_o + b_o)        # W_o, b_o zero-initialised

The λ-tokens ``T`` reach the processors through a :class:`TokenSlot` owned by the ControlNet's attribute host and
filled inside ``with net.tokens(lam, rows):`` (diffusers' ``SD3ControlNetModel.forward`` does not pass
``joint_attention_kwargs`` to its blocks, so no keyword can carry them). Several networks live as named adapters in
the same processors; one slot holds ``(adapter, rows, tokens)`` groups so all attribute rows of a step go through
one ControlNet call. Rows in no group get the stock output bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcore.seeding import seeded_init
from style_attr.filters import AttributeSpec

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "LAYERS_NAME",
    "AttributeControlNet",
    "AttributeEmbedder",
    "AttributeSiteProcessor",
    "BaseMismatchError",
    "LambdaAttention",
    "TokenGroup",
    "TokenSlot",
    "attribute_networks",
    "base_config_hash",
    "host_of",
    "randomize_attribute_layers",
]

FORMAT = "style-attr/attribute-net"
FORMAT_VERSION = 1
CONFIG_NAME = "attribute_config.json"
LAYERS_NAME = "attribute_layers.safetensors"
_HOST_ATTR = "_style_attr_host"


class BaseMismatchError(ValueError):
    """A saved attribute network does not fit the ControlNet it is loaded onto."""


# --- the λ-token embedder ------------------------------------------------------------------------------------
class AttributeEmbedder(nn.Module):
    """λ ``(B, P)`` → tokens ``(B, P·m, d)``.

    ``γ(λ_i) = [λ_i, sin 2πf_jλ_i, cos 2πf_jλ_i]`` with ``f_j = base_freq·2^j`` (0.25, 0.5, 1, 2: low frequencies
    keep the response smooth and allow extrapolation) goes through a shared ``Linear(1+2F → h) → SiLU →
    Linear(h → m·d)``; token ``(i, j)`` adds the parameter embedding ``id_emb[i]`` and the slot embedding
    ``slot_emb[j]`` (both N(0, 0.02²)). m ≥ 2 keeps the attention output spatially varying (one key gives a
    constant vector).
    """

    def __init__(self, num_params: int, token_dim: int, tokens_per_param: int = 4, num_freqs: int = 4,
                 base_freq: float = 0.25, hidden_dim: int = 256):
        super().__init__()
        if num_params < 1 or tokens_per_param < 1 or token_dim < 1 or hidden_dim < 1 or num_freqs < 0:
            raise ValueError("num_params, tokens_per_param, token_dim and hidden_dim must be >= 1, num_freqs >= 0")
        self.num_params, self.token_dim, self.tokens_per_param = num_params, token_dim, tokens_per_param
        self.num_freqs, self.base_freq, self.hidden_dim = num_freqs, float(base_freq), hidden_dim
        self.register_buffer("freqs", base_freq * 2.0 ** torch.arange(num_freqs, dtype=torch.float32),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(1 + 2 * num_freqs, hidden_dim), nn.SiLU(),
                                 nn.Linear(hidden_dim, tokens_per_param * token_dim))
        self.id_emb = nn.Parameter(torch.randn(num_params, token_dim) * 0.02)
        self.slot_emb = nn.Parameter(torch.randn(tokens_per_param, token_dim) * 0.02)

    @property
    def num_tokens(self) -> int:
        return self.num_params * self.tokens_per_param

    def features(self, lam: Tensor) -> Tensor:
        """γ(λ): ``(B, P)`` → ``(B, P, 1 + 2F)``."""
        angle = 2 * math.pi * lam[..., None] * self.freqs.to(lam.dtype)
        return torch.cat([lam[..., None], torch.sin(angle), torch.cos(angle)], dim=-1)

    def forward(self, lam: Tensor) -> Tensor:
        if lam.ndim == 1:
            lam = lam[None]
        if lam.ndim != 2 or lam.shape[1] != self.num_params:
            raise ValueError(f"λ must be (B, {self.num_params}), got {tuple(lam.shape)}")
        dtype = self.mlp[0].weight.dtype
        b = lam.shape[0]
        tok = self.mlp(self.features(lam.to(dtype))).view(b, self.num_params, self.tokens_per_param, self.token_dim)
        tok = tok + self.id_emb[None, :, None] + self.slot_emb[None, None]
        return tok.reshape(b, self.num_tokens, self.token_dim)


# --- one λ-site ----------------------------------------------------------------------------------------------------
class LambdaAttention(nn.Module):
    """The new layers at one site: LayerNorm, W_q (D→D), W_k, W_v (d→D), W_o (D→D, zero) and b_o (zero)."""

    def __init__(self, dim: int, token_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"site width {dim} is not divisible by its {heads} heads")
        self.dim, self.token_dim, self.heads = dim, token_dim, heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(token_dim, dim, bias=False)
        self.to_v = nn.Linear(token_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, hidden: Tensor, attn_out: Tensor, tokens: Tensor) -> Tensor:
        """``hidden`` (processor input) and ``attn_out`` (stock output) ``(n, N, D)``, ``tokens`` ``(n|1, K, d)``
        → the λ-term ``(n, N, D)`` in ``attn_out.dtype``."""
        dtype = self.to_q.weight.dtype
        n, length, _ = hidden.shape
        u = self.norm((hidden + attn_out).to(dtype))
        tokens = tokens.to(dtype)
        if tokens.shape[0] == 1 and n > 1:
            tokens = tokens.expand(n, -1, -1)
        hd = self.dim // self.heads
        q = self.to_q(u).view(n, length, self.heads, hd).transpose(1, 2)
        k = self.to_k(tokens).view(n, -1, self.heads, hd).transpose(1, 2)
        v = self.to_v(tokens).view(n, -1, self.heads, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, self.dim)
        return self.to_out(out).to(attn_out.dtype)


# --- token routing ----------------------------------------------------------------------------------------------
@dataclass
class TokenGroup:
    """λ-tokens for some rows of the next ControlNet call: ``tokens`` ``(len(rows)|1, K, d)``; ``rows`` ``None``
    means every row."""

    adapter: str
    rows: Tensor | None
    tokens: Tensor


class TokenSlot:
    """Holds the token groups of the ControlNet call in progress (filled in a ``with`` block, cleared after)."""

    def __init__(self) -> None:
        self.groups: list[TokenGroup] = []

    @contextlib.contextmanager
    def fill(self, groups: Sequence[TokenGroup]) -> Iterator[None]:
        if self.groups:
            raise RuntimeError("the token slot is already filled: attribute token blocks cannot be nested")
        self.groups = list(groups)
        try:
            yield
        finally:
            self.groups = []


def _accepted_kwargs(processor: Any) -> tuple[set[str], bool]:
    try:
        params = inspect.signature(processor.__call__).parameters
    except (TypeError, ValueError):
        return set(), True
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params.values())


class AttributeSiteProcessor(nn.Module):
    """Wraps a site's processor and adds the λ-attention of every adapter whose tokens are in the slot."""

    def __init__(self, inner: Any, slot: TokenSlot, site: str):
        super().__init__()
        if isinstance(inner, nn.Module):
            self.inner = inner
        else:
            object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "slot", slot)
        self.site = site
        self.layers = nn.ModuleDict()
        self._names, self._var_kw = _accepted_kwargs(inner)

    def __call__(  # type: ignore[override]
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        image_rotary_emb: Any = None,
        *,
        encoder_hidden_states_mask: Tensor | None = None,
        ip_adapter_masks: Any = None,
        flowcore_ctx: Any = None,
    ) -> Any:
        extra = {"temb": temb, "image_rotary_emb": image_rotary_emb,
                 "encoder_hidden_states_mask": encoder_hidden_states_mask, "ip_adapter_masks": ip_adapter_masks,
                 "flowcore_ctx": flowcore_ctx}
        kwargs = {k: v for k, v in extra.items() if v is not None and (k in self._names or self._var_kw)}
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        groups = [g for g in self.slot.groups if g.adapter in self.layers]
        if not groups:
            return out
        stock = out[0] if isinstance(out, tuple) else out
        if hidden_states.ndim != 3 or stock.shape != hidden_states.shape:
            raise RuntimeError(f"λ-site {self.site} expects (B, N, D) attention inputs and outputs, got "
                               f"{tuple(hidden_states.shape)} and {tuple(stock.shape)}")
        result = stock
        for g in groups:
            layer = self.layers[g.adapter]
            if g.rows is None:
                result = result + layer(hidden_states, stock, g.tokens)
            else:
                rows = g.rows.to(stock.device)
                delta = layer(hidden_states.index_select(0, rows), stock.index_select(0, rows), g.tokens)
                result = result.index_add(0, rows, delta)
        return (result, *out[1:]) if isinstance(out, tuple) else result


# --- the host: processors, slot and adapters of one ControlNet --------------------------------------------------
class _AttributeHost:
    def __init__(self, controlnet: nn.Module):
        self.controlnet = controlnet
        self.slot = TokenSlot()
        self.processors: dict[str, AttributeSiteProcessor] = {}
        self.adapters: dict[str, AttributeControlNet] = {}
        self.handle: Any = None

    def ensure_sites(self, names: Sequence[str]) -> None:
        """Install wrapping processors at ``names`` (attn_processors keys), keeping the existing ones."""
        from flowcore.attention import install

        missing = [n for n in names if n not in self.processors]
        if not missing and self.handle is not None:
            return
        if self.handle is not None:
            self.handle.remove()
        current = dict(self.controlnet.attn_processors)
        for name in missing:
            self.processors[name] = AttributeSiteProcessor(current[name], self.slot, name)
        self.handle = install(self.controlnet, dict(self.processors))

    def uninstall(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def reinstall(self) -> None:
        from flowcore.attention import install

        if self.handle is None and self.processors:
            self.handle = install(self.controlnet, dict(self.processors))


def host_of(controlnet: nn.Module, create: bool = False) -> _AttributeHost | None:
    """The attribute host of ``controlnet`` (its λ-processors, token slot and adapters)."""
    host = getattr(controlnet, _HOST_ATTR, None)
    if host is None and create:
        host = _AttributeHost(controlnet)
        object.__setattr__(controlnet, _HOST_ATTR, host)
    return host


def attribute_networks(controlnet: nn.Module | None) -> dict[str, AttributeControlNet]:
    """The attribute networks attached to ``controlnet`` by name (empty when none)."""
    host = host_of(controlnet) if controlnet is not None else None
    return dict(host.adapters) if host is not None else {}


def _family(controlnet: nn.Module) -> str:
    names = [c.__name__ for c in type(controlnet).__mro__]
    if "SD3ControlNetModel" in names:
        return "sd3"
    if "ControlNetModel" in names:
        return "unet"
    raise TypeError(f"style-attr attaches to ControlNetModel (SD1.5) or SD3ControlNetModel, got {type(controlnet).__name__}")


def _auto_sites(controlnet: nn.Module) -> list[str]:
    from flowcore.attention import list_sites

    kind = "unet_cross" if _family(controlnet) == "unet" else "sd3_joint"
    sites = list(list_sites(controlnet, kind))
    if not sites:
        raise ValueError(f"{type(controlnet).__name__} has no {kind} attention site to attach λ-attention to")
    return sites


def _resolve_sites(controlnet: nn.Module, sites: str | Sequence[str]) -> list[str]:
    from flowcore.attention import list_sites

    if sites == "auto":
        return _auto_sites(controlnet)
    patterns = [sites] if isinstance(sites, str) else list(sites)
    import fnmatch

    available = list_sites(controlnet)
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n, info in available.items()
                if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(info.block, pattern)]
        if not hits:
            raise KeyError(f"site pattern {pattern!r} matches no attention site of {type(controlnet).__name__} "
                           f"(e.g. {list(available)[:3]})")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def token_width(controlnet: nn.Module) -> int:
    """d: the host's text width (UNet ``cross_attention_dim``, SD3 ``inner_dim``)."""
    if _family(controlnet) == "unet":
        dim = controlnet.config.cross_attention_dim
        if not isinstance(dim, int):
            raise ValueError("the ControlNet has several cross-attention widths; pass token_dim=")
        return int(dim)
    return int(controlnet.config.num_attention_heads * controlnet.config.attention_head_dim)


def base_config_hash(controlnet: nn.Module) -> str:
    """sha256 of the ControlNet's canonical config (private ``_*`` keys dropped, keys sorted)."""
    items = {k: v for k, v in dict(controlnet.config).items() if not str(k).startswith("_")}
    text = json.dumps(items, sort_keys=True, default=lambda v: list(v) if isinstance(v, tuple) else str(v))
    return hashlib.sha256(text.encode()).hexdigest()


def _key(site: str) -> str:
    return site.removesuffix(".processor").replace(".", "__")


# --- the network ----------------------------------------------------------------------------------------------------
class AttributeControlNet(nn.Module):
    """An attribute network: the λ-embedder plus one :class:`LambdaAttention` per site of a ControlNet.

    Build it with :meth:`attach` (fresh, zero-initialised outputs) or :meth:`from_pretrained`. Its parameters are
    the new layers only (the ControlNet is referenced, not owned). Use :meth:`tokens` around a ControlNet call to
    give some rows λ-tokens.
    """

    def __init__(self, controlnet: nn.Module, spec: AttributeSpec, *, name: str, sites: Sequence[str],
                 token_dim: int, tokens_per_param: int = 4, num_freqs: int = 4, base_freq: float = 0.25,
                 hidden_dim: int = 256):
        super().__init__()
        object.__setattr__(self, "controlnet", controlnet)
        self.spec = spec
        self.name = name
        self.sites = [s.removesuffix(".processor") for s in sites]
        self.token_dim = token_dim
        self.training_summary: dict[str, Any] = {}
        self.base_id: str = str(getattr(controlnet.config, "_name_or_path", "") or "")
        self.embedder = AttributeEmbedder(spec.num_params, token_dim, tokens_per_param, num_freqs, base_freq,
                                          hidden_dim)
        self.layers = nn.ModuleDict()
        for site in self.sites:
            attn = controlnet.get_submodule(site)
            dim = int(attn.query_dim)
            if int(attn.out_dim) != dim:
                raise ValueError(f"site {site} changes width ({dim} -> {attn.out_dim}); λ-attention needs equal widths")
            self.layers[_key(site)] = LambdaAttention(dim, token_dim, int(attn.heads))

    # construction ------------------------------------------------------------------------------------------------
    @classmethod
    def attach(cls, controlnet: nn.Module, spec: AttributeSpec, *, name: str = "attr", sites: str | Sequence[str] =
               "auto", tokens_per_param: int = 4, hidden_dim: int = 256, num_freqs: int = 4, base_freq: float = 0.25,
               token_dim: int | None = None, seed: int = 0) -> AttributeControlNet:
        """Add a fresh attribute network named ``name`` to ``controlnet`` (zero ``W_o``: nothing changes yet).

        Args:
            controlnet: a diffusers ``ControlNetModel`` (λ-sites: the ``attn2`` of its down and mid blocks) or
                ``SD3ControlNetModel`` (the ``attn`` of every block, image stream).
            spec: the filter family and parameters it controls.
            sites: ``"auto"`` or site names/globs.
            tokens_per_param: m; hidden_dim: h (256; 64 for the toys); token_dim: d (default the text width).
            seed: initialisation seed (the global RNG is left untouched).
        """
        if not isinstance(spec, AttributeSpec):
            raise TypeError(f"spec must be an AttributeSpec, got {type(spec).__name__}")
        if not name or "." in name:
            raise ValueError(f"network names must be non-empty and contain no '.', got {name!r}")
        host = host_of(controlnet, create=True)
        assert host is not None
        if name in host.adapters:
            raise ValueError(f"an attribute network named {name!r} is already attached; pick another name")
        names = _resolve_sites(controlnet, sites)
        d = token_dim if token_dim is not None else token_width(controlnet)
        param = next(controlnet.parameters())
        with seeded_init(seed):
            net = cls(controlnet, spec, name=name, sites=names, token_dim=d, tokens_per_param=tokens_per_param,
                      num_freqs=num_freqs, base_freq=base_freq, hidden_dim=hidden_dim)
        net.to(param.device)
        net._register(host)
        return net

    def _register(self, host: _AttributeHost) -> None:
        full = [s + ".processor" for s in self.sites]
        host.ensure_sites(full)
        for site, name in zip(self.sites, full):
            host.processors[name].layers[self.name] = self.layers[_key(site)]
        host.adapters[self.name] = self
        object.__setattr__(self, "controlnet", host.controlnet)

    @property
    def host(self) -> _AttributeHost:
        host = host_of(self.controlnet)
        if host is None or host.adapters.get(self.name) is not self:
            raise RuntimeError(f"attribute network {self.name!r} is detached; attach it again")
        return host

    def add_adapter(self, other: AttributeControlNet) -> None:
        """Move ``other`` onto this network's ControlNet (same base config), so both share one base and one call."""
        if other is self:
            return
        if base_config_hash(other.controlnet) != base_config_hash(self.controlnet):
            raise BaseMismatchError(f"network {other.name!r} was built on another ControlNet config; it cannot share "
                                    f"{self.name!r}'s base")
        host = self.host
        if other.name in host.adapters:
            raise ValueError(f"an attribute network named {other.name!r} is already attached here; rename one")
        other.detach()
        other.to(next(self.controlnet.parameters()).device)
        other._register(host)

    def detach(self) -> nn.Module:
        """Remove this network's layers; the last one out restores the ControlNet's original processors."""
        host = host_of(self.controlnet)
        if host is None or host.adapters.get(self.name) is not self:
            return self.controlnet
        for proc in host.processors.values():
            if self.name in proc.layers:
                del proc.layers[self.name]
        del host.adapters[self.name]
        if not host.adapters:
            host.uninstall()
            object.__delattr__(self.controlnet, _HOST_ATTR)
        return self.controlnet

    # use --------------------------------------------------------------------------------------------------------------
    def check_lambda(self, lam: Tensor) -> None:
        """Refuse λ outside ``spec.allowed_range``; warn outside the tested ``[0, 1.2]``."""
        lo, hi = self.spec.allowed_range
        if lam.numel() and (float(lam.min()) < lo or float(lam.max()) > hi):
            raise ValueError(f"λ for {self.name!r} must lie in [{lo}, {hi}] (the allowed range), got values in "
                             f"[{float(lam.min()):.3g}, {float(lam.max()):.3g}]")
        if lam.numel() and (float(lam.min()) < -1e-6 or float(lam.max()) > 1.2 + 1e-6):
            warnings.warn(f"λ for {self.name!r} outside [0, 1.2] extrapolates beyond the trained range",
                          stacklevel=3)

    def lam_matrix(self, lam: Tensor | float | Sequence[float], batch: int | None = None) -> Tensor:
        """``lam`` as ``(B|1, P)`` float32 on the network's device (scalars fill every parameter)."""
        p = self.spec.num_params
        t = torch.as_tensor(lam, dtype=torch.float32, device=self.embedder.id_emb.device)
        if t.ndim == 0:
            t = t.expand(1, p)
        elif t.ndim == 1:
            if t.shape[0] != p:
                raise ValueError(f"{self.name!r} controls {p} parameter(s) {self.spec.params}; got λ of shape "
                                 f"{tuple(t.shape)}")
            t = t[None]
        elif t.ndim != 2 or t.shape[1] != p:
            raise ValueError(f"λ for {self.name!r} must be (P,) or (B, P) with P = {p}, got {tuple(t.shape)}")
        if batch is not None and t.shape[0] not in (1, batch):
            raise ValueError(f"λ has {t.shape[0]} rows for a batch of {batch}")
        return t

    def encode(self, lam: Tensor | float | Sequence[float], *, check: bool = True) -> Tensor:
        """λ → tokens ``(B|1, P·m, d)``."""
        lam_m = self.lam_matrix(lam)
        if check:
            self.check_lambda(lam_m)
        return self.embedder(lam_m)

    def group(self, lam_or_tokens: Tensor | float, rows: Tensor | None = None, *, check: bool = True) -> TokenGroup:
        """A :class:`TokenGroup` for this network: λ ``(B|1, P)``/scalar, or ready tokens ``(B|1, K, d)``."""
        t = torch.as_tensor(lam_or_tokens)
        tokens = t if t.ndim == 3 else self.encode(t, check=check)
        if tokens.shape[-2:] != (self.embedder.num_tokens, self.token_dim):
            raise ValueError(f"tokens for {self.name!r} must be (B, {self.embedder.num_tokens}, {self.token_dim}), "
                             f"got {tuple(tokens.shape)}")
        if rows is not None:
            rows = torch.as_tensor(rows, dtype=torch.long)
            if tokens.shape[0] not in (1, rows.numel()):
                raise ValueError(f"{tokens.shape[0]} token rows for {rows.numel()} selected rows")
        return TokenGroup(self.name, rows, tokens)

    @contextlib.contextmanager
    def tokens(self, lam_or_tokens: Tensor | float, rows: Tensor | None = None,
               adapter: str | None = None) -> Iterator[None]:
        """Give ``rows`` of the next ControlNet call(s) the λ-tokens of ``lam_or_tokens`` (other rows: stock).

        ``adapter`` selects another network on the same ControlNet by name.
        """
        net = self if adapter is None else self.host.adapters[adapter]
        with self.host.slot.fill([net.group(lam_or_tokens, rows)]):
            yield

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The embedder and the site layers; nothing of the ControlNet."""
        return iter(list(self.parameters()))

    def freeze_base(self) -> None:
        """``requires_grad=False`` on the ControlNet's own weights, ``True`` on this network's layers."""
        mine = {id(p) for p in self.parameters()}
        for p in self.controlnet.parameters():
            p.requires_grad_(id(p) in mine)
        for p in self.parameters():
            p.requires_grad_(True)

    def output_norm(self) -> float:
        """Σ |W_o| + |b_o| over the sites: 0 for an untrained network (its λ has no effect)."""
        with torch.no_grad():
            return float(sum(layer.to_out.weight.abs().sum() + layer.to_out.bias.abs().sum()
                             for layer in self.layers.values()))

    def site_dims(self) -> dict[str, tuple[int, int]]:
        return {site: (layer.dim, layer.heads) for site, layer in zip(self.sites, self.layers.values())}

    def config_dict(self) -> dict[str, Any]:
        from style_attr import __version__

        emb = self.embedder
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name, "spec": self.spec.to_dict(),
            "base": {"id": self.base_id, "revision": None, "class": type(self.controlnet).__name__,
                     "config_sha256": base_config_hash(self.controlnet)},
            "sites": self.sites, "site_dims": {s: list(v) for s, v in self.site_dims().items()},
            "token_dim": self.token_dim, "tokens_per_param": emb.tokens_per_param, "num_freqs": emb.num_freqs,
            "base_freq": emb.base_freq, "hidden_dim": emb.hidden_dim, "training": dict(self.training_summary),
            "version": __version__,
        }

    def layer_state_dict(self) -> dict[str, Tensor]:
        """``<site>.lam.*`` and ``embedder.*`` tensors (the file layout of §5.4)."""
        out = {f"embedder.{k}": v for k, v in self.embedder.state_dict().items()}
        for site in self.sites:
            for k, v in self.layers[_key(site)].state_dict().items():
                out[f"{site}.lam.{k}"] = v
        return out

    def load_layer_state_dict(self, state: dict[str, Tensor]) -> None:
        """Strict inverse of :meth:`layer_state_dict` (missing or extra keys, or wrong shapes, raise)."""
        mine = self.layer_state_dict()
        missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        if missing or extra:
            raise BaseMismatchError(f"attribute layers do not match this ControlNet: missing {missing[:4]}, "
                                    f"unexpected {extra[:4]}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(mine[k].shape):
                raise BaseMismatchError(f"attribute layer {k} has shape {tuple(v.shape)}, this ControlNet needs "
                                        f"{tuple(mine[k].shape)} (a different base model width)")
        with torch.no_grad():
            self.embedder.load_state_dict({k[len("embedder."):]: v for k, v in state.items()
                                           if k.startswith("embedder.")})
            for site in self.sites:
                prefix = f"{site}.lam."
                self.layers[_key(site)].load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                                         if k.startswith(prefix)})

    # files ------------------------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, *, include_base: bool = False,
                        dtype: torch.dtype | None = None) -> Path:
        """Write ``attribute_config.json`` and ``attribute_layers.safetensors`` (and ``controlnet/`` with
        ``include_base``) into ``path``, atomically; ``dtype`` (e.g. fp16) casts the stored layers."""
        from safetensors.torch import save_file

        from flowcore.io import atomic_write, write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous().clone()
                 for k, v in self.layer_state_dict().items()}
        atomic_write(path / LAYERS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": FORMAT}))
        if include_base:
            self.save_base(path / "controlnet", dtype=dtype)
        write_json(path / CONFIG_NAME, self.config_dict())
        return path

    def save_base(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
        """Save the ControlNet itself (without λ-processors) with ``save_pretrained``."""
        host = self.host
        host.uninstall()
        try:
            base = self.controlnet
            if dtype is not None:
                import copy

                base = copy.deepcopy(base).to(dtype)
            base.save_pretrained(str(path), safe_serialization=True)
        finally:
            host.reinstall()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, controlnet: nn.Module | None = None, *,
                        torch_dtype: torch.dtype | None = None, local_files_only: bool = True,
                        strict_base: bool = True, name: str | None = None) -> AttributeControlNet:
        """Load a saved network onto ``controlnet`` (default: the ``controlnet/`` stored beside it).

        Raises :class:`BaseMismatchError` when the ControlNet's class, config hash (``strict_base``) or site widths
        differ from the ones it was trained on, and ``FileNotFoundError`` for a missing or incomplete folder.
        """
        from safetensors.torch import load_file

        path = Path(path)
        cfg_path, layers_path = path / CONFIG_NAME, path / LAYERS_NAME
        if not cfg_path.is_file() or not layers_path.is_file():
            raise FileNotFoundError(f"{path} is not a style-attr attribute network (needs {CONFIG_NAME} and "
                                    f"{LAYERS_NAME}); train one with `style-attr train`")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != FORMAT or int(cfg.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{cfg_path} is not a {FORMAT} v{FORMAT_VERSION} file (format {cfg.get('format')!r} "
                             f"v{cfg.get('format_version')})")
        if controlnet is None:
            controlnet = _load_base(path / "controlnet", cfg["base"]["class"], torch_dtype, local_files_only)
        base = cfg["base"]
        if type(controlnet).__name__ != base["class"]:
            raise BaseMismatchError(f"{path} was trained on a {base['class']}, not a {type(controlnet).__name__}")
        have = base_config_hash(controlnet)
        if have != base["config_sha256"]:
            message = (f"{path} was trained on a ControlNet with config hash {base['config_sha256'][:12]}, this one "
                       f"has {have[:12]} (another base model or ControlNet)")
            if strict_base:
                raise BaseMismatchError(message + "; pass strict_base=False to load it anyway")
            warnings.warn(message, stacklevel=2)
        for site, (dim, heads) in cfg.get("site_dims", {}).items():
            try:
                attn = controlnet.get_submodule(site)
            except AttributeError:
                raise BaseMismatchError(f"{path} needs the attention site {site}, which this ControlNet lacks") from None
            if int(attn.query_dim) != dim or int(attn.heads) != heads:
                raise BaseMismatchError(f"site {site} is {attn.query_dim} wide with {attn.heads} heads here, but the "
                                        f"network was trained for {dim} wide with {heads} heads")
        net = cls.attach(controlnet, AttributeSpec.from_dict(cfg["spec"]), name=name or cfg["name"],
                         sites=[s + ".processor" for s in cfg["sites"]], tokens_per_param=int(cfg["tokens_per_param"]),
                         hidden_dim=int(cfg["hidden_dim"]), num_freqs=int(cfg["num_freqs"]),
                         base_freq=float(cfg["base_freq"]), token_dim=int(cfg["token_dim"]))
        state = load_file(str(layers_path))
        net.load_layer_state_dict({k: v.float() for k, v in state.items()})
        net.base_id = base.get("id") or net.base_id
        net.training_summary = dict(cfg.get("training", {}))
        net.to(dtype=torch_dtype or torch.float32)
        return net

    def fingerprint(self) -> str:
        """sha256 (first 16 hex) of the layer weights and config, for sidecars and inversion files."""
        h = hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True, default=str).encode())
        for k, v in sorted(self.layer_state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _load_base(folder: Path, class_name: str, torch_dtype: torch.dtype | None, local_files_only: bool) -> nn.Module:
    import diffusers

    if not folder.is_dir():
        raise FileNotFoundError(f"no ControlNet stored at {folder}: pass controlnet= (the base this network was "
                                "trained on)")
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ValueError(f"diffusers has no class {class_name}")
    return cls.from_pretrained(str(folder), torch_dtype=torch_dtype, local_files_only=local_files_only)


def randomize_attribute_layers(net: AttributeControlNet, seed: int = 0, gain: float = 1.0) -> AttributeControlNet:
    """Give ``W_o``/``b_o`` (and only them) random values, so an untrained network acts like a trained one.

    For tests and benchmarks: ``W_o ~ U(±gain/√D)``, ``b_o ~ U(±gain/√D)``, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers.values():
            bound = gain / math.sqrt(layer.dim)
            w = (torch.rand(layer.to_out.weight.shape, generator=generator) * 2 - 1) * bound
            b = (torch.rand(layer.to_out.bias.shape, generator=generator) * 2 - 1) * bound
            layer.to_out.weight.copy_(w)
            layer.to_out.bias.copy_(b)
    return net
