"""Bad input never crashes with a traceback: clear errors, or handled (issue 9, 'Done when' item 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from feat_tryon import FEATPipeline
from feat_tryon.cli import main


@pytest.fixture(scope="module")
def toy_pipe():
    return FEATPipeline.from_toy("toy-unet", random_init=True, preset="ci")


@pytest.fixture(scope="module")
def sample():
    from flowcore.toy import make_tryon_sample

    return make_tryon_sample(0, 5, "test")


def _call(pipe, sample, **kw):
    args = dict(garment_mask=sample.garment_mask.float(), sketch=sample.sketch, design=sample.design_image,
                prompt=sample.target_caption, num_inference_steps=1, output_type="pt")
    args.update(kw)
    return pipe(sample.person_image, **args)


def test_mask_of_another_size_is_a_clear_error(toy_pipe, sample):
    with pytest.raises(ValueError, match="W×H"):
        _call(toy_pipe, sample, garment_mask=torch.ones(1, 1, 16, 24))
    with pytest.raises(ValueError, match="aspect ratios differ"):
        _call(toy_pipe, sample, garment_mask=Image.new("L", (40, 20), 255))
    with pytest.raises(ValueError, match="W×H"):
        _call(toy_pipe, sample, sketch=torch.zeros(1, 1, 16, 16))


def test_same_aspect_mask_is_resized(toy_pipe, sample):
    big = Image.fromarray((sample.garment_mask[0].numpy() * 255).astype(np.uint8)).resize((64, 64), Image.NEAREST)
    out = _call(toy_pipe, sample, garment_mask=big)
    assert bool(torch.isfinite(out.images).all())


def test_open_sketch_asks_for_a_sketch_mask(toy_pipe, sample):
    sketch = torch.zeros(1, 1, 32, 32)
    sketch[..., 10, 4:28] = 1  # a single stroke encloses nothing
    with pytest.raises(ValueError, match="sketch_mask"):
        _call(toy_pipe, sample, sketch=sketch)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "CMYK", "1"])
def test_design_in_odd_modes_and_sizes_is_handled(toy_pipe, sample, mode):
    rgb = Image.fromarray((sample.design_image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((53, 17))
    if mode == "I;16":
        design = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    else:
        design = rgb.convert(mode)
    out = _call(toy_pipe, sample, design=design)
    assert out.images.shape == (1, 3, 32, 32) and bool(torch.isfinite(out.images).all())


def test_values_outside_unit_range_and_bad_sizes(toy_pipe, sample):
    with pytest.raises(ValueError, match=r"\[-1,1\]"):
        _call(toy_pipe, sample, design=sample.design_image[None] * 2 - 1)
    with pytest.raises(ValueError, match="multiples of 2"):
        toy_pipe(torch.rand(1, 3, 31, 31), num_inference_steps=1)


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys, sample):
    from flowcore.images import to_pil

    to_pil(sample.person_image)[0].save(tmp_path / "person.png")
    code = main(["run", "--model", "toy-unet", "--random-init", "--toy-preset", "ci", "--steps", "1",
                 "--person", str(tmp_path / "person.png"), "--garment-mask", str(tmp_path / "missing.png"),
                 "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "mask file not found" in err and "Traceback" not in err
    Image.new("L", (32, 32), 0).save(tmp_path / "blank.png")
    code = main(["run", "--model", "toy-unet", "--random-init", "--toy-preset", "ci", "--steps", "1",
                 "--person", str(tmp_path / "person.png"), "--sketch", str(tmp_path / "blank.png"),
                 "--output-dir", str(tmp_path)])
    assert code == 1 and "sketch" in capsys.readouterr().err


def test_missing_toy_weights_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWCORE_TOY_WEIGHTS", str(tmp_path / "no-weights"))
    code = main(["demo", "--quick", "--output-dir", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 2 and "toy-unet" in err and "weights" in err
    Image.new("RGB", (32, 32)).save(tmp_path / "p.png")
    assert main(["run", "--person", str(tmp_path / "p.png"), "--output-dir", str(tmp_path)]) == 2
