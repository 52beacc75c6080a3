"""The one seeded-construction helper of the monorepo (flowcore.testing, the toy world, every package's random-init
models and benchmarks).

diffusers' and torch's layer initialisers draw from the global RNG and take no ``torch.Generator``; sampling and
training code in the packages takes a generator instead and never uses this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["seeded_init"]


@contextlib.contextmanager
def seeded_init(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Deterministic module initialisation that leaves the caller's global RNG state untouched.

    Seeds the global RNG inside ``torch.random.fork_rng`` and restores the caller's CPU state on exit, and the state
    of ``device`` too when it is a CUDA device (modules built directly on the GPU draw from it).
    """
    device = torch.device(device) if device is not None else None
    with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
