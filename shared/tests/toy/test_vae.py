"""ToyPixelVAE (toyworld.md §8.1): bit-exact round trips and the vae_scale_factor pipelines derive."""

from __future__ import annotations

import pytest
import torch

from flowcore.toy.bundle import build
from flowcore.toy.models import ToyPixelVAE


@pytest.mark.parametrize("factor", [1, 2])
def test_round_trip_is_bit_exact(factor):
    vae = ToyPixelVAE(factor=factor)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(factor)) * 2 - 1
    dist = vae.encode(x).latent_dist
    z = dist.sample(generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, 3 * factor * factor, 32 // factor, 32 // factor)
    assert torch.equal(z, dist.mode()) and torch.equal(z, dist.mean)
    assert torch.equal(vae.decode(z).sample, x)
    assert torch.equal(vae.decode(z, return_dict=False)[0], x)
    assert vae.config.latent_channels == 3 * factor * factor
    assert vae.config.scaling_factor == 1.0 and vae.config.shift_factor == 0.0


def test_factor_two_is_pixel_unshuffle():
    x = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 3, 4, 4)
    z = ToyPixelVAE(factor=2).encode(x).latent_dist.mode()
    assert torch.equal(z[0, :4, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))  # one 2×2 patch of channel 0


def test_bad_configs_and_inputs_raise():
    with pytest.raises(ValueError, match="factor 1 or 2"):
        ToyPixelVAE(factor=4)
    with pytest.raises(ValueError, match="encode expects"):
        ToyPixelVAE(factor=1).encode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="decode expects"):
        ToyPixelVAE(factor=2).decode(torch.zeros(1, 3, 8, 8))


def test_dtype_and_device_work_without_weights():
    vae = ToyPixelVAE(factor=2).to(dtype=torch.float16)
    assert vae.dtype == torch.float16 and vae.device.type == "cpu"


@pytest.mark.parametrize(("name", "expected"), [("toy-sd3", 1), ("toy-flux", 1), ("toy-kontext", 1), ("toy-unet", 2)])
def test_pipelines_derive_the_vae_scale_factor(name, expected):
    pipe = build(name, preset="ci").pipeline()
    assert pipe.vae_scale_factor == expected


def test_controlnet_pipeline_scale_factor():
    pipe = build("toy-unet", preset="ci", controlnet=True).pipeline()
    assert type(pipe).__name__ == "StableDiffusionControlNetPipeline"
    assert pipe.vae_scale_factor == 2
