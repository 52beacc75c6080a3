"""Pipelines and the command line (T22), bad inputs, nothing written half-way."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import directedit._toy as toymod
from directedit.cli import main

SIDECAR_KEYS = {"method", "versions", "model_id", "model_class", "dtype", "device", "seed", "image_size",
                "padded_size", "prompts", "config", "sigmas", "K", "sites", "mask", "nfe", "timings_s",
                "reconstruction", "outputs"}


@pytest.fixture
def ci_toys(monkeypatch):
    """``--random-init`` toys with the tiny "ci" architecture, so CLI tests take seconds."""
    original = toymod.toy_bundle

    def small(name, **kw):
        kw["preset"] = "ci"
        return original(name, **kw)

    monkeypatch.setattr(toymod, "toy_bundle", small)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((32, 30, 3)) * 255).astype("uint8")).save(tmp_path / "img.png")
    mask = np.zeros((32, 30), dtype="uint8")
    mask[8:20, 8:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((20, 40), dtype="uint8")).save(tmp_path / "wide.png")
    return tmp_path


def _edit_args(files, *extra):
    return ["edit", "--model", "toy-sd3", "--random-init", "--image", str(files / "img.png"),
            "--source-prompt", "a red circle on a blue background",
            "--target-prompt", "a green circle on a blue background", "--steps", "4",
            "--output-dir", str(files / "out"), *extra]


def test_cli_edit_writes_pngs_and_a_complete_sidecar(files, ci_toys, capsys):
    """T22: ``edit --model toy-sd3`` writes the edit, reconstruction and mask PNGs, the cache, and a JSON with
    every key of spec §5 (random-init toy: the trained weights do not exist yet)."""
    assert main(_edit_args(files, "--mask", str(files / "mask.png"), "--save-cache", "--attn-steps", "2")) == 0
    out = files / "out"
    names = sorted(p.name for p in out.iterdir())
    assert {"img.edit.png", "img.rec.png", "img.mask.png", "img.json", "img.cache.safetensors"} <= set(names)
    meta = json.loads((out / "img.json").read_text())
    assert set(meta) >= SIDECAR_KEYS, SIDECAR_KEYS - set(meta)
    assert meta["versions"]["directedit"] and meta["nfe"]["calls"] == 8 and meta["K"] == 2
    assert meta["mask"]["provider"] == "user" and meta["mask"]["dilation_px"] == 1 and 0 < meta["mask"]["coverage"] < 1
    assert meta["image_size"] == [32, 30] and meta["padded_size"] == [32, 32]
    assert meta["reconstruction"]["max_abs_latent_err"] == 0.0 and meta["reconstruction"]["psnr_db"] > 100
    assert meta["world"] == "toy" and len(meta["sigmas"]) == 5
    assert Image.open(out / "img.edit.png").size == (30, 32)


def test_cli_bad_inputs_exit_nonzero_and_write_nothing(files, ci_toys, capsys):
    cases = [(("--mask", str(files / "missing.png")), "mask file not found"),
             (("--mask", str(files / "wide.png")), "aspect ratios differ"),
             (("--source-branch", "cached", "--no-snap"), "snap_source=True")]
    for extra, message in cases:
        assert main(_edit_args(files, *extra)) == 1
        assert message in capsys.readouterr().err
    args = _edit_args(files)
    args[args.index("--source-prompt") + 1] = "a red cat"
    assert main(args) == 1 and "cannot read the prompt" in capsys.readouterr().err
    args = _edit_args(files)
    args[args.index("--image") + 1] = str(files / "nothing.png")
    assert main(args) == 1 and "image file not found" in capsys.readouterr().err
    assert not (files / "out").exists()


def test_cli_missing_toy_weights_exit_2(files, monkeypatch, capsys):
    def missing(name, **kw):
        raise toymod.ToyWeightsMissing(f"no shipped weights for '{name}'")

    monkeypatch.setattr(toymod, "toy_bundle", missing)
    args = [a for a in _edit_args(files) if a != "--random-init"]
    assert main(args) == 2
    assert "no shipped weights for 'toy-sd3'" in capsys.readouterr().err
    assert main(["demo", "--quick", "--output-dir", str(files / "demo")]) == 2


def test_cli_reconstruct_and_compare(files, ci_toys, capsys):
    assert main(["reconstruct", "--model", "toy-flux", "--random-init", "--image", str(files / "img.png"),
                 "--source-prompt", "a red circle", "--steps", "4", "--output-dir", str(files / "rec"),
                 "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["psnr_db"] > 100 and summary["vae_ceiling_psnr_db"] > 100 and summary["nfe"] == 8
    assert main(["reconstruct", "--model", "toy-flux", "--random-init", "--image", str(files / "img.png"),
                 "--source-prompt", "a red circle", "--steps", "4", "--method", "naive",
                 "--output-dir", str(files / "rec2"), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["psnr_db"] < 80
    assert main(["compare", "--model", "toy-flux", "--random-init", "--image", str(files / "img.png"),
                 "--source-prompt", "a red circle", "--target-prompt", "a green circle", "--nfe", "8",
                 "--output-dir", str(files / "cmp"), "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["method"] for r in rows] == ["directedit", "naive_euler", "rf_solver", "fireflow", "flowedit"]
    assert all(r["calls"] == 8 for r in rows)
    written = {p.name for p in (files / "cmp").iterdir()}
    assert {"compare.json", "compare.md", "img.directedit.png", "img.flowedit.png"} <= written


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "directedit", "edit", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--source-branch" in out.stdout and "--attn-ratio" in out.stdout


@pytest.mark.parametrize("kind", ["sd3", "flux", "flux-kontext"])
def test_pipelines_invert_and_call_with_prompt_embeds(kind):
    """T22: tiny diffusers pipelines, converted with from_pipe, run invert() and __call__ from precomputed
    prompt embeddings."""
    pytest.importorskip("transformers")
    from directedit import DirectEditFluxKontextPipeline, DirectEditFluxPipeline, DirectEditSD3Pipeline
    from flowcore.testing import tiny_pipeline

    cls = {"sd3": DirectEditSD3Pipeline, "flux": DirectEditFluxPipeline,
           "flux-kontext": DirectEditFluxKontextPipeline}[kind]
    base = tiny_pipeline(kind)
    pipe = cls.from_pipe(base)
    assert isinstance(pipe, type(base)) and pipe.transformer is base.transformer
    if kind == "sd3":
        pe, _, pooled, _ = pipe.encode_prompt("a cat", None, None, do_classifier_free_guidance=False)
        npe, _, npooled, _ = pipe.encode_prompt("", None, None, do_classifier_free_guidance=False)
        emb = {"negative_prompt_embeds": npe, "negative_pooled_prompt_embeds": npooled}
    else:
        pe, pooled, _ = pipe.encode_prompt("a cat", None)
        emb = {}
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    inv = pipe.invert(image, num_inference_steps=4, prompt_embeds=pe, pooled_prompt_embeds=pooled, **emb)
    out = pipe(inversion=inv, num_inference_steps=4, prompt_embeds=pe, pooled_prompt_embeds=pooled,
               guidance_scale=2.0, output_type="pt", **emb)
    assert out.images.shape == (1, 3, 64, 64) and out.nfe.calls == 8
    assert torch.equal(out.result.reconstruction, inv.z0)
    out_pil = pipe(image=image, source_prompt="a cat", prompt="a dog", num_inference_steps=4, output_type="pil")
    assert out_pil.images[0].size == (64, 64) and len(out_pil.reconstructions) == 1
    with pytest.raises(ValueError, match="steps"):
        pipe(inversion=inv, num_inference_steps=6, prompt_embeds=pe, pooled_prompt_embeds=pooled, **emb)


def test_load_pipeline_for_toys(ci_toys):
    pytest.importorskip("transformers")
    from directedit import DirectEditFluxPipeline, load_pipeline

    pipe = load_pipeline("toy-flux", random_init=True)
    assert isinstance(pipe, DirectEditFluxPipeline)
    image = torch.rand(1, 3, 32, 32)
    out = pipe(image=image, source_prompt="a red circle", prompt="a green circle", num_inference_steps=4,
               output_type="pt", mask_image=torch.ones(1, 1, 32, 32))
    assert out.images.shape == (1, 3, 32, 32) and torch.equal(out.reconstructions, image)
