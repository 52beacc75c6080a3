"""Seeded scene sampling (toyworld.md §2.3, §2.5) and the scene data classes."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
import torch

from flowcore.toy.constants import COLORS, PALETTE, POSITIONS, SHAPES, SIZE_NAMES
from flowcore.toy.render import render
from flowcore.toy.scene import (
    Background,
    Obj,
    Scene,
    SceneConfig,
    SceneSampler,
    ToySceneError,
    sample_scene,
)
from flowcore.toy.seeding import rng_for

N_SAMPLES = 10_000


@pytest.fixture(scope="module")
def samples():
    return [sample_scene(0, i, "train") for i in range(N_SAMPLES)]


def test_same_arguments_same_scene():
    for i in (0, 1, 17, 99_999):
        assert sample_scene(3, i, "val") == sample_scene(3, i, "val")
    assert sample_scene(3, 0) != sample_scene(4, 0)
    assert len({repr(sample_scene(3, i)) for i in range(200)}) == 200


def test_splits_are_disjoint_streams():
    draws = {split: {tuple(rng_for(0, i, split, "scene").random(4)) for i in range(2000)}
             for split in ("train", "val", "test")}
    assert not draws["train"] & draws["val"] and not draws["train"] & draws["test"] and not draws["val"] & draws["test"]
    differ = sum(sample_scene(0, i, "train") != sample_scene(0, i, "test") for i in range(500))
    assert differ == 500
    with pytest.raises(ValueError, match="split"):
        sample_scene(0, 0, "dev")


def _bbox(obj: Obj) -> tuple[float, float, float, float]:
    (cx, cy), half = obj.center, obj.side / 2
    return cx - half, cy - half, cx + half, cy + half


def test_constraints_hold_on_10000_samples(samples):
    counts: Counter = Counter()
    for scene in samples:
        objs, bg = scene.objects, scene.background
        assert len(objs) in (1, 2)
        assert len({o.cell for o in objs}) == len(objs)
        assert len({o.color for o in objs}) == len(objs)
        assert all(o.color != bg.color for o in objs)
        assert [o.cell_index for o in objs] == sorted(o.cell_index for o in objs)  # stored in cell order
        for o in objs:
            assert all(isinstance(k, int) and -4 <= k <= 4 for k in o.jitter)
            x0, y0, x1, y1 = _bbox(o)
            assert x0 > 0 and y0 > 0 and x1 < 1 and y1 < 1
            counts.update([o.shape, o.color, o.size, o.cell])
        if len(objs) == 2:  # bounding boxes keep a gap of at least 0.7 px at 32 px
            a, b = _bbox(objs[0]), _bbox(objs[1])
            gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
            assert gap * 32 >= 0.7
        if bg.gradient:
            assert 0.05 <= bg.gradient <= 0.3 and bg.toward != bg.color
            counts["gradient"] += 1
        counts[f"n{len(objs)}"] += 1
    n = len(samples)
    assert abs(counts["n1"] / n - 0.4) < 0.02
    assert abs(counts["gradient"] / n - 0.3) < 0.02
    for value in (*SHAPES, *COLORS, *SIZE_NAMES, *POSITIONS):
        assert counts[value] > 0, value


def test_scene_sampler_batch():
    sampler = SceneSampler(None, seed=5, split="test")
    images, captions, scenes = sampler.batch([4, 0, 9])
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert scenes == [sample_scene(5, i, "test") for i in (4, 0, 9)]
    assert captions == [s.caption() for s in scenes]
    assert torch.equal(images, render(scenes))
    again = sampler.batch([4, 0, 9])
    assert torch.equal(again[0], images) and again[1] == captions
    mixed = SceneSampler(seed=5, split="test", captions="mix").batch(range(300))[1]
    assert 0.05 < sum(c == "" for c in mixed) / 300 < 0.16  # 10% CFG dropout
    assert mixed == SceneSampler(seed=5, split="test", captions="mix").batch(range(300))[1]


def test_scene_config_restricts_sampling():
    config = SceneConfig(n_objects=1, gradient_prob=0.0, shapes=("cross",), colors=("red", "blue"), size=16)
    scenes = [sample_scene(0, i, config=config) for i in range(200)]
    assert all(len(s.objects) == 1 and s.objects[0].shape == "cross" and s.background.gradient == 0 for s in scenes)
    assert {s.background.color for s in scenes} == {"red", "blue"}
    images, _, _ = SceneSampler(config, seed=0).batch([0, 1])
    assert images.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="colours"):
        SceneConfig(n_objects=2, colors=("red", "blue"))
    with pytest.raises(ValueError, match="shapes"):
        SceneConfig(shapes=("hexagon",))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Scene((Obj("circle", "red", "small", "center"), Obj("square", "blue", "small", "center")),
                       Background("green")), "one cell"),
        (lambda: Scene((Obj("circle", "red", "small", "center"), Obj("square", "red", "small", "top left")),
                       Background("green")), "distinct"),
        (lambda: Scene((Obj("circle", "green", "small", "center"),), Background("green")), "background"),
        (lambda: Scene((), Background("green")), "1 or 2"),
        (lambda: Scene(tuple(Obj("circle", c, "small", p) for c, p in zip(COLORS[:3], POSITIONS)),
                       Background("white")), "1 or 2"),
        (lambda: Obj("hexagon", "red", "small", "center"), "shape"),
        (lambda: Obj("circle", "pink", "small", "center"), "color"),
        (lambda: Obj("circle", "red", "tiny", "center"), "size"),
        (lambda: Obj("circle", "red", "small", "upper left"), "cell"),
        (lambda: Obj("circle", "red", "small", "center", (5, 0)), "jitter"),
        (lambda: Background("green", 1.5), "gradient"),
        (lambda: Background("green", 0.1, "grey"), "gradient target"),
    ],
)
def test_impossible_scenes_raise(build, message):
    with pytest.raises(ToySceneError, match=message):
        build()


def test_dict_round_trip_and_edits_return_new_scenes(samples):
    for scene in samples[:200]:
        assert Scene.from_dict(scene.to_dict()) == scene
    scene = Scene((Obj("circle", "red", "small", 4),), Background("green", 0.1, "black"))
    assert scene.objects[0].cell == "center"
    added = scene.add(Obj("square", "blue", "large", "top left", (1, -1)))
    assert len(added.objects) == 2 and len(scene.objects) == 1
    assert added.remove(0).objects == (Obj("square", "blue", "large", "top left", (1, -1)),)
    assert scene.with_background(color="white").background == Background("white", 0.1, "black")
    assert scene.replace_object(0, size="large").objects[0].size == "large"
    with pytest.raises(ToySceneError):
        added.replace_object(1, cell="center")
    with pytest.raises(dataclasses.FrozenInstanceError):
        scene.background = Background("red")  # type: ignore[misc]


def test_object_geometry():
    obj = Obj("circle", "red", "large", "bottom right", (4, -4))
    assert obj.side == 0.28
    assert math.isclose(obj.center[0], 2.5 / 3 + 4 / 256) and math.isclose(obj.center[1], 2.5 / 3 - 4 / 256)
    assert PALETTE[obj.color] == (210, 30, 30)
