"""Mask providers: ``(image (B,3,H,W) in [0,1], category) -> mask (B,1,H,W)`` (spec §5).

User masks always win and no provider is ever required. Providers register under the entry-point group
``feat_tryon.mask_providers``; the only built-in is ``toy``, which reads try-on mannequins with the toy garment
judge.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

import torch
from torch import Tensor

__all__ = ["ENTRY_POINT_GROUP", "MaskProvider", "available_providers", "get_mask_provider", "toy_mask_provider"]

ENTRY_POINT_GROUP = "feat_tryon.mask_providers"
MaskProvider = Callable[[Tensor, str], Tensor]
TOY_CATEGORIES = ("garment", "hat", "bag")


def toy_mask_provider(image: Tensor, category: str = "garment") -> Tensor:
    """Masks of toy mannequins (32-px try-on images or multiples of 32): the read garment's silhouette at the read
    figure offset (``garment``), or the hat / bag region when one is worn (empty otherwise).

    image: (B,3,H,W) in [0,1]. Returns (B,1,H,W) float {0,1}.
    """
    from flowcore.toy.garment_judge import read_mannequin
    from flowcore.toy.tryon import CH_BAG, CH_GARMENT, CH_HAT, GARMENT_KINDS, OFFSETS, garment_atlas

    if category not in TOY_CATEGORIES:
        raise ValueError(f"the toy provider knows the categories {list(TOY_CATEGORIES)}, got {category!r}")
    x = image if image.ndim == 4 else image[None]
    size = x.shape[-1]
    readings = read_mannequin(x.detach().cpu())
    readings = readings if isinstance(readings, list) else [readings]
    atlas = garment_atlas(size)
    masks = []
    for reading in readings:
        if category == "garment":
            g = reading.garment
            m = atlas[OFFSETS.index(g.offset), GARMENT_KINDS.index(g.kind), CH_GARMENT] > 0
        else:
            worn = reading.hat if category == "hat" else reading.bag
            channel = CH_HAT if category == "hat" else CH_BAG
            m = atlas[OFFSETS.index(reading.offset), 0, channel] > 0
            if worn is None:
                m = torch.zeros_like(m)
        masks.append(m.float())
    return torch.stack(masks)[:, None].to(x.device)


_BUILTIN: dict[str, MaskProvider] = {"toy": toy_mask_provider}


def available_providers() -> list[str]:
    """Built-in and installed provider names."""
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_mask_provider(provider: str | MaskProvider) -> MaskProvider:
    """A provider by name (built-in or entry point) or the callable itself."""
    if callable(provider):
        return provider
    if provider in _BUILTIN:
        return _BUILTIN[provider]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == provider:
            return ep.load()
    raise ValueError(f"unknown mask provider {provider!r}; available: {available_providers()} (or pass the garment "
                     "mask yourself)")
