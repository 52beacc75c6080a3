"""The §6 demonstration machinery: scenes, row runner, acceptance logic, files (random weights: plumbing only)."""

from __future__ import annotations

import json

import pytest
import torch

from feat_tryon.demo import acceptance, load_toy, run_demo, run_rows
from feat_tryon.toy import SceneMetrics, aggregate, build_scenes


def test_scene_mix_and_invariants():
    scenes = build_scenes(40)
    cats = [s.category for s in scenes]
    assert (cats.count("same"), cats.count("shrink"), cats.count("grow"), cats.count("accessory")) == (16, 12, 6, 6)
    for s in scenes:
        assert s.main_color not in s.old_palette
        if s.category == "shrink":
            assert bool((s.garment_mask > s.sketch_mask).any())
        if s.category == "accessory":
            assert not s.has_garment and bool(s.sketch_mask.any())
            item = "hat" if s.target.hat != s.person.hat else "bag"
            assert getattr(s.person, item) is None and getattr(s.target, item) == s.main_color
        if s.category == "same":
            assert torch.equal(s.garment_mask, s.sketch_mask)
    kinds = [s.design.kind for s in build_scenes(60)]
    assert {"swatch", "tile", "scene"} <= set(kinds)


def test_run_rows_plumbing_and_per_category_calls():
    adapter = load_toy("toy-unet", random_init=True, preset="ci")
    scenes = build_scenes(4)  # same, shrink, grow, accessory
    res = run_rows(adapter, scenes, [("feat", "feat", {}), ("baseline", "baseline", {})], steps=1, batch=4)
    feat = res["feat"]
    assert len(feat["metrics"]) == 4 and feat["aggregate"]["finite"]
    assert feat["unet_samples_per_step_per_scene"]["accessory"] == 2.0
    assert feat["unet_samples_per_step_per_scene"]["shrink"] == 4.0
    assert res["baseline"]["unet_samples_per_step_per_scene"]["shrink"] == 2.0
    assert feat["ofr_noop"]["accessory"] == 1.0 and feat["ofr_noop"]["shrink"] == 0.0


def _rows(residue, psnr=40.0, n=6):
    return [SceneMetrics(i, "shrink", "swatch", residue, residue, 0.95, 1.0, 1.0, 0.9, psnr, psnr, 0.0, True)
            for i in range(n)]


def _result(residue, psnr=40.0):
    metrics = _rows(residue, psnr)
    return {"metrics": metrics, "aggregate": aggregate(metrics), "unet_samples_per_step_per_scene": {},
            "ofr_noop": {}}


def test_acceptance_items_pass_and_fail():
    good = {"feat": _result(0.01), "baseline": _result(0.5), "no_ofr": _result(0.4), "no_ranf": _result(0.01, 20.0)}
    checks = {c["item"]: c["pass"] for c in acceptance(good)}
    assert checks["1 residue @1.0"] and checks["3 keep PSNR"] and checks["4 fidelity"]
    bad = {**good, "feat": _result(0.2)}
    assert not {c["item"]: c["pass"] for c in acceptance(bad)}["1 residue @1.0"]
    leaky = {**good, "no_ranf": _result(0.01, 39.0)}  # no_ranf must lose ≥ 10 dB against feat
    assert not {c["item"]: c["pass"] for c in acceptance(leaky)}["3 keep PSNR"]


def test_quick_demo_writes_its_files(tmp_path):
    summary = run_demo(tmp_path, n=4, steps=1, quick=True, random_init=True, toy_preset="ci")
    for name in ("results.json", "table.md", "grid.png", "grid.json"):
        assert (tmp_path / name).is_file(), name
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["rows"]) == {"feat", "baseline"} and data["random_init"] is True
    assert [c["item"] for c in summary["acceptance"]] == ["quick: finite outputs", "quick: keep PSNR ≥ 30 dB"]
    assert "RANDOM WEIGHTS" in (tmp_path / "table.md").read_text()


@pytest.mark.slow
def test_full_demo_plumbing_with_flow(tmp_path):
    summary = run_demo(tmp_path, n=8, steps=2, quick=False, flow=True, random_init=True, toy_preset="ci")
    items = [c["item"] for c in summary["acceptance"]]
    assert items[:2] == ["1 residue @1.0", "2 residue @0.8"] and "5 content dial" in items
    assert (tmp_path / "flow_results.json").is_file() and (tmp_path / "routing.json").is_file()
