"""Access to ``flowcore.toy`` (loading toys, edit pairs, judges) in one place.

The names are taken from ``flowcore.toy`` when it exports them and from its submodules otherwise, so directedit
works while the toy world's public API is being assembled.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

__all__ = ["ToyWeightsMissing", "toy", "toy_bundle"]

_HOMES = {
    "load": "bundle", "build": "bundle", "ToyWeightsMissing": "bundle", "DEFAULTS": "bundle",
    "sample_edit": "edits", "EditPair": "edits", "edit_success": "judge", "alignment": "judge",
}


def toy(name: str) -> Any:
    """``flowcore.toy.<name>``, falling back to the submodule that defines it."""
    module = importlib.import_module("flowcore.toy")
    if hasattr(module, name):
        return getattr(module, name)
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"flowcore.toy has no {name!r}")
    return getattr(importlib.import_module(f"flowcore.toy.{home}"), name)


def _missing_class() -> type[BaseException]:
    try:
        return toy("ToyWeightsMissing")
    except (ImportError, AttributeError):  # pragma: no cover - the toy world always defines it
        return FileNotFoundError


ToyWeightsMissing = _missing_class()


def toy_bundle(name: str, *, random_init: bool = False, device: Any = "cpu", dtype: torch.dtype = torch.float32,
               preset: str = "full", seed: int = 0) -> Any:
    """The trained toy (``flowcore.toy.load``) or, with ``random_init``, its architecture with random weights."""
    if random_init:
        return toy("build")(name, random_init=True, preset=preset, seed=seed).to(device, dtype).eval()
    return toy("load")(name, device=device, dtype=dtype)
