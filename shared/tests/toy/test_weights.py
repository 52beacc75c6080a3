"""Weights (toyworld.md §8.7, §10.1): export → MANIFEST → offline, verified load; and the shipped weights."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from flowcore.toy import bundle as bundle_module
from flowcore.toy.bundle import (
    MANIFEST_NAME,
    WEIGHTS_FOLDER,
    ToyWeightsCorrupted,
    ToyWeightsMissing,
    load,
    manifest,
    verify,
    weights_root,
)
from flowcore.toy.export import export_run, weights_size
from flowcore.toy.models import model_config
from flowcore.toy.trainer import train

CI = dict(preset="ci", device="cpu", print_every_s=1e9)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """Tiny ci runs of every part, exported into a temporary weights root."""
    runs, root = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("weights")
    train("toy-clip", runs / "clip", steps=1, clip_from="random", **CI)
    clip = str(runs / "clip")
    train("toy-sd3", runs / "sd3", steps=2, clip_from=clip, **CI)
    train("toy-unet", runs / "unet", steps=1, clip_from=clip, **CI)
    train("toy-unet-controlnet", runs / "cn", steps=1, clip_from=clip, unet_from=str(runs / "unet"), **CI)
    train("toy-unet-ip-adapter", runs / "ip", steps=1, clip_from=clip, unet_from=str(runs / "unet"), **CI)
    for run, name in (("clip", "toy-clip"), ("sd3", "toy-sd3"), ("unet", "toy-unet"), ("cn", "toy-unet"),
                      ("ip", "toy-unet")):
        export_run(runs / run, name, weights_dir=root, gates=False)
    return root


@pytest.fixture
def use_root(monkeypatch, exported):
    monkeypatch.setenv("FLOWCORE_TOY_WEIGHTS", str(exported))
    bundle_module._VERIFIED.clear()
    return exported


def test_export_writes_the_layout_and_manifest(use_root):
    data = json.loads((use_root / MANIFEST_NAME).read_text())
    assert set(data["models"]) == {"toy-clip", "toy-sd3", "toy-unet"}
    sd3 = data["models"]["toy-sd3"]
    assert sd3["dtype_stored"] == "float16" and sd3["gates"] is None and sd3["recipe"] == "toy-sd3@1+ci"
    assert sd3["steps"] == 2 and sd3["finished"] is True and len(sd3["recipe_sha256"]) == 64
    assert {"transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json"} <= set(sd3["files"])
    unet = data["models"]["toy-unet"]
    assert set(unet["parts"]) == {"unet", "controlnet", "ip_adapter"}
    assert "ip_adapter/ip_adapter.safetensors" in unet["files"]
    clip = data["models"]["toy-clip"]
    assert {"text_encoder", "image_encoder", "tokenizer"} == {f.split("/")[0] for f in clip["files"]}
    from safetensors.torch import load_file

    stored = load_file(use_root / "toy-sd3/transformer/diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}


def test_load_is_offline_fp32_and_runs(use_root, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access attempted during load")

    monkeypatch.setattr(socket, "socket", no_network)
    sd3 = load("toy-sd3")
    assert sd3.denoiser.dtype == torch.float32 and sd3.manifest_sha256 is not None
    assert dict(sd3.denoiser.config)["num_layers"] == model_config("sd3", "ci")["num_layers"]
    assert sd3.generate("a red circle", steps=2).shape == (1, 3, 32, 32)
    unet = load("toy-unet", controlnet=True, ip_adapter=True)
    assert unet.controlnet is not None and unet.ip_adapter and unet.image_encoder is not None
    image = torch.rand(1, 3, 32, 32)
    out = unet.generate("a red circle", steps=2, image=image, ip_image=image)
    assert torch.isfinite(out).all()


def test_toy_clip_scores(use_root):
    from flowcore.toy.bundle import clip_image_similarity, clip_score
    from flowcore.toy.render import render
    from flowcore.toy.scene import sample_scene

    scenes = [sample_scene(0, i, "test") for i in range(3)]
    images = render(scenes)
    scores = clip_score(images, [s.caption() for s in scenes])
    assert scores.shape == (3,) and (scores >= 0).all() and (scores <= 100).all()
    same = clip_image_similarity(images, images)
    assert torch.allclose(same, torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="3 images and 2 texts"):
        clip_score(images, ["a red circle", "a blue square"])


def test_corrupted_file_names_the_fix(use_root, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(use_root, copy)
    target = copy / "toy-sd3/transformer/diffusion_pytorch_model.safetensors"
    payload = bytearray(target.read_bytes())
    payload[-1] ^= 0xFF
    target.write_bytes(bytes(payload))
    monkeypatch.setenv("FLOWCORE_TOY_WEIGHTS", str(copy))
    with pytest.raises(ToyWeightsCorrupted, match="git checkout"):
        load("toy-sd3")
    with pytest.raises(ToyWeightsCorrupted):
        verify()
    assert load("toy-sd3", verify=False).denoiser is not None


def test_missing_weights_name_the_training_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCORE_TOY_WEIGHTS", str(tmp_path / "empty"))
    with pytest.raises(ToyWeightsMissing, match=r"python -m flowcore\.toy train --model toy-kontext-a"):
        load("toy-flux")
    assert manifest()["models"] == {}


def test_export_refuses_to_exceed_the_size_limit(use_root, tmp_path):
    runs = tmp_path / "runs"
    train("toy-sd3", runs / "sd3", steps=1, clip_from="random", **CI)
    before = (use_root / MANIFEST_NAME).read_text()
    with pytest.raises(ValueError, match="over the"):
        export_run(runs / "sd3", "toy-sd3", weights_dir=use_root, gates=False, limit_mb=0.05)
    assert (use_root / MANIFEST_NAME).read_text() == before
    with pytest.raises(ValueError, match="belongs to toy-sd3"):
        export_run(runs / "sd3", "toy-unet", weights_dir=use_root, gates=False)


# --- the shipped weights (skipped until MANIFEST.json has an entry) --------------------------------------------
def _shipped() -> dict:
    bundle_module._VERIFIED.clear()
    return manifest()["models"]


def _require_shipped() -> dict:
    models = _shipped()
    if not models:
        pytest.skip(f"no shipped toy weights yet: {weights_root() / MANIFEST_NAME} has no entries "
                    "(train and export them: python -m flowcore.toy train/export)")
    return models


def test_shipped_sha256_and_size():
    models = _require_shipped()
    verify()
    assert weights_size(weights_root()) <= 25e6
    for entry in models.values():
        assert entry["dtype_stored"] == "float16"


def test_shipped_load_offline_and_config_is_recipe(monkeypatch):
    models = _require_shipped()

    def no_network(*args, **kwargs):
        raise OSError("network access attempted during load")

    monkeypatch.setattr(socket, "socket", no_network)
    for name, folder in WEIGHTS_FOLDER.items():
        if folder not in models:
            continue
        bundle = load(name)
        preset = models[folder].get("preset", "full")
        part = {"toy-clip": "text_encoder", "toy-sd3": "sd3", "toy-kontext": "flux", "toy-flux": "flux",
                "toy-unet": "unet"}[name]
        module = bundle.text_encoder if name == "toy-clip" else bundle.denoiser
        config = dict(module.config)
        for key, value in model_config(part, preset).items():
            stored = config[key]
            assert (list(stored) if isinstance(stored, (list, tuple)) else stored) == (
                list(value) if isinstance(value, (list, tuple)) else value), (name, key)
