"""One seeded-construction helper for the random-init factories (flowcore.testing, flowcore.toy.models)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Deterministic module initialisation that leaves the caller's global RNG state untouched.

    diffusers' and torch's layer initialisers draw from the global CPU RNG and take no generator, so this seeds it
    inside ``torch.random.fork_rng`` and restores the caller's state on exit.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
