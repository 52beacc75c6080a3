"""Random access into the toy world's procedural streams (toyworld.md §2.5, §8.6).

Every sample is drawn from its own ``numpy`` generator seeded by ``SeedSequence([seed, split, stream, index])``:
no hidden state, so any sample can be regenerated on its own and training batches are pure functions of
``(seed, step, rank)``.
"""

from __future__ import annotations

import numpy as np

SPLIT: dict[str, int] = {"train": 0, "val": 1, "test": 2}
STREAM: dict[str, int] = {
    "scene": 0,      # scenes (sample_scene)
    "edit": 1,       # edit pairs (sample_edit)
    "tryon": 2,      # try-on samples (make_tryon_sample)
    "design": 3,     # design sources
    "caption": 4,    # caption mode / partial-drop draws during training
    "style": 5,      # style-filter noise fields (seeded by the filter's own seed)
    "mannequin": 6,  # mannequins sampled alone (training data)
    "train": 7,      # per-sample training noise (flow sigma, eps, dropout draws)
}


def rng_for(seed: int, index: int, split: str = "train", stream: str = "scene") -> np.random.Generator:
    """The generator of sample ``index`` in ``split`` of ``stream``; raises on unknown split or stream names."""
    if split not in SPLIT:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT)}")
    if stream not in STREAM:
        raise ValueError(f"unknown stream {stream!r}; use one of {sorted(STREAM)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT[split], STREAM[stream], int(index)]))
