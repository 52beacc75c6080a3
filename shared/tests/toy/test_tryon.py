"""The try-on world (toyworld.md §5): sampling, exact rendering, regions, sketches and designs."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import ndimage

from flowcore.toy.constants import (
    COLORS,
    GARMENT_KINDS,
    GARMENT_PATTERNS,
    PALETTE,
    SHOES,
    SKIN,
    TROUSERS,
    VOCAB,
)
from flowcore.toy.scene import Background, Obj, Scene, ToySceneError
from flowcore.toy.tryon import (
    Design,
    Garment,
    Mannequin,
    TryOnSample,
    garment_atlas,
    make_tryon_sample,
    parsing_maps,
    render_designs,
    render_mannequins,
    sample_design,
    sample_mannequin,
    tryon_target,
)

N_SAMPLES = 300


@pytest.fixture(scope="module")
def mannequins() -> list[Mannequin]:
    return [sample_mannequin(0, i, "test") for i in range(N_SAMPLES)]


@pytest.fixture(scope="module")
def samples() -> list[TryOnSample]:
    return [make_tryon_sample(0, i, "test") for i in range(80)]


# --------------------------------------------------------------------------------------------------------------
# an independent brute-force renderer: every sub-sample gets the colour of the topmost part containing it
# --------------------------------------------------------------------------------------------------------------
def _reference_render(m: Mannequin, size: int = 32) -> np.ndarray:
    n = size * 8
    s = (np.arange(n) + 0.5) / n
    x, y = s[None, :] - m.offset / 32, s[:, None]
    rgb = {name: np.array(v) / 255 for name, v in PALETTE.items()}

    def rect(x0, y0, x1, y1):
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)

    canvas = np.broadcast_to(rgb[m.background], (n, n, 3)).copy()

    def paint(inside, colour):
        canvas[np.broadcast_to(inside, (n, n))] = colour

    legs = rect(0.38, 0.56, 0.49, 0.94) | rect(0.51, 0.56, 0.62, 0.94)
    paint(legs, np.array(TROUSERS) / 255)
    paint(rect(0.38, 0.94, 0.49, 0.97) | rect(0.51, 0.94, 0.62, 0.97), np.array(SHOES) / 255)
    skin = ((x - 0.5) ** 2 + (y - 0.15) ** 2 <= 0.08**2) | rect(0.47, 0.22, 0.53, 0.26) | rect(0.36, 0.26, 0.64, 0.56)
    skin = skin | rect(0.28, 0.27, 0.35, 0.62) | rect(0.65, 0.27, 0.72, 0.62)
    paint(skin, np.array(SKIN) / 255)
    kind = m.garment.kind
    if kind == "tank-top":
        garment = rect(0.38, 0.26, 0.62, 0.56)
    else:
        garment = rect(0.36, 0.26, 0.64, 0.56)
        if kind in ("t-shirt", "sweater"):
            end = 0.38 if kind == "t-shirt" else 0.58
            garment = garment | rect(0.28, 0.27, 0.35, end) | rect(0.65, 0.27, 0.72, end)
        else:
            half = 0.14 + (y - 0.56) * 0.06 / 0.26
            garment = garment | ((y >= 0.56) & (y < 0.82) & (np.abs(x - 0.5) <= half))
    px, py = (s[None, :] * 32) % 4, (s[:, None] * 32) % 4  # pattern in 32-px units, anchored to the canvas
    first = {
        "plain": np.ones((n, n), bool),
        "striped": np.broadcast_to(py < 2, (n, n)),
        "dotted": (px - 2) ** 2 + (py - 2) ** 2 <= 1.0,
        "checkered": (px < 2) == (py < 2),
    }[m.garment.pattern]
    garment = np.broadcast_to(garment, (n, n))
    paint(garment & first, rgb[m.garment.c1])
    paint(garment & ~first, rgb[m.garment.c2])
    if m.hat is not None:
        paint(rect(0.42, 0.03, 0.58, 0.09) | rect(0.38, 0.09, 0.62, 0.11), rgb[m.hat])
    if m.bag is not None:
        paint(rect(0.74, 0.52, 0.88, 0.66), rgb[m.bag])
    return canvas.reshape(size, 8, size, 8, 3).mean(axis=(1, 3)).transpose(2, 0, 1)


def test_render_equals_brute_force_reference(mannequins):
    images = render_mannequins(mannequins[:30])
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.float32
    for m, img in zip(mannequins[:30], images):
        np.testing.assert_allclose(img.numpy(), _reference_render(m), atol=1e-6)
    m16 = mannequins[1]
    np.testing.assert_allclose(m16.render(16).numpy(), _reference_render(m16, 16), atol=1e-6)


def test_float32_matches_float64_and_single_matches_batch(mannequins):
    ref = render_mannequins(mannequins[:50], dtype=torch.float64)
    fast = render_mannequins(mannequins[:50], dtype=torch.float32)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=0)
    assert torch.equal(mannequins[7].render(), ref[7])


def test_coverage_areas_match_the_geometry():
    atlas = garment_atlas(32)
    areas = {"t-shirt": 0.28 * 0.30 + 2 * 0.07 * 0.11, "sweater": 0.28 * 0.30 + 2 * 0.07 * 0.31,
             "tank-top": 0.24 * 0.30, "dress": 0.28 * 0.30 + 0.26 * (0.28 + 0.40) / 2}
    for k, kind in enumerate(GARMENT_KINDS):
        for o in range(5):
            assert abs(float(atlas[o, k, 4].sum()) / 1024 - areas[kind]) < 2e-3, kind
    hat = float(atlas[2, 0, 8].sum()) / 1024
    assert abs(hat - (0.16 * 0.06 + 0.24 * 0.02)) < 1e-3
    assert abs(float(atlas[2, 0, 10].sum()) / 1024 - 0.14 * 0.14) < 1e-3


def test_parsing_labels_partition_the_image(mannequins):
    labels = parsing_maps(mannequins[:100])
    assert labels.shape == (100, 32, 32) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) <= 6
    assert set(labels.unique().tolist()) == set(range(7))
    atlas = garment_atlas(32)
    visible = atlas[:, :, :5].sum(2)  # background, skin, trousers, shoes, garment: every sub-sample exactly once
    assert torch.equal(visible, torch.ones_like(visible))
    for m, lab in zip(mannequins[:100], labels):
        assert torch.equal(m.parsing_map(), lab[None])
        garment = m.garment_coverage()[0]
        assert ((lab == 2) <= (garment >= 1 / 3)).all()  # a garment label needs the largest share
        assert ((garment > 0.5) <= (lab == 2)).all()  # a majority share always wins
        if m.hat is None:
            assert not (lab == 5).any()
        if m.bag is None:
            assert not (lab == 6).any()


def test_garment_on_white_and_mask(mannequins):
    for m in mannequins[:40]:
        mask, person, g = m.garment_mask(), m.render(), m.garment_only_on_white()
        assert mask.shape == (1, 32, 32) and mask.dtype == torch.bool and mask.any()
        inside = mask[0]
        assert torch.equal(g[:, inside], person[:, inside])
        assert torch.equal(g[:, ~inside], torch.ones_like(g[:, ~inside]))
        assert torch.equal(mask, m.garment_coverage() > 0)


def test_target_equals_person_outside_union(samples):
    for s in samples:
        r = s.regions
        assert torch.equal(r["union"], r["old"] | r["new"]) and torch.equal(r["keep"], ~r["union"])
        keep = r["keep"][0]
        assert torch.equal(s.target_image[:, keep], s.person_image[:, keep])
        assert not torch.equal(s.target_image, s.person_image)  # the design always changes the garment
        assert torch.equal(s.target_image, s.target.render())
        assert torch.equal(r["new"], s.target.garment_mask()) and torch.equal(r["new"], s.sketch_mask)


def test_tryon_target_changes_only_the_garment(samples):
    for s in samples:
        p, t = s.person, s.target
        assert (t.hat, t.bag, t.background, t.offset) == (p.hat, p.bag, p.background, p.offset)
        assert t.garment.kind == (s.new_kind or p.garment.kind)
        pattern, c1, c2 = s.design.style()
        assert (t.garment.pattern, t.garment.c1) == (pattern, c1)
        assert c2 is None or t.garment.c2 == c2
        t.validate()  # the design avoided the background and accessory colours
        assert s.design.main_color not in p.garment.colors
    kinds = Counter(s.new_kind for s in samples)
    assert kinds[None] > 20 and sum(v for k, v in kinds.items() if k) > 20


def test_target_outside_union_for_every_kind_change(mannequins):
    design = Design("tile", ("green", "orange"), "checkered")
    for m in mannequins[:20]:
        for kind in GARMENT_KINDS:
            target, regions = tryon_target(m, design, kind)
            keep = regions["keep"][0]
            assert torch.equal(target.render()[:, keep], m.render()[:, keep])


def test_sketch_outline_fills_to_the_silhouette(mannequins):
    for m in mannequins[:10]:
        for kind in GARMENT_KINDS:
            sketch, filled = m.sketch(kind)
            assert sketch.shape == filled.shape == (1, 32, 32) and sketch.dtype == torch.float32
            lines = sketch[0].numpy() > 0.5
            area = filled[0].numpy()
            assert not (lines & ~area).any()
            assert np.array_equal(ndimage.binary_fill_holes(lines), area)  # FEAT's fill recovers M_s
            assert lines.sum() < area.sum()
            inner = ndimage.binary_erosion(area, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool))
            assert np.array_equal(lines, area & ~inner)  # exactly the 1-px inner outline


def test_sampling_is_pure_and_splits_differ():
    assert sample_mannequin(3, 17, "val") == sample_mannequin(3, 17, "val")
    assert sample_design(3, 17, "val") == sample_design(3, 17, "val")
    a, b = make_tryon_sample(3, 5, "train"), make_tryon_sample(3, 5, "train")
    assert a.person == b.person and a.design == b.design and torch.equal(a.target_image, b.target_image)
    train = [sample_mannequin(0, i, "train") for i in range(50)]
    test = [sample_mannequin(0, i, "test") for i in range(50)]
    assert sum(x == y for x, y in zip(train, test)) < 5


def test_sampled_mannequins_follow_the_rules():
    ms = [sample_mannequin(1, i) for i in range(2000)]
    vocab = set(VOCAB)
    for m in ms:
        m.validate()
        words = m.caption().split()
        assert len(words) <= 21 and set(words) <= vocab
    assert Counter(m.garment.kind for m in ms).keys() == set(GARMENT_KINDS)
    assert Counter(m.garment.pattern for m in ms).keys() == set(GARMENT_PATTERNS)
    assert Counter(m.offset for m in ms).keys() == {-2, -1, 0, 1, 2}
    for attr in ("hat", "bag"):
        share = np.mean([getattr(m, attr) is not None for m in ms])
        assert 0.25 < share < 0.35
    assert 0.45 < np.mean([m.background == "white" for m in ms]) < 0.55


def test_caption_format():
    m = Mannequin(Garment("t-shirt", "striped", ("orange", "blue")), hat="green", bag="red", background="white")
    assert m.caption() == ("a mannequin wearing an orange and blue striped t-shirt with a green hat and a red bag "
                           "on a white background")
    m2 = Mannequin(Garment("dress", "plain", ("red",)), bag="orange", background="black")
    assert m2.caption() == "a mannequin wearing a red dress with an orange bag on a black background"


def test_designs():
    swatch, tile = Design("swatch", ("red",)), Design("tile", ("blue", "yellow"), "dotted")
    scene = Scene((Obj("circle", "green", "large", "center"),), Background("purple"))
    motif = Design("scene", scene=scene)
    assert swatch.style() == ("plain", "red", None) and swatch.caption() == "a plain red swatch"
    assert tile.style() == ("dotted", "blue", "yellow") and tile.caption() == "a blue and yellow dotted pattern"
    assert motif.style() == ("plain", "green", None) and motif.motif_color == "purple"
    assert motif.caption() == scene.caption("full")
    images = render_designs([swatch, tile, motif])
    assert images.shape == (3, 3, 32, 32)
    red = torch.tensor(PALETTE["red"], dtype=torch.float32) / 255
    torch.testing.assert_close(images[0], red[:, None, None].expand(3, 32, 32))
    assert torch.equal(images[1], torch.roll(images[1], shifts=(4, 4), dims=(1, 2)))  # period 4 px
    assert torch.equal(images[2], scene.render())
    kinds = Counter(sample_design(0, i).kind for i in range(400))
    assert kinds["swatch"] > kinds["tile"] > kinds["scene"] > 40


def test_invalid_inputs_raise():
    with pytest.raises(ToySceneError, match="distinct"):
        Garment("t-shirt", "striped", ("red",))
    with pytest.raises(ToySceneError, match="garment kind"):
        Garment("jacket")
    with pytest.raises(ToySceneError, match="offset"):
        Mannequin(Garment("dress"), offset=3)
    with pytest.raises(ToySceneError, match="background"):
        Mannequin(Garment("dress", colors=("white",)), background="white").validate()
    with pytest.raises(ToySceneError, match="scene"):
        Design("scene")
    with pytest.raises(ValueError, match="size"):
        render_mannequins([Mannequin(Garment("dress"))], size=4)
    assert dataclasses.replace(Mannequin(Garment("dress")), hat="red").hat == "red"
    assert set(COLORS) == set(PALETTE)
