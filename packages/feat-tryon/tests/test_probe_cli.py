"""The block probe (spec §2.6), its scorers, and the masks / ofr / probe-blocks commands."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from feat_tryon.cli import main
from feat_tryon.probe import ProbeSample, lab_histogram_intersection, probe_blocks, proxy_ssim, toy_samples


def test_real_model_scorers_on_synthetic_images():
    red = torch.zeros(3, 16, 16)
    red[0] = 0.8
    blue = torch.zeros(3, 16, 16)
    blue[2] = 0.9
    assert lab_histogram_intersection(red, red) == pytest.approx(1.0)
    assert lab_histogram_intersection(red, blue) == pytest.approx(0.0)
    half = red.clone()
    half[:, :, 8:] = blue[:, :, 8:]
    assert lab_histogram_intersection(red, half) == pytest.approx(0.5)
    mask = torch.zeros(1, 16, 16)
    mask[:, :, :8] = 1
    assert lab_histogram_intersection(red, half, mask) == pytest.approx(1.0)
    design = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    full = torch.ones(1, 16, 16)
    sample = ProbeSample(torch.zeros(3, 16, 16), full, full, design)
    assert proxy_ssim(design, sample) == pytest.approx(1.0, abs=1e-6)
    assert proxy_ssim(1 - design, sample) < 0.5


def test_probe_on_toy_unet_reports_every_group():
    from feat_tryon.demo import load_toy

    adapter = load_toy("toy-unet", random_init=True, preset="ci")
    samples = toy_samples(2)
    assert all(s.motif is not None for s in samples)
    report = probe_blocks(adapter, samples, steps=1)
    assert len(report.candidates) == 7 and len(report.routing.content) == 3
    assert report.routing.style[0] not in report.routing.content
    scores = {r["candidate"]: r["d_style_minus_d_content"] for r in report.table()}
    assert report.routing.style[0] == max(scores, key=scores.get)
    assert set(report.agreement()) == {"style_same", "content_overlap", "content_of"}


def _write_masks(tmp_path):
    garment = Image.new("L", (32, 32), 0)
    garment.paste(255, (8, 8, 24, 24))
    garment.save(tmp_path / "garment.png")
    sketch = Image.new("L", (32, 32), 255)
    for x in range(8, 20):
        sketch.putpixel((x, 8), 0)
        sketch.putpixel((x, 23), 0)
    for y in range(8, 24):
        sketch.putpixel((8, y), 0)
        sketch.putpixel((19, y), 0)
    sketch.save(tmp_path / "sketch.png")


def test_masks_command(tmp_path):
    _write_masks(tmp_path)
    out = tmp_path / "out"
    assert main(["masks", "--garment-mask", str(tmp_path / "garment.png"), "--sketch", str(tmp_path / "sketch.png"),
                 "--output-dir", str(out)]) == 0
    record = json.loads((out / "masks.json").read_text())
    assert record["factor"] == 2 and record["closing_kernel"] == [1] and record["removal_empty"] == [False]
    assert (out / "masks.png").is_file() and (out / "masks.sketch_mask.png").is_file()


def test_ofr_command(tmp_path):
    from flowcore.images import to_pil
    from flowcore.toy import make_tryon_sample

    s = make_tryon_sample(0, 0, "test")
    to_pil(s.person_image)[0].save(tmp_path / "person.png")
    to_pil(s.garment_mask.float())[0].save(tmp_path / "garment.png")
    assert main(["ofr", "--model", "toy-unet", "--random-init", "--toy-preset", "ci", "--person",
                 str(tmp_path / "person.png"), "--garment-mask", str(tmp_path / "garment.png"),
                 "--output-dir", str(tmp_path / "o")]) == 0
    record = json.loads((tmp_path / "o" / "ofr.json").read_text())
    assert record["beta"] == [pytest.approx(1.0)] and record["inside_mass"] == [pytest.approx(1.0)]
    from flowcore.images import to_tensor

    img = to_tensor(tmp_path / "o" / "ofr.png")
    inside = s.garment_mask[None].expand(1, 3, 32, 32)
    # the factor-2 pixel VAE stacks pixels into channels, so d = z_g − z_w lives exactly on the garment pixels:
    # the garment turns pure white and every other pixel is untouched (up to the PNG's 8-bit rounding)
    assert torch.equal(img[inside], torch.ones_like(img[inside]))
    assert float((img[~inside] - s.person_image[None][~inside]).abs().max()) <= 0.5 / 255 + 1e-6


def test_probe_command_on_a_sample_folder(tmp_path):
    from flowcore.images import to_pil

    samples = toy_samples(1)
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, s in enumerate(samples):
        to_pil(s.person)[0].save(folder / f"s{i}.person.png")
        to_pil(s.garment_mask)[0].save(folder / f"s{i}.garment.png")
        to_pil(s.sketch_mask)[0].save(folder / f"s{i}.sketch_mask.png")
        to_pil(s.design)[0].save(folder / f"s{i}.design.png")
    code = main(["probe-blocks", "--model", "toy-unet", "--random-init", "--toy-preset", "ci", "--samples",
                 str(folder), "--steps", "1", "--output-dir", str(tmp_path / "p")])
    assert code == 0
    routing = json.loads((tmp_path / "p" / "routing.json").read_text())
    assert len(routing["style"]) == 1 and len(routing["content"]) == 3
    from feat_tryon.routing import BlockRouting

    assert BlockRouting.from_json(routing).style == tuple(routing["style"])
