"""Exact edit pairs (toyworld.md §3)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from flowcore.toy.constants import EDIT_KINDS
from flowcore.toy.edits import (
    IDENTITY_KIND,
    Edit,
    EditPair,
    make_edit,
    parse_instruction,
    sample_edit,
    sample_training_edit,
)
from flowcore.toy.scene import (
    Background,
    Obj,
    Scene,
    ToyGrammarError,
    ToySceneError,
    parse_caption,
)

PAIRS_PER_KIND = 25
OBJECT_FIELDS = ("shape", "color", "size", "cell", "jitter")


@pytest.fixture(scope="module", params=EDIT_KINDS)
def pairs(request) -> list[EditPair]:
    return [sample_edit(0, i, "test", kinds=(request.param,)) for i in range(PAIRS_PER_KIND)]


def test_pixel_mask_within_region_and_renders_identical_outside(pairs):
    for pair in pairs:
        pixel, region = pair.pixel_mask, pair.region_mask
        assert pixel.shape == region.shape == (1, 32, 32) and pixel.dtype == region.dtype == torch.bool
        assert not (pixel & ~region).any()
        assert pixel.any(), pair.instruction  # every edit is visible
        outside = ~region[0]
        assert torch.equal(pair.source_image[:, outside], pair.target_image[:, outside])


def _changed_fields(a: Obj, b: Obj) -> set[str]:
    return {f for f in OBJECT_FIELDS if getattr(a, f) != getattr(b, f)}


def test_exactly_the_declared_attribute_changes(pairs):
    for pair in pairs:
        src, tgt, i = pair.source, pair.target, pair.edited_object
        if pair.kind == "background":
            assert i is None and src.objects == tgt.objects
            assert src.background.color != tgt.background.color
            assert (src.background.gradient, src.background.toward) == (tgt.background.gradient,
                                                                        tgt.background.toward)
            continue
        assert src.background == tgt.background
        if pair.kind == "add":
            assert len(src.objects) == 1 and tgt.objects[:1] == src.objects and i == 1
        elif pair.kind == "remove":
            assert len(src.objects) == 2 and tgt.objects == src.objects[:i] + src.objects[i + 1:]
        else:
            assert len(src.objects) == len(tgt.objects)
            field = "cell" if pair.kind == "position" else pair.kind
            for j, (a, b) in enumerate(zip(src.objects, tgt.objects)):
                assert _changed_fields(a, b) == ({field} if j == i else set())


def test_instruction_round_trip(pairs):
    for pair in pairs:
        edit = parse_instruction(pair.instruction, pair.source)
        assert edit.kind == pair.kind
        jitter = pair.target.objects[-1].jitter if pair.kind == "add" else (0, 0)
        assert edit.apply(pair.source, jitter) == pair.target
        if pair.kind not in ("background", "add"):
            assert edit.object_index == pair.edited_object


def test_captions_keep_object_order(pairs):
    for pair in pairs:
        assert pair.source_caption == pair.source.caption()  # sampled sources are in cell order
        target = parse_caption(pair.target_caption)
        assert [o.shape for o in target.objects] == [o.shape for o in pair.target.objects]
        assert target == pair.target.spec(order="stored")


def test_refs_name_the_colour_only_when_the_shape_repeats():
    scene = Scene((Obj("circle", "red", "small", "top left"), Obj("circle", "blue", "small", "center")),
                  Background("white"))
    pair = make_edit(scene, "remove", np.random.default_rng(0))
    assert pair.instruction in ("remove the red circle", "remove the blue circle")
    single = Scene((Obj("circle", "red", "small", "top left"), Obj("cross", "blue", "small", "center")),
                   Background("white"))
    assert make_edit(single, "size", np.random.default_rng(1)).instruction.startswith(("make the circle ",
                                                                                        "make the cross "))


def test_preconditions():
    two = Scene((Obj("circle", "red", "small", "top left"), Obj("cross", "blue", "small", "center")),
                Background("white"))
    one = two.remove(1)
    with pytest.raises(ToySceneError, match="add"):
        make_edit(two, "add", np.random.default_rng(0))
    with pytest.raises(ToySceneError, match="remove"):
        make_edit(one, "remove", np.random.default_rng(0))
    with pytest.raises(ValueError, match="kind"):
        make_edit(one, "recolor", np.random.default_rng(0))
    with pytest.raises(ValueError, match="kinds"):
        sample_edit(0, 0, kinds=("recolor",))


def test_sampling_is_pure_and_respects_kinds():
    a, b = sample_edit(4, 7, "val"), sample_edit(4, 7, "val")
    assert a.to_dict() == b.to_dict() and torch.equal(a.pixel_mask, b.pixel_mask)
    kinds = Counter(sample_edit(0, i, kinds=("color", "shape")).kind for i in range(200))
    assert set(kinds) == {"color", "shape"}


def test_training_mix():
    kinds = Counter(sample_training_edit(0, i).kind for i in range(2000))
    assert 0.03 < kinds[IDENTITY_KIND] / 2000 < 0.07
    assert set(kinds) == {*EDIT_KINDS, IDENTITY_KIND}
    assert min(kinds[k] for k in EDIT_KINDS) > 200
    identity = next(sample_training_edit(0, i) for i in range(2000) if sample_training_edit(0, i).kind == IDENTITY_KIND)
    assert identity.instruction == "" and identity.target == identity.source
    assert not identity.pixel_mask.any() and not identity.region_mask.any()
    assert parse_instruction("", identity.source) == Edit(IDENTITY_KIND)


def test_masks_at_other_sizes():
    pair = sample_edit(0, 3, kinds=("position",), size=16)
    assert pair.pixel_mask.shape == (1, 16, 16) and pair.source_image.shape == (3, 16, 16)
    assert not (pair.pixel_mask & ~pair.region_mask).any()


@pytest.mark.parametrize("text", ["paint the circle red", "make the circle", "turn the circle a square",
                                  "move the circle to top left", "change background to red",
                                  "add a red circle in the center", "remove the circle please"])
def test_bad_instructions_raise(text):
    scene = Scene((Obj("circle", "red", "small", "top left"),), Background("white"))
    with pytest.raises(ToyGrammarError):
        parse_instruction(text, scene)


def test_instruction_naming_a_missing_object_raises():
    scene = Scene((Obj("circle", "red", "small", "top left"),), Background("white"))
    with pytest.raises(ToySceneError, match="not in the scene"):
        parse_instruction("make the square blue", scene)
    with pytest.raises(ToySceneError, match="not in the scene"):
        parse_instruction("remove the blue circle", scene)
