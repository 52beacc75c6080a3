"""Shared fixtures: tiny random SD1.5-shaped and SD3 models with a ControlNet (style_attr.testing)."""

from __future__ import annotations

import pytest
import torch

# Tiny models run fastest on one thread; several threads on shared, loaded cores slow them down many times.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def unet_model():
    from style_attr.testing import tiny_unet_model

    return tiny_unet_model()


@pytest.fixture(scope="module")
def sd3_model():
    from style_attr.testing import tiny_sd3_model

    return tiny_sd3_model()


@pytest.fixture
def edges():
    from style_attr.testing import random_edges

    return random_edges(1)


@pytest.fixture(autouse=True)
def _detach_all(request):
    """Leave every model fixture without attribute networks after each test."""
    yield
    from style_attr.network import attribute_networks

    for name in ("unet_model", "sd3_model"):
        if name in request.fixturenames:
            model = request.getfixturevalue(name)
            for net in attribute_networks(model.controlnet).values():
                net.detach()
