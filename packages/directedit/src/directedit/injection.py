"""Value injection through flowcore attention sites (spec §2.6), plus the attention probe hook (§2.9).

One :class:`DirectEditProcessor` is installed on the union of the injection sites and the probe sites with
:func:`flowcore.attention.install` (``set_attn_processor``; no monkey-patching). Everything per call (step,
row map, record / replay buffers, probe) arrives in ``flowcore_ctx.state["directedit"]`` (a
:class:`~directedit.rows.CallState`); without it the processor is the stock one, bit for bit.

Only V changes: ``V[target rows] ← V[source rows of the same kind]`` (or the recorded source V in ``"cached"``
mode). Q and K are returned untouched, and source rows are never written.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from directedit.config import ValueInjection, arch_of
from directedit.rows import STATE_KEY, CallState
from flowcore.attention import AttnContext, SiteProcessor, install, list_sites

__all__ = ["DirectEditProcessor", "injection_sites", "install_processors", "probe_sites"]

# Default injection sites per architecture (spec §2.6) and the text-aware sites the attention probe reads (§2.9).
_DEFAULT_KINDS = {"flux": ("flux_single",), "sd3": ("sd3_joint",), "unet": ("unet_self",)}
_PROBE_KINDS = {"flux": ("flux_double",), "sd3": ("sd3_joint",), "unet": ("unet_cross",)}


def _sites_of_kinds(model: Any, kinds: Iterable[str]) -> list[str]:
    sites = list_sites(model.denoiser)
    kinds = tuple(kinds)
    return [name for name, info in sites.items() if info.kind in kinds]


def injection_sites(model: Any, injection: ValueInjection) -> list[str]:
    """The ``attn_processors`` keys that inject, in model order (spec §2.6 table).

    Raises:
        ValueError: a keyword that does not apply to the architecture, or patterns that match nothing.
    """
    arch = arch_of(model)
    if arch not in _DEFAULT_KINDS:
        raise ValueError(f"Value injection needs attention sites; {type(model).__name__} has none: "
                         "pass injection=None")
    blocks = injection.blocks
    if isinstance(blocks, str) and blocks in ("default", "single", "double", "all"):
        if arch == "flux":
            kinds = {"default": ("flux_single",), "single": ("flux_single",), "double": ("flux_double",),
                     "all": ("flux_double", "flux_single")}[blocks]
        elif arch == "sd3":
            if blocks in ("single", "double"):
                raise ValueError(f"blocks={blocks!r} names FLUX blocks; SD3 takes 'default' (joint attn), 'all' "
                                 "(attn + attn2) or glob patterns")
            kinds = ("sd3_joint", "sd3_attn2") if blocks == "all" else ("sd3_joint",)
        else:
            kinds = _DEFAULT_KINDS[arch]
        if injection.include_attn2 and arch == "sd3":
            kinds = (*kinds, "sd3_attn2")
        names = _sites_of_kinds(model, kinds)
    else:
        patterns = (blocks,) if isinstance(blocks, str) else tuple(blocks)
        sites = list_sites(model.denoiser)
        names = []
        for name, info in sites.items():
            if any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(info.block, p) for p in patterns):
                names.append(name)
        if not names:
            examples = ", ".join(list(sites)[:3])
            raise ValueError(f"block patterns {patterns} match no attention site (e.g. {examples})")
        if injection.include_attn2 and arch == "sd3":
            names = list(dict.fromkeys([*names, *_sites_of_kinds(model, ("sd3_attn2",))]))
    if not names:
        raise ValueError(f"no attention sites for blocks={blocks!r} on {type(model).__name__} "
                         "(SD3 models without dual attention have no attn2)")
    return names


def probe_sites(model: Any) -> list[str]:
    """Text-aware sites the attention probe reads: FLUX double blocks, SD3 joint ``attn``."""
    arch = arch_of(model)
    if arch not in _PROBE_KINDS:
        raise ValueError(f"{type(model).__name__} has no text-aware attention sites for an attention mask")
    return _sites_of_kinds(model, _PROBE_KINDS[arch])


class DirectEditProcessor(SiteProcessor):
    """The stock processor of every site kind, plus V injection / recording / replay and an attention probe.

    Args:
        inject: site names where V may be changed (when the call's state asks for it).
        probe: site names whose attention the call's probe may read.
    """

    def __init__(self, inject: Iterable[str] = (), probe: Iterable[str] = ()):
        super().__init__()
        self.inject_sites = frozenset(inject)
        self.probe_sites = frozenset(probe)

    @staticmethod
    def _state(ctx: AttnContext) -> CallState | None:
        call = ctx.call
        if call is None:
            return None
        return call.state.get(STATE_KEY)

    def on_qkv(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> tuple[Tensor, Tensor, Tensor]:
        """``v``: ``[B, S, heads, d]``. Records source V, then replaces target V; q and k pass through."""
        state = self._state(ctx)
        name = ctx.site.name
        if state is None or name not in self.inject_sites:
            return q, k, v
        if state.record is not None and state.store is not None:
            rows = state.record.to(v.device)
            device = state.store_device if state.store_device is not None else v.device
            state.store[name] = v.index_select(0, rows).detach().to(device, copy=True)
        changed = False
        if state.inject is not None and state.inject[0].numel():
            tar, src = (t.to(v.device) for t in state.inject)
            v = _copy_rows(v, tar, v.index_select(0, src))
            changed = True
        if state.replay is not None and state.replay[0].numel():
            if state.values is None or name not in state.values:
                raise RuntimeError(f"no recorded Values for site {name} at step {state.step}: the inversion cache "
                                   "was made with another injection configuration")
            tar, pos = (t.to(v.device) for t in state.replay)
            recorded = state.values[name].to(v.device, v.dtype).index_select(0, pos)
            if recorded.shape[1:] != v.shape[1:]:
                raise RuntimeError(f"recorded Values at {name} have shape {tuple(recorded.shape[1:])}, the call "
                                   f"has {tuple(v.shape[1:])}: the cache belongs to another image size or model")
            v = _copy_rows(v, tar, recorded)
            changed = True
        if changed and state.log is not None:
            state.log.append((state.phase, state.step, name))
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> Tensor:
        """Stock attention (RoPE, SDPA); the probe, when asked, reads the rotated q and k."""
        q, k = self.apply_rope(q, k, ctx)
        state = self._state(ctx)
        if state is not None and state.probe is not None and ctx.site.name in self.probe_sites:
            state.probe.observe(q, k, ctx, state.probe_rows)
        return self.sdpa(q, k, v, ctx)


def _copy_rows(v: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """``v`` with ``v[rows] = values``, out of place and with ``v``'s strides (``clone`` preserves them), so the
    untouched rows go through attention exactly as they would without injection."""
    out = v.clone()
    out.index_copy_(0, rows, values.to(out.dtype))
    return out


def install_processors(model: Any, inject: Iterable[str] = (), probe: Iterable[str] = ()) -> Any:
    """Install one :class:`DirectEditProcessor` on the given sites; returns the flowcore ``SiteHandle``
    (a context manager that restores the previous processors), or a no-op context when no site is given."""
    inject, probe = list(inject), list(probe)
    names = list(dict.fromkeys([*inject, *probe]))
    if not names:
        return _NoHandle()
    processor = DirectEditProcessor(inject, probe)
    return install(model.denoiser, {name: processor for name in names}, stack=True)


class _NoHandle:
    def __enter__(self) -> _NoHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def remove(self) -> None:
        return None


def injection_pairs(plan: Any, kinds: tuple[str, ...]) -> tuple[Tensor, Tensor, list[tuple[int, str, int]]]:
    """Rows of ``plan`` to inject: (target rows, their source rows) where the source row is in the call, plus
    the ``(row, kind, image)`` of target rows whose source row is absent (to be replayed from the cache)."""
    tar, src, missing = [], [], []
    for r, (br, kind, b) in enumerate(plan.rows):
        if br < 0 or kind not in kinds:
            continue
        s = plan.find(-1, kind, b)
        if s is None:
            missing.append((r, kind, b))
        else:
            tar.append(r)
            src.append(s)
    return torch.tensor(tar, dtype=torch.long), torch.tensor(src, dtype=torch.long), missing
