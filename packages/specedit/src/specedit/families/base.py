"""The family interface: what the hook needs to know about a transformer's call convention."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from specedit.layout import CallPlan, Grid

__all__ = ["CallGeometry", "Family", "bind_call"]


@dataclass(frozen=True)
class CallGeometry:
    """One transformer call: ``target``/``reference`` token grids (reference ``None`` without one), ``n_text``,
    ``sigma`` (the network time in ``[0, 1]``), batch rows."""

    target: Grid
    reference: Grid | None
    n_text: int
    sigma: float
    batch: int

    @property
    def n_target(self) -> int:
        return self.target.n_tokens

    @property
    def n_reference(self) -> int:
        return 0 if self.reference is None else self.reference.n_tokens

    def key(self) -> tuple:
        ref = None if self.reference is None else (self.reference.h, self.reference.w)
        return (self.target.h, self.target.w, ref, self.batch)


_SIGNATURES: dict[type, inspect.Signature] = {}


def bind_call(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments as keywords of ``type(module).forward`` (defaults not filled in)."""
    if not args:
        return dict(kwargs)
    cls = type(module)
    if cls not in _SIGNATURES:
        _SIGNATURES[cls] = inspect.signature(cls.forward)
    bound = _SIGNATURES[cls].bind(module, *args, **kwargs)
    out = dict(bound.arguments)
    out.pop(next(iter(_SIGNATURES[cls].parameters)))
    extra = out.pop("kwargs", None)
    if isinstance(extra, dict):
        out.update(extra)
    return out


class Family:
    """Interface; see :class:`~specedit.families.flux_kontext.FluxKontextFamily`."""

    name = "base"
    text_key = "encoder_hidden_states"
    attention_kwargs_key = "joint_attention_kwargs"

    def parse(self, module: nn.Module, kw: dict[str, Any]) -> CallGeometry:
        raise NotImplementedError

    def main_kwargs(self, module: nn.Module, kw: dict[str, Any], hidden: Tensor, plan: CallPlan,
                    geometry: CallGeometry) -> dict[str, Any]:
        raise NotImplementedError

    def draft_kwargs(self, module: nn.Module, kw: dict[str, Any], hidden: Tensor, target: Grid,
                     reference: Grid, timestep: Tensor, branch: dict[str, Any] | None) -> dict[str, Any]:
        raise NotImplementedError

    def activate(self, module: nn.Module, plan: CallPlan | None, geometry: CallGeometry) -> None:
        """Set model-side state for the next call (Qwen's float rotary); ``plan=None`` clears it."""

    def to_vae_space(self, latents: Tensor, vae: nn.Module | None) -> Tensor:
        """Normalised latents ``(B, C, H, W)`` → what ``vae.decode`` takes."""
        raise NotImplementedError

    def n_text(self, kw: dict[str, Any]) -> int:
        return int(kw[self.text_key].shape[1])

    @staticmethod
    def sigma_of(kw: dict[str, Any]) -> float:
        t = kw.get("timestep")
        if t is None:
            raise ValueError("the transformer call has no timestep; specedit needs it to follow the trajectory")
        return float(torch.as_tensor(t).reshape(-1)[0])
