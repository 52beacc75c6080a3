"""Spec §7 test 28 (pipeline part): FEATPipeline.from_pipe on tiny SDXL / SD1.5 ControlNet pipelines (shared modules),
FEATFlowPipeline.from_pipe on a tiny SD3 pipeline, uniform IP scale, mask providers."""

from __future__ import annotations

import pytest
import torch
from feat_helpers import person_batch

from feat_tryon import FEATFlowPipeline, FEATPipeline
from feat_tryon.providers import available_providers, get_mask_provider, toy_mask_provider

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def sdxl_pipe():
    from flowcore.testing import attach_ip_adapter, tiny_pipeline

    return attach_ip_adapter(tiny_pipeline("sdxl-controlnet"))


def test_28_from_pipe_shares_modules_and_runs(sdxl_pipe):
    feat = FEATPipeline.from_pipe(sdxl_pipe)
    for name in ("unet", "vae", "controlnet", "text_encoder", "text_encoder_2", "image_encoder", "scheduler"):
        assert getattr(feat, name) is getattr(sdxl_pipe, name), name
    assert feat.family == "sdxl"
    batch = person_batch(1, 64)
    out = feat(batch["person"], batch["garment_mask"], design=batch["design"], prompt="a blue shirt",
               sketch_mask=batch["sketch_mask"], num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 1 and out.images[0].size == (64, 64)
    assert out.info["calls"]["unet_samples_per_step"] == 4.0
    assert out.info["cspe"]["encoder_size"] == 32
    adapter = feat.adapter()
    assert adapter.denoiser is sdxl_pipe.unet and feat.adapter() is adapter  # cached


def test_28b_uniform_ip_scale_and_presets(sdxl_pipe):
    feat = FEATPipeline.from_pipe(sdxl_pipe)
    batch = person_batch(1, 64)
    feat.set_ip_adapter_scale(0.8)
    out = feat(batch["person"], batch["garment_mask"], design=batch["design"], sketch_mask=batch["sketch_mask"],
               num_inference_steps=2, output_type="pt")
    assert {g["slot"] for g in out.info["routing"].values()} == {"content"}
    assert {g["scale"] for g in out.info["routing"].values()} == {0.8}
    feat.set_ip_adapter_scale(None)
    out = feat(batch["person"], batch["garment_mask"], design=batch["design"], sketch_mask=batch["sketch_mask"],
               preset="baseline", num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and out.info["config"]["ddi"]["text_scale"] == 1.0


def test_28c_sd15_controlnet_pipe():
    from flowcore.testing import attach_ip_adapter, tiny_pipeline

    pipe = attach_ip_adapter(tiny_pipeline("sd15-controlnet"))
    feat = FEATPipeline.from_pipe(pipe)
    assert feat.family == "sd15" and feat.controlnet is pipe.controlnet
    batch = person_batch(1, 64)
    out = feat(batch["person"], batch["garment_mask"], design=batch["design"], sketch_mask=batch["sketch_mask"],
               num_inference_steps=2, output_type="pt")
    assert bool(torch.isfinite(out.images).all())


def test_28d_from_pipe_needs_an_ip_adapter():
    from flowcore.testing import tiny_pipeline

    with pytest.raises(ValueError, match="IP-Adapter"):
        FEATPipeline.from_pipe(tiny_pipeline("sdxl-controlnet"))


def test_28e_flow_pipeline_from_sd3_pipe():
    from flowcore.testing import tiny_controlnet, tiny_pipeline

    pipe = tiny_pipeline("sd3")
    pipe.controlnet = None
    feat = FEATFlowPipeline.from_pipe(pipe)
    assert feat.transformer is pipe.transformer and feat.family == "sd3"
    batch = person_batch(1, 64)
    out = feat(batch["person"], batch["garment_mask"], prompt="a blue shirt", sketch_mask=batch["sketch_mask"],
               num_inference_steps=2, output_type="pt")
    assert bool(torch.isfinite(out.images).all())
    feat.register_modules(controlnet=tiny_controlnet(pipe.transformer))
    out = feat(batch["person"], batch["garment_mask"], prompt="a blue shirt", sketch_mask=batch["sketch_mask"],
               num_inference_steps=2, output_type="pt")
    assert out.info["calls"]["controlnet_samples"] > 0


def test_mask_providers():
    from flowcore.toy import make_tryon_sample

    assert "toy" in available_providers()
    s = make_tryon_sample(0, 2, "test")
    mask = get_mask_provider("toy")(s.person_image[None], "garment")
    assert torch.equal(mask[0].bool(), s.garment_mask)
    hat = toy_mask_provider(s.person_image[None], "hat")
    assert bool(hat.any()) == (s.person.hat is not None)
    with pytest.raises(ValueError, match="unknown mask provider"):
        get_mask_provider("segment-anything-9")
