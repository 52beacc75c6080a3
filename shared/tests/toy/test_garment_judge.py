"""The garment judge and per-pixel colour labels (toyworld.md §6; gate J3 of §9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowcore.toy.constants import COLORS, GARMENT_KINDS, GARMENT_PATTERNS, PALETTE, SHOES, SKIN, TROUSERS
from flowcore.toy.garment_judge import COLOR_MAP_DEFAULT, color_map, read_garment, read_mannequin
from flowcore.toy.tryon import Design, Garment, Mannequin, render_mannequins, sample_mannequin


def _j3(n: int) -> dict[str, float]:
    """Attribute accuracies of read_mannequin on n clean test-split mannequins."""
    people = [sample_mannequin(0, i, "test") for i in range(n)]
    readings = read_mannequin(render_mannequins(people))
    scores: dict[str, list[bool]] = {}
    for person, reading in zip(people, readings):
        for key, ok in reading.matches(person).items():
            scores.setdefault(key, []).append(ok)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def test_garment_judge_all_correct_on_100_clean_renders():
    assert _j3(100) == {"kind": 1.0, "color": 1.0, "pattern": 1.0, "hat": 1.0, "bag": 1.0, "background": 1.0}


@pytest.mark.slow
def test_j3_gate_1000_clean_mannequins():
    acc = _j3(1000)
    print(acc)
    assert acc["kind"] >= 0.99 and acc["color"] >= 0.99 and acc["pattern"] >= 0.99


def test_read_garment_with_the_true_mask():
    people = [sample_mannequin(5, i, "val") for i in range(60)]
    images = render_mannequins(people)
    masks = torch.stack([p.garment_mask() for p in people])
    for person, reading in zip(people, read_garment(images, masks)):
        assert reading.matches(person.garment) == {"kind": True, "color": True, "pattern": True}
        assert reading.offset == person.offset and reading.kind_iou > 0.8


def test_every_kind_pattern_and_colour_order_is_read():
    """All 4 kinds × 4 patterns on one person, with the colours in both orders."""
    for kind in GARMENT_KINDS:
        for pattern in GARMENT_PATTERNS:
            for colors in ((("black",),) if pattern == "plain" else (("black", "yellow"), ("yellow", "black"))):
                person = Mannequin(Garment(kind, pattern, colors), hat="red", bag="blue", background="green",
                                   offset=-1)
                reading = read_mannequin(person.render())
                assert reading.matches(person) == dict.fromkeys(
                    ("kind", "color", "pattern", "hat", "bag", "background"), True)
                if pattern == "dotted":  # ordered: the dot colour comes first
                    assert reading.garment.colors == colors


def test_reading_detects_a_wrong_garment():
    """A reading of one garment does not match a different one (the judge can fail)."""
    person = Mannequin(Garment("sweater", "striped", ("red", "blue")), background="white", offset=2)
    reading = read_mannequin(person.render()).garment
    assert not reading.matches(Garment("t-shirt", "striped", ("red", "blue")))["kind"]
    assert not reading.matches(Garment("sweater", "checkered", ("red", "blue")))["pattern"]
    assert not reading.matches(Garment("sweater", "striped", ("red", "green")))["color"]
    assert reading.matches(Garment("sweater", "striped", ("blue", "red")))["color"]  # stripes: unordered
    dotted = read_mannequin(Mannequin(Garment("dress", "dotted", ("red", "blue"))).render()).garment
    assert dotted.matches(Garment("dress", "dotted", ("red", "blue")))["color"]
    assert not dotted.matches(Garment("dress", "dotted", ("blue", "red")))["color"]  # dots: ordered


def test_larger_renders_are_read_after_area_averaging():
    people = [sample_mannequin(2, i, "test") for i in range(10)]
    for person, reading in zip(people, read_mannequin(render_mannequins(people, 64))):
        assert all(reading.matches(person).values())


def test_color_map_labels_pure_colours_and_rejects_mixtures():
    names = (*COLORS, "skin", "trousers")
    assert names == COLOR_MAP_DEFAULT
    rgb = [PALETTE[c] for c in COLORS] + [SKIN, TROUSERS, SHOES]
    img = torch.tensor(rgb, dtype=torch.float32).T.reshape(3, 1, -1) / 255  # (3,1,11): one pixel per colour
    labels = color_map(img)
    assert labels.shape == (1, 1, 11) and labels.dtype == torch.int64
    assert labels[0, 0, :10].tolist() == list(range(10))
    assert labels[0, 0, 10].item() == COLORS.index("black")  # shoes are 0.10 from black: left out by default
    assert color_map(img, colors=["shoes", "black"])[0, 0, 10].item() == 0
    mixed = 0.5 * (img[:, :, 0:1] + img[:, :, 4:5])  # half red, half blue
    assert color_map(mixed).item() == -1
    table = torch.tensor(rgb[:10], dtype=torch.float32) / 255
    nearest = int(torch.linalg.norm(table - mixed[:, 0, 0], dim=1).argmin())
    assert color_map(mixed, max_dist=2.0).item() == nearest  # a large max_dist labels it with the nearest colour


def test_color_map_on_a_mannequin_follows_the_parsing():
    person = Mannequin(Garment("dress", "checkered", ("red", "yellow")), hat="blue", background="white")
    labels = color_map(person.render())[0]
    parsing = person.parsing_map()[0]
    pure = render_mannequins([person]).new_zeros(32, 32, dtype=torch.bool)
    coverage = person.garment_coverage()[0]
    pure |= coverage == 1
    garment_labels = set(labels[pure].tolist())
    assert garment_labels == {COLORS.index("red"), COLORS.index("yellow")}
    assert (labels[parsing == 0] == COLORS.index("white")).float().mean() > 0.95
    assert (labels[parsing == 1] == len(COLORS)).float().mean() > 0.8  # skin


def test_design_colours_are_read_on_a_swatch_design():
    design = Design("tile", ("green", "purple"), "striped")
    labels = color_map(design.render())[0]
    assert set(labels.unique().tolist()) == {COLORS.index("green"), COLORS.index("purple")}


def test_bad_inputs_raise():
    img = sample_mannequin(0).render()
    with pytest.raises(ValueError, match="unknown colour"):
        color_map(img, colors=["red", "teal"])
    with pytest.raises(ValueError, match="empty"):
        read_garment(img, torch.zeros(1, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of 32"):
        read_mannequin(torch.zeros(3, 40, 40))
