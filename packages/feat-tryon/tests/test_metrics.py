"""Spec §7 test 29: the demonstration metrics on synthetic images with hand-computed answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from feat_tryon.toy import TryOnScene, aggregate, build_scenes, paired, scene_metrics
from flowcore.images import dilate

WHITE, RED, BLUE, YELLOW = (240, 240, 240), (210, 30, 30), (30, 100, 235), (245, 230, 60)


def _paint(img, color, rows, cols):
    img[:, rows, cols] = torch.tensor(color, dtype=torch.float32).view(3, 1, 1) / 255


def _synthetic_scene():
    person = torch.zeros(3, 32, 32)
    _paint(person, WHITE, slice(0, 32), slice(0, 32))
    _paint(person, RED, slice(8, 24), slice(8, 24))
    garment = torch.zeros(1, 32, 32)
    garment[:, 8:24, 8:24] = 1
    sketch = torch.zeros(1, 32, 32)
    sketch[:, 8:24, 8:16] = 1  # shrinking: the right half is the removal region
    head = torch.zeros(1, 32, 32)
    head[:, 0:6, 12:20] = 1
    scene = TryOnScene(0, "shrink", None, SimpleNamespace(kind="scene"), None, person, person, person, garment,
                       sketch, sketch, head, "", ("red",), ("blue",), "blue", "yellow", "plain")
    out = person.clone()
    _paint(out, BLUE, slice(8, 24), slice(8, 16))       # the new item
    _paint(out, WHITE, slice(16, 24), slice(16, 24))    # half of the removal region cleaned ...
    _paint(out, WHITE, slice(8, 16), slice(16, 24))
    _paint(out, RED, slice(8, 16), slice(16, 24))       # ... the other half keeps the old red
    _paint(out, BLUE, slice(20, 22), slice(18, 20))     # 4 stray design pixels outside the sketch
    _paint(out, YELLOW, slice(10, 12), slice(10, 13))   # 6 motif pixels inside the sketch
    operating = torch.zeros(1, 32, 32)
    operating[:, 7:25, 7:25] = 1
    keep = operating[0] == 0
    out[0][keep] = out[0][keep] - 0.1                   # keep region off by 0.1 in the red channel
    return scene, out, operating


def test_29_hand_computed_metrics():
    scene, out, operating = _synthetic_scene()
    m = scene_metrics(out, scene, operating)
    # eroded M_p: rows 9..22 × cols 9..22 = 196 px; red residue rows 9..15 × cols 16..22 = 49 px
    assert m.residue == pytest.approx(49 / 196, abs=1e-9)
    assert m.residue_removal == pytest.approx(49 / 98, abs=1e-9)  # removal: rows 9..22 × cols 16..22
    # eroded M_s: rows 9..22 × cols 9..14 = 84 px, 6 of them yellow
    assert m.pixel_accuracy == pytest.approx(78 / 84, abs=1e-9)
    assert m.motif_fraction == pytest.approx(6 / 84, abs=1e-9)
    assert m.color_ok == 1.0
    # IoU of design pixels and M_s inside M, the 1-px band around M_s ignored: 78 / (84 + 4)
    assert m.sketch_iou == pytest.approx(78 / 88, abs=1e-9)
    want_psnr = 10 * math.log10(1 / (0.01 / 3))
    assert m.keep_psnr == pytest.approx(want_psnr, abs=1e-4)
    assert m.head_psnr == pytest.approx(want_psnr, abs=1e-4)


def test_29b_ground_truth_targets_score_perfectly_and_the_person_scores_residue():
    scenes = build_scenes(12)
    assert {s.category for s in scenes} >= {"same", "shrink", "grow", "accessory"}
    for s in scenes:
        # the operating area as the pipeline builds it (dilated by 1 px: an accessory's anti-aliased rim lies
        # outside its parsing label)
        union = dilate(torch.maximum(s.garment_mask, s.sketch_mask)[None], 1, shape="disk")[0]
        m = scene_metrics(s.target_image, s, union)
        if s.has_garment:
            assert m.residue == 0.0
            assert m.pattern_ok == 1.0
        assert m.color_ok == 1.0 and m.keep_psnr == pytest.approx(100.0)
        if s.category == "same" and s.person.garment.pattern == "plain":
            assert scene_metrics(s.person_image, s, union).residue == 1.0


def test_29c_aggregate_and_paired_bootstrap():
    scene, out, operating = _synthetic_scene()
    a = [scene_metrics(out, scene, operating)]
    b = [scene_metrics(scene.person_image, scene, operating)]
    agg = aggregate(a)
    assert agg["n"] == 1 and agg["residue"]["mean"] == pytest.approx(0.25)
    d = paired(a, b, "residue")
    assert d["mean"] == pytest.approx(0.25 - 1.0) and d["hi"] < 0
