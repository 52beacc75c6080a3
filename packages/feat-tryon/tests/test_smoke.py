"""The smallest end-to-end checks (spec §7 test 28, toy part). Runs with only feat-tryon's declared dependencies
(flowcore, torch, diffusers; no transformers): toy-unet and toy-sd3 with random weights, offline."""

from __future__ import annotations

import json

import torch

from feat_tryon import FEATConfig, FEATFlowPipeline, FEATPipeline
from feat_tryon.cli import main

SIDECAR_KEYS = {"format", "model_id", "seed", "versions", "config", "routing", "size", "inputs_sha256", "mask_areas",
                "dilate_px", "closing_kernel", "ofr", "cspe", "calls", "timings", "warnings", "outputs"}


def _sample():
    from flowcore.toy import make_tryon_sample

    return make_tryon_sample(0, 1, "test")


def test_feat_pipeline_on_toy_unet(tmp_path):
    pipe = FEATPipeline.from_toy("toy-unet", random_init=True, preset="ci")
    s = _sample()
    out = pipe(s.person_image, s.garment_mask.float(), s.sketch, s.design_image, s.target_caption,
               generator=torch.Generator().manual_seed(0), output_type="pt", num_inference_steps=3)
    assert out.images.shape == (1, 3, 32, 32) and bool(torch.isfinite(out.images).all())
    keep = (out.masks.keep > 0).repeat_interleave(2, -1).repeat_interleave(2, -2).expand(1, 3, 32, 32)
    # the keep cells come back through the pixel VAE's round trip (2x−1, then /2+½): equal up to float rounding
    torch.testing.assert_close(out.images[keep], s.person_image[None][keep], atol=1e-6, rtol=0)
    assert out.info["routing"]["up_blocks.1.attentions.1"]["slot"] == "style"
    sidecar = out.save(tmp_path / "result")
    record = json.loads(sidecar.read_text())
    assert set(record) >= SIDECAR_KEYS and record["format"] == "feat-tryon/1"
    assert {"beta", "d_norm", "inside_mass", "noop"} <= set(record["ofr"])
    assert {"sigma_px", "norm_img", "norm_sty", "cos"} <= set(record["cspe"])
    assert (tmp_path / "result.png").is_file()


def test_flow_pipeline_on_toy_sd3():
    pipe = FEATFlowPipeline.from_toy("toy-sd3", random_init=True, preset="ci")
    s = _sample()
    out = pipe(s.person_image, s.garment_mask.float(), prompt=s.target_caption, sketch_mask=s.sketch_mask.float(),
               config=FEATConfig.preset("feat", num_inference_steps=3, guidance_scale=5.0, init_strength=0.8),
               generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (1, 3, 32, 32) and bool(torch.isfinite(out.images).all())


def test_cli_run_offline(tmp_path):
    from flowcore.images import to_pil

    s = _sample()
    to_pil(s.person_image)[0].save(tmp_path / "person.png")
    to_pil(s.design_image)[0].save(tmp_path / "design.png")
    to_pil(s.garment_mask.float())[0].save(tmp_path / "garment.png")
    to_pil(s.sketch)[0].save(tmp_path / "sketch.png")
    code = main(["run", "--model", "toy-unet", "--random-init", "--toy-preset", "ci", "--steps", "2",
                 "--person", str(tmp_path / "person.png"), "--design", str(tmp_path / "design.png"),
                 "--garment-mask", str(tmp_path / "garment.png"), "--sketch", str(tmp_path / "sketch.png"),
                 "--prompt", s.target_caption, "--output-dir", str(tmp_path / "out"), "--save-intermediates"])
    assert code == 0
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(record) >= SIDECAR_KEYS and record["seed"] == 0 and record["model_id"] == "toy-unet"
    assert {"result.png", "result.mask.png", "result.ofr.png", "result.control.png"} <= set(record["outputs"])
