"""flowcore.io: atomic writes, JSON conversion, PNG + sidecar results."""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flowcore.images import to_tensor
from flowcore.io import (
    atomic_write,
    load_tensors,
    package_versions,
    save_result,
    save_tensors,
    to_jsonable,
    write_json,
)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_bytes_str_and_callable(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    assert atomic_write(target, "héllo") == target
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    seen = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("via callable")

    atomic_write(tmp_path / "b.json", writer)
    assert (tmp_path / "b.json").read_text() == "via callable"
    assert seen[0].parent == tmp_path and seen[0].name.endswith(".json.tmp")  # same folder, suffix kept
    assert _no_temp_files(tmp_path) and _no_temp_files(tmp_path / "sub")


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and _no_temp_files(tmp_path)


def test_atomic_write_replaces_instead_of_overwriting(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old content")
    with open(target) as reader:  # a reader holding the old file keeps the old bytes (rename, not rewrite)
        atomic_write(target, "new")
        assert reader.read() == "old content"
    assert target.read_text() == "new"


class _Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Config:
    steps: int
    path: Path
    weights: torch.Tensor


def test_to_jsonable_and_write_json(tmp_path):
    obj = {
        "tensor": torch.tensor([[1.5, 2.0]]),
        "scalar": torch.tensor(3),
        "array": np.arange(3),
        "np_float": np.float32(0.25),
        "path": Path("/x/y.png"),
        "dtype": torch.float16,
        "config": _Config(4, Path("a"), torch.ones(2)),
        "enum": _Color.RED,
        "tuple": (1, 2),
        "nonfinite": [float("inf"), float("-inf"), float("nan")],
    }
    path = write_json(tmp_path / "o.json", obj)
    text = path.read_text()
    assert text.endswith("\n")

    def reject(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    loaded = json.loads(text, parse_constant=reject)
    assert loaded["tensor"] == [[1.5, 2.0]] and loaded["scalar"] == 3 and loaded["array"] == [0, 1, 2]
    assert loaded["np_float"] == 0.25 and loaded["path"] == "/x/y.png" and loaded["dtype"] == "torch.float16"
    assert loaded["config"] == {"steps": 4, "path": "a", "weights": [1.0, 1.0]}
    assert loaded["enum"] == "red" and loaded["tuple"] == [1, 2]
    assert loaded["nonfinite"] == ["inf", "-inf", "nan"]
    with pytest.raises(TypeError, match="cannot write object"):
        to_jsonable(object())


def test_save_result_single_image(tmp_path):
    image = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    meta = {"model_id": "toy-sd3", "seed": 7, "steps": 28, "prompt": "a red circle", "package": "flowcore"}
    json_path = save_result(tmp_path / "run", image, meta, extra_images={"mask": torch.ones(1, 1, 8, 10)})
    assert json_path == tmp_path / "run.json"
    record = json.loads(json_path.read_text())
    assert record["model_id"] == "toy-sd3" and record["seed"] == 7 and record["world"] == "toy"
    assert record["steps"] == 28 and record["prompt"] == "a red circle"
    assert record["outputs"] == ["run.png", "run.mask.png"]
    assert record["versions"]["torch"] == torch.__version__ and "diffusers" in record["versions"]
    assert "flowcore" in record["versions"]
    written = to_tensor(tmp_path / "run.png")
    assert (written - image).abs().max() <= 0.5 / 255 + 1e-6
    assert _no_temp_files(tmp_path)


def test_save_result_several_images_and_real_model(tmp_path):
    images = torch.zeros(3, 3, 4, 4)
    record = json.loads(save_result(tmp_path / "edit", images, {"model": "org/model", "lr": 1e-4}).read_text())
    assert record["outputs"] == ["edit-0.png", "edit-1.png", "edit-2.png"]
    assert all((tmp_path / name).is_file() for name in record["outputs"])
    assert record["model_id"] == "org/model" and "world" not in record and record["seed"] is None
    flagged = json.loads(save_result(tmp_path / "t", None, {"is_toy": True}).read_text())
    assert flagged["world"] == "toy" and flagged["outputs"] == []
    with pytest.raises(ValueError, match="extension"):
        save_result(tmp_path / "x.png", images, {})


def test_package_versions():
    versions = package_versions()
    assert set(versions) == {"flowcore", "torch", "diffusers"}
    assert versions["torch"] == torch.__version__
    assert package_versions("no-such-package-xyz") == {"no-such-package-xyz": None}


def test_atomic_write_gives_the_default_file_mode(tmp_path):
    import os

    from flowcore.io import atomic_write

    umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "x.txt", "hi")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_save_and_load_tensors_round_trip(tmp_path):
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    tensors = {"x": base.t(), "row": base[1], "half": torch.ones(2, dtype=torch.float16, requires_grad=True)}
    meta = {"format": 3, "path": tmp_path, "nested": {"v": torch.tensor([1.5])}, "bad": float("nan")}
    path = save_tensors(tmp_path / "thing", tensors, tag="pkg", meta=meta, sidecar=True)
    assert path == tmp_path / "thing.safetensors" and _no_temp_files(tmp_path)
    assert json.loads((tmp_path / "thing.json").read_text())["nested"] == {"v": [1.5]}
    for name in (path, tmp_path / "thing"):  # the suffix may be left out
        loaded, back = load_tensors(name, tag="pkg", format=3)
        assert set(loaded) == set(tensors)
        assert all(torch.equal(loaded[k], tensors[k].detach()) and loaded[k].dtype == tensors[k].dtype
                   for k in tensors)
        assert back == {"format": 3, "path": str(tmp_path), "nested": {"v": [1.5]}, "bad": "nan"}
    assert save_tensors(tmp_path / "plain.safetensors", tensors, tag="pkg", meta=meta).name == "plain.safetensors"
    assert not (tmp_path / "plain.json").exists()  # no sidecar unless asked


def test_load_tensors_clear_errors(tmp_path):
    save_tensors(tmp_path / "a", {"x": torch.zeros(2)}, tag="pkg", meta={"format": 1})
    with pytest.raises(FileNotFoundError, match=r"pkg cache not found: .*nothing"):
        load_tensors(tmp_path / "nothing", tag="pkg", format=1, what="pkg cache")
    with pytest.raises(ValueError, match=r"is not a other file .*'other'"):
        load_tensors(tmp_path / "a", tag="other", format=1)
    with pytest.raises(ValueError, match="of format 1, but this version reads format 2"):
        load_tensors(tmp_path / "a", tag="pkg", format=2)
    save_tensors(tmp_path / "b", {"x": torch.zeros(2)}, tag="pkg", meta={"version": 1})
    with pytest.raises(ValueError, match="of format None"):
        load_tensors(tmp_path / "b", tag="pkg", format=1)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error for a corrupt file
        load_tensors(tmp_path / "junk.safetensors", tag="pkg", format=1)
