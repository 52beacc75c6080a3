"""The dataset builder (§7 test 16): messy photo folders, determinism, resume, skip log; toy scenes."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import style_attr.dataset as dataset_module
from style_attr.dataset import DatasetError, StyleDataset, build_dataset, load_content_image
from style_attr.filters import canny_edges, get_family


def _photo_folder(root):
    rng = np.random.default_rng(1)
    root.mkdir()
    for k, (h, w) in enumerate([(40, 60), (61, 45), (33, 33)]):
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        arr[h // 3: h // 2, :] = 20  # a dark bar gives Canny something to find
        Image.fromarray(arr).save(root / f"img{k}.jpg" if k != 1 else root / f"img{k}.png")
    Image.fromarray(np.concatenate([(rng.random((50, 50, 3)) * 255).astype(np.uint8),
                                    np.full((50, 50, 1), 200, np.uint8)], axis=2), "RGBA").save(root / "rgba.png")
    Image.fromarray((rng.random((44, 52)) * 255).astype(np.uint8), "L").save(root / "grey.png")
    Image.fromarray((rng.random((38, 41)) * 65535).astype(np.uint16)).save(root / "deep16.png")
    (root / "broken.png").write_bytes(b"this is not a png")
    (root / "img0-copy.jpg").write_bytes((root / "img0.jpg").read_bytes())
    (root / "notes.md").write_text("not an image")
    (root / "img1.txt").write_text("a sidecar caption")
    (root / "captions.jsonl").write_text(json.dumps({"file": "grey.png", "caption": "a grey photo"}) + "\n")
    return root


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.suffix in (".safetensors", ".jsonl") or p.name == "manifest.json"}


def test_folder_build_records_edges_reference_and_skips(tmp_path, caplog):
    images = _photo_folder(tmp_path / "photos")
    with caplog.at_level(logging.WARNING, logger="style_attr.dataset"):
        manifest = build_dataset(tmp_path / "ds", family="outline", images=images, renditions=3, resolution=32,
                                 shard_size=4, seed=3)
    assert manifest["num_content"] == 6 and manifest["num_records"] == 18
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert "unreadable" in reasons["broken.png"]
    assert "duplicate" in reasons.get("img0.jpg", reasons.get("img0-copy.jpg", ""))  # whichever sorts second
    assert "not an image" in reasons["notes.md"]
    assert "broken.png" in caplog.text
    assert (tmp_path / "ds" / "skipped.jsonl").is_file()
    shard = load_file(str(tmp_path / "ds" / "shard-00000.safetensors"))
    assert shard["content"].dtype == torch.uint8 and shard["target"].shape == (4, 3, 3, 32, 32)
    assert shard["lam"].shape == (4, 3, 1) and shard["edges"].shape == (4, 1, 32, 32)
    content = shard["content"].float() / 255
    assert torch.equal(shard["edges"], (canny_edges(content) * 255).round().to(torch.uint8))
    ref = (get_family("outline")(content, 0.0).clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(shard["reference"], ref)
    r = 1
    lam = shard["lam"][0, r]
    want = (get_family("outline")(content[:1], lam[None].double()).clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(shard["target"][0, r], want[0])
    records = [json.loads(x) for x in (tmp_path / "ds" / "shard-00000.jsonl").read_text().splitlines()]
    captions = {rec["source"]: rec["caption"] for rec in records}
    assert captions.get("img1.png") == "a sidecar caption" or captions.get("grey.png") == "a grey photo"
    ds = StyleDataset(tmp_path / "ds")
    assert len(ds) == 18
    batch = ds.batch([0, 5, 17])
    assert batch["target"].shape == (3, 3, 32, 32) and batch["edges"].shape == (3, 3, 32, 32)
    assert len(batch["captions"]) == 3


def test_rebuild_is_byte_identical_and_resume_is_idempotent(tmp_path, monkeypatch):
    images = _photo_folder(tmp_path / "photos")
    kwargs = dict(family="contrast", images=images, renditions=2, resolution=24, shard_size=2, seed=1)
    build_dataset(tmp_path / "a", **kwargs)
    build_dataset(tmp_path / "b", **kwargs)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")

    real = dataset_module._write_shard
    calls = {"n": 0}

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kw)

    monkeypatch.setattr(dataset_module, "_write_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(tmp_path / "c", **kwargs)
    monkeypatch.setattr(dataset_module, "_write_shard", real)
    assert (tmp_path / "c" / "progress.json").is_file() and not (tmp_path / "c" / "manifest.json").exists()
    with pytest.raises(DatasetError, match="resume"):
        build_dataset(tmp_path / "c", **kwargs)
    build_dataset(tmp_path / "c", resume=True, **kwargs)
    assert _hashes(tmp_path / "c") == _hashes(tmp_path / "a")
    build_dataset(tmp_path / "c", resume=True, **kwargs)  # a finished build resumes to the same bytes
    assert _hashes(tmp_path / "c") == _hashes(tmp_path / "a")


def test_toy_build_uses_edge_map_and_exact_captions(tmp_path):
    from flowcore.toy import edge_map, sample_scene

    manifest = build_dataset(tmp_path / "toy", family="watercolor", toy=3, renditions=2, seed=0)
    assert manifest["edges"]["kind"] == "edge_map" and manifest["resolution"] == 32
    shard = load_file(str(tmp_path / "toy" / "shard-00000.safetensors"))
    scene = sample_scene(0, 1, "train")
    img = scene.render(size=32)
    assert torch.equal(shard["content"][1], (img * 255).round().to(torch.uint8))
    assert torch.equal(shard["edges"][1, 0], (edge_map(img)[0] * 255).round().to(torch.uint8))
    assert shard["lam"].shape == (3, 2, 4)
    one_hot = (shard["lam"] > 0).sum(-1)
    assert ((one_hot == 1) | (one_hot == 4)).all()
    rec = json.loads((tmp_path / "toy" / "shard-00000.jsonl").read_text().splitlines()[1])
    assert rec["caption"] == scene.caption("full")


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="exactly one"):
        build_dataset(tmp_path / "x", family="outline")
    with pytest.raises(ValueError, match="unknown filter family"):
        build_dataset(tmp_path / "x", family="sepia", toy=2)
    with pytest.raises(DatasetError, match="not a folder"):
        build_dataset(tmp_path / "x2", family="outline", images=tmp_path / "missing")
    with pytest.raises(DatasetError, match="build-dataset"):
        StyleDataset(tmp_path / "empty")


def test_load_content_image_is_centre_crop(tmp_path):
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, 20:40] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    img = load_content_image(tmp_path / "wide.png", 20)
    assert img.shape == (3, 20, 20) and img.mean() > 0.95
