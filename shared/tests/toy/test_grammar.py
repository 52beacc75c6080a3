"""Caption grammar (toyworld.md §2.4): exact, invertible, strict."""

from __future__ import annotations

import numpy as np
import pytest

from flowcore.toy.scene import (
    Background,
    Obj,
    ObjSpec,
    Scene,
    SceneSpec,
    ToyGrammarError,
    parse_caption,
    sample_scene,
)
from flowcore.toy.seeding import rng_for
from flowcore.toy.tokenizer import ToyTokenizer

N_SCENES = 5000


@pytest.fixture(scope="module")
def scenes():
    return [sample_scene(11, i) for i in range(N_SCENES)]


def test_full_caption_example_from_spec():
    scene = Scene((Obj("square", "blue", "small", "bottom right"), Obj("circle", "red", "large", "top left")),
                  Background("green"))
    text = "a large red circle in the top left and a small blue square in the bottom right on a green background"
    assert scene.caption() == text  # objects in cell order, whatever the stored order
    assert len(text.split()) == 21
    assert parse_caption(text) == scene.spec()


def test_parse_inverts_full_captions(scenes):
    for scene in scenes:
        text = scene.caption("full")
        spec = parse_caption(text)
        assert spec == scene.spec()
        assert spec.matches(scene)
        assert spec.caption() == text


def test_parse_inverts_partial_captions(scenes):
    dropped = {"color": 0, "size": 0, "position": 0, "background": 0}
    for i, scene in enumerate(scenes):
        text = scene.caption("partial", rng_for(11, i, "train", "caption"))
        spec = parse_caption(text)
        full = scene.spec()
        assert spec.caption() == text
        assert len(spec.objects) == len(full.objects)
        assert spec.background in (None, full.background)
        dropped["background"] += spec.background is None
        for got, want in zip(spec.objects, full.objects):
            assert got.shape == want.shape  # the shape is always kept
            for attr in ("color", "size", "position"):
                assert getattr(got, attr) in (None, getattr(want, attr))
                dropped[attr] += getattr(got, attr) is None
        assert spec.matches(scene)
    n_objects = sum(len(s.objects) for s in scenes)
    for attr in ("color", "size", "position"):
        assert abs(dropped[attr] / n_objects - 0.3) < 0.03, attr
    assert abs(dropped["background"] / len(scenes) - 0.3) < 0.03


def test_partial_needs_a_generator_and_is_reproducible():
    scene = sample_scene(0, 1)
    with pytest.raises(ValueError, match="rng"):
        scene.caption("partial")
    a = scene.caption("partial", np.random.default_rng(3))
    assert a == scene.caption("partial", np.random.default_rng(3))


def test_captions_fit_32_tokens(scenes):
    tok = ToyTokenizer()
    longest = max(len(s.caption().split()) for s in scenes)
    assert longest <= 21
    ids = tok([s.caption() for s in scenes[:512]], padding="max_length", return_tensors="pt")
    assert ids["input_ids"].shape == (512, 32)


def test_an_rule():
    orange = Scene((Obj("circle", "orange", "small", "center"),), Background("blue"))
    assert orange.caption() == "a small orange circle in the center on a blue background"
    spec = SceneSpec((ObjSpec("circle", color="orange"),), "orange")
    assert spec.caption() == "an orange circle on an orange background"
    assert parse_caption("an orange circle on an orange background") == spec
    for bad in ("a orange circle", "an red circle", "an circle", "a red circle on a orange background"):
        with pytest.raises(ToyGrammarError, match=r"use 'an?'"):
            parse_caption(bad)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "red circle",
        "a red",
        "a circle circle",
        "a red large circle",  # size comes before colour
        "a red circle in top left",
        "a red circle in the top",
        "a red circle in the left top",
        "a red circle and",
        "a red circle and a blue square and a green cross",
        "a red circle on a green",
        "a red circle on green background",
        "a red circle on a green background please",
        "a red cat",
        "the red circle",
    ],
)
def test_bad_grammar_raises(text):
    with pytest.raises(ToyGrammarError):
        parse_caption(text)


def test_normalisation_matches_tokenizer():
    spec = parse_caption("A Red Circle in the Centre.")
    assert spec == SceneSpec((ObjSpec("circle", "red", None, "center"),), None)
