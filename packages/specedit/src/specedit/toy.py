"""Access to ``flowcore.toy`` (being finished in parallel): bundles, edit pairs, the judge, the draft-size rule.

Names are taken from ``flowcore.toy`` when it exports them (toyworld §10.2) and from its submodules otherwise, so
this package works before and after the toy world's public ``__init__`` is complete.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ToyWeightsMissing",
    "build_bundle",
    "draft_factor_for",
    "edit_success",
    "load_bundle",
    "sample_edit",
    "toy_attr",
]

_HOMES = {
    "build": "flowcore.toy.bundle",
    "load": "flowcore.toy.bundle",
    "ToyWeightsMissing": "flowcore.toy.bundle",
    "manifest": "flowcore.toy.bundle",
    "sample_edit": "flowcore.toy.edits",
    "edit_success": "flowcore.toy.judge",
}


def toy_attr(name: str) -> Any:
    toy = importlib.import_module("flowcore.toy")
    if hasattr(toy, name):
        return getattr(toy, name)
    return getattr(importlib.import_module(_HOMES[name]), name)


def _weights_missing_cls() -> type[Exception]:
    try:
        return toy_attr("ToyWeightsMissing")
    except (ImportError, AttributeError):  # pragma: no cover - flowcore.toy always defines it today
        return FileNotFoundError


ToyWeightsMissing = _weights_missing_cls()


def build_bundle(name: str = "toy-kontext", **kwargs: Any) -> Any:
    """The toy's architecture with seeded random weights (tests, plumbing)."""
    return toy_attr("build")(name, random_init=True, **kwargs)


def load_bundle(name: str = "toy-kontext", **kwargs: Any) -> Any:
    """The shipped weights; raises ``ToyWeightsMissing`` (naming the training command) when they are absent."""
    return toy_attr("load")(name, **kwargs)


def sample_edit(seed: int, index: int = 0, split: str = "val", **kwargs: Any) -> Any:
    return toy_attr("sample_edit")(seed, index, split, **kwargs)


def edit_success(output: Any, pair: Any) -> Any:
    return toy_attr("edit_success")(output, pair)


def draft_factor_for(bundle: Any) -> tuple[int, str]:
    """``(draft_factor, reason)``: 4 when toy-kontext was trained with the 8-px bucket (toyworld §8.5), else 2
    (a 16-px draft), so the draft stays in distribution (spec §6). Random-init bundles report 4."""
    info = getattr(bundle, "info", {}) or {}
    parts = info.get("parts") or {}
    tags = [p.get("recipe") for p in parts.values() if isinstance(p, dict) and p.get("recipe")]
    tags += [info["recipe"]] if isinstance(info.get("recipe"), str) else []
    if not tags:
        return 4, "no recipe recorded (random init or unknown): default draft_factor=4"
    try:
        train = importlib.import_module("flowcore.toy.trainer")
    except ImportError:  # pragma: no cover
        return 4, "flowcore.toy.trainer unavailable: default draft_factor=4"
    for tag in tags:
        name = str(tag).split("@", 1)[0]
        preset = "ci" if str(tag).endswith("+ci") else "full"
        try:
            recipe = train.get_recipe(name, preset)
        except (KeyError, ValueError):
            continue
        sizes = {int(size) for size, _ in getattr(recipe, "size_mix", ())}
        if 8 not in sizes:
            return 2, f"recipe {tag} has no 8-px bucket (sizes {sorted(sizes)}): draft_factor=2 (16-px draft)"
    return 4, f"recipes {tags} include the 8-px bucket: draft_factor=4"
