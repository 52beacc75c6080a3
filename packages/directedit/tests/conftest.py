"""Shared fixtures: tiny random models (built once per session), one intra-op thread per test, no progress bars.

Models follow spec §7: tiny SD3 (2 layers, ``dual_attention_layers=(0,)``, RMS q/k norm), FLUX (1 double + 2
single blocks, guidance embedding on and off, Kontext with reference tokens), a tiny eps UNet and an MLP velocity
field. fp64 where a tolerance must be tight.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("FLOWCORE_NO_PROGRESS", "1")

SD3_LATENT = (1, 4, 8, 8)  # 64×64 images
FLUX_LATENT = (1, 16, 16)  # 16 packed tokens of 2×2×4


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_CACHE: dict = {}


def _get(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


@pytest.fixture
def sd3_factory():
    from directedit.testing import tiny_sd3_model

    return lambda dtype=torch.float64: _get(("sd3", dtype), lambda: tiny_sd3_model(dtype=dtype))


@pytest.fixture
def flux_factory():
    from directedit.testing import tiny_flux_model

    def make(dtype=torch.float64, guidance_embeds=True, kontext=False):
        return _get(("flux", dtype, guidance_embeds, kontext),
                    lambda: tiny_flux_model(dtype=dtype, guidance_embeds=guidance_embeds, kontext=kontext))

    return make


def latents(shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.fixture
def make_latents():
    return latents
