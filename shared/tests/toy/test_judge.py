"""The scene judge and the scores built on it (toyworld.md §6; gates J1, J2 of §9)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from flowcore.toy.constants import COLORS, EDIT_KINDS, POSITIONS, SHAPES, SIZE_NAMES
from flowcore.toy.edits import sample_edit
from flowcore.toy.judge import alignment, edit_success, read_scene, rerender_psnr
from flowcore.toy.render import render
from flowcore.toy.scene import Background, Obj, ObjSpec, Scene, SceneSpec, sample_scene


def _gate(n: int, degrade: bool) -> tuple[float, float]:
    """(attribute accuracy, all-correct rate) of alignment with the full caption on test scenes 0..n-1."""
    scenes = [sample_scene(0, i, "test") for i in range(n)]
    images = render(scenes).double().numpy()
    if degrade:  # J2: blur σ 0.5 + noise σ 0.03
        noise = np.random.default_rng(0).normal(0.0, 0.03, images.shape)
        images = np.clip(ndimage.gaussian_filter(images, (0, 0, 0.5, 0.5)) + noise, 0, 1)
    results = alignment(images, [s.caption() for s in scenes])
    confirmed = sum(c.confirmed for r in results for c in r.claims)
    total = sum(len(r.claims) for r in results)
    return confirmed / total, sum(r.strict for r in results) / n


def test_all_correct_on_300_clean_scenes():
    scenes = [sample_scene(0, i, "test") for i in range(300)]
    readings = read_scene(render(scenes))
    for scene, reading in zip(scenes, readings):
        assert reading.to_scene().spec() == scene.spec()
        assert reading.background == scene.background.color
    attribute, all_correct = _gate(300, degrade=False)
    assert attribute == 1.0 and all_correct == 1.0


def test_j2_blur_and_noise():
    attribute, _ = _gate(300, degrade=True)
    assert attribute >= 0.99


@pytest.mark.slow
def test_j1_gate_2000_clean_scenes():
    attribute, all_correct = _gate(2000, degrade=False)
    assert attribute >= 0.999 and all_correct >= 0.995


@pytest.mark.slow
def test_j2_gate_2000_scenes():
    attribute, _ = _gate(2000, degrade=True)
    assert attribute >= 0.99


def test_alignment_is_one_on_ground_truth():
    for i in range(40):
        scene = sample_scene(1, i, "test")
        result = alignment(scene.render(), scene.caption())
        assert result.score == 1.0 and result.strict
        assert set(result.accuracies) == {"background", "count", "shape", "color", "size", "position"}
        assert len(result.claims) == 2 + 4 * len(scene.objects)


def _other(values, current):
    return next(v for v in values if v != current)


def test_one_wrong_attribute_removes_exactly_one_claim():
    for i in range(30):
        scene = sample_scene(2, i, "test")
        image = scene.render()
        spec = scene.spec()
        n_claims = 2 + 4 * len(spec.objects)
        used = {o.color for o in scene.objects} | {scene.background.color}
        variants = {"background": dataclasses.replace(spec, background=_other(COLORS, spec.background))}
        obj = spec.objects[-1]
        for field, values in (("shape", SHAPES), ("size", SIZE_NAMES), ("position", POSITIONS),
                              ("color", [c for c in COLORS if c not in used])):
            wrong = dataclasses.replace(obj, **{field: _other(values, getattr(obj, field))})
            if field == "position" and any(o.position == wrong.position for o in spec.objects):
                continue  # moving onto the other object's cell could make the matching swap
            variants[field] = dataclasses.replace(spec, objects=(*spec.objects[:-1], wrong))
        for field, wrong_spec in variants.items():
            result = alignment(image, wrong_spec)
            failed = [c for c in result.claims if not c.confirmed]
            assert len(failed) == 1 and failed[0].type == field, (field, failed)
            assert math.isclose(result.score, (n_claims - 1) / n_claims) and not result.strict


def test_swapping_two_objects_colours_breaks_strict():
    scene = Scene((Obj("circle", "red", "medium", "top left"), Obj("square", "blue", "large", "bottom right")),
                  Background("white"))
    swapped = "a medium blue circle in the top left and a large red square in the bottom right on a white background"
    assert alignment(scene.render(), scene.caption()).strict
    result = alignment(scene.render(), swapped)
    assert not result.strict and result.accuracies["color"] == 0.0 and result.accuracies["shape"] == 1.0


def test_partial_captions_and_missing_objects():
    scene = Scene((Obj("circle", "red", "medium", "top left"),), Background("white"))
    image = scene.render()
    assert alignment(image, "a circle").strict
    two = alignment(image, SceneSpec((ObjSpec("circle"), ObjSpec("square")), None))
    assert not two.strict and two.matching[0] == 0 and two.matching[1] is None
    assert two.accuracies["count"] == 0.0 and two.accuracies["shape"] == 0.5


def test_reading_api_batched_and_numpy():
    scenes = [sample_scene(3, i) for i in range(3)]
    images = render(scenes)
    readings = read_scene(images)
    assert isinstance(readings, list) and len(readings) == 3
    single = read_scene(images[0].numpy())
    assert single == readings[0] and read_scene(images[:1]) == [readings[0]]
    with pytest.raises(ValueError, match="RGB"):
        read_scene(torch.zeros(1, 32, 32))
    blank = read_scene(torch.full((3, 32, 32), 0.5))
    assert blank.objects == ()


def test_reading_recovers_gradient_and_rerender_psnr():
    scene = Scene((Obj("diamond", "yellow", "large", "center", (2, -3)),), Background("blue", 0.25, "black"))
    reading = read_scene(scene.render())
    assert reading.gradient == pytest.approx(0.25, abs=0.01) and reading.toward == "black"
    assert reading.objects[0].to_obj().jitter == (2, -3)
    psnr = [rerender_psnr(sample_scene(5, i, "test").render()) for i in range(30)]
    assert min(psnr) > 30
    noisy = (scene.render() + 0.05 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert 20 < rerender_psnr(noisy) < 30


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edit_success_on_target_and_on_unedited_source(kind):
    for i in range(8):
        pair = sample_edit(0, i, "test", kinds=(kind,))
        good = edit_success(pair.target_image, pair)
        assert good.success and good.edit_ok and good.preserve_ok and good.bg_psnr == 60.0
        untouched = edit_success(pair.source_image, pair)
        assert not untouched.success and not untouched.edit_ok and untouched.preserve_ok
    batch = edit_success(torch.stack([pair.target_image, pair.source_image]), [pair, pair])
    assert [r.success for r in batch] == [True, False]


def test_edit_success_detects_a_broken_background():
    pair = sample_edit(0, 1, "test", kinds=("color",))
    damaged = pair.target_image.clone()
    keep = ~pair.region_mask[0]
    damaged[:, keep] = (damaged[:, keep] + 0.1).clamp(0, 1)
    result = edit_success(damaged, pair)
    assert result.bg_psnr < 25
    with pytest.raises(ValueError, match="px"):
        edit_success(render(pair.target, 16)[0], pair)
