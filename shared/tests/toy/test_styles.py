"""Style filters and their measurements (toyworld.md §4, gate F1 of §9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from flowcore.metrics import spearman
from flowcore.toy.constants import STYLE_FILTERS, WATERCOLOR_COMPONENTS
from flowcore.toy.render import edge_map, render
from flowcore.toy.scene import sample_scene
from flowcore.toy.styles import _noise_field, _splats, apply_style, edge_set, measure_style

LAMS = np.round(np.arange(14) * 0.1, 1)  # λ ∈ {0, 0.1, …, 1.3}

# (label, filter, apply kwargs, measurement component, watercolour component index or None)
CASES = [
    ("outline", "outline", {}, None, None),
    ("contrast", "contrast", {}, None, None),
    ("watercolor", "watercolor", {}, None, None),
    *[(c, "watercolor", {}, c, i) for i, c in enumerate(WATERCOLOR_COMPONENTS)],
    ("hatch", "pattern", {}, None, None),
    ("stripes", "pattern", {"variant": "stripes"}, "stripes", None),
    ("halftone", "pattern", {"variant": "halftone"}, "halftone", None),
]


def _scene_image(i: int, size: int = 32) -> torch.Tensor:
    """Gate scene i: the test split, seed i (§9)."""
    return render(sample_scene(i, 0, "test"), size).double()


def _lam_batch(component: int | None, lams: np.ndarray) -> torch.Tensor:
    lam = torch.tensor(lams)
    if component is None:
        return lam
    full = torch.zeros(len(lams), 4, dtype=torch.float64)
    full[:, component] = lam
    return full


def _response(img: torch.Tensor, case: tuple, seed: int, lams: np.ndarray = LAMS) -> np.ndarray:
    """The measurement of one image filtered at every λ of ``lams``."""
    _, name, kw, measure_component, component = case
    batch = img.expand(len(lams), -1, -1, -1)
    out = apply_style(batch, name, _lam_batch(component, lams), seed=seed, **kw)
    ref = None
    if measure_component == "wobble":
        ref = apply_style(batch, name, torch.zeros(len(lams), 4), seed=seed)
    return measure_style(out, name, ref=ref, component=measure_component).numpy()


def _f1(n_scenes: int) -> dict[str, np.ndarray]:
    rhos: dict[str, list[float]] = {case[0]: [] for case in CASES}
    for i in range(n_scenes):
        img = _scene_image(i)
        for case in CASES:
            rhos[case[0]].append(spearman(LAMS, _response(img, case, seed=i)))
    return {k: np.asarray(v) for k, v in rhos.items()}


def _check_f1(rhos: dict[str, np.ndarray]) -> None:
    for label, values in rhos.items():
        assert values.min() >= 0.95, (label, values.min())
        assert np.mean(values >= 1 - 1e-12) >= 0.9, (label, np.mean(values >= 1 - 1e-12))


def test_f1_monotone_on_10_scenes():
    _check_f1(_f1(10))


@pytest.mark.slow
def test_f1_gate_100_scenes():
    rhos = _f1(100)
    print({k: (round(float(v.min()), 4), float(np.mean(v >= 1 - 1e-12))) for k, v in rhos.items()})
    _check_f1(rhos)


@pytest.fixture(scope="module")
def scenes() -> torch.Tensor:
    return torch.cat([_scene_image(i) for i in range(4)])


def _checkerboard(cell: int = 3) -> torch.Tensor:
    """A hard case for continuity: black/white squares, so that every splat and line straddles strong edges."""
    idx = torch.arange(32) // cell
    board = ((idx[:, None] + idx[None, :]) % 2).double() * 0.9 + 0.05
    return board.expand(1, 3, 32, 32)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_continuity_in_lambda(scenes, case):
    """max |F(λ+0.01) − F(λ)| ≤ 0.1 on the λ grid (§10.1), on scenes and on a checkerboard."""
    _, name, kw, _, component = case
    images = torch.cat([scenes, _checkerboard()])
    for b in range(images.shape[0]):
        batch = images[b : b + 1].expand(len(LAMS), -1, -1, -1)
        lo = apply_style(batch, name, _lam_batch(component, LAMS), seed=b, **kw)
        hi = apply_style(batch, name, _lam_batch(component, LAMS + 0.01), seed=b, **kw)
        assert float((hi - lo).abs().max()) <= 0.1


@pytest.mark.parametrize("name", STYLE_FILTERS)
def test_deterministic_range_and_base_look_differs_from_input(scenes, name):
    first = apply_style(scenes, name, 0.7, seed=3)
    assert torch.equal(first, apply_style(scenes, name, 0.7, seed=3))
    assert first.shape == scenes.shape and first.dtype == scenes.dtype
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    base = apply_style(scenes, name, 0.0, seed=3)
    assert float((base - scenes).abs().max()) > 0.02  # the base look is on at λ = 0


def test_base_looks_match_their_definitions(scenes):
    x = scenes.numpy()
    contrast = apply_style(scenes, "contrast", 0.0).numpy()
    np.testing.assert_allclose(contrast, 0.9 * x + 0.05, atol=1e-12)
    paper = _noise_field(5, "paper", 32, 32)
    water = apply_style(scenes, "watercolor", 0.0, seed=5).numpy()
    expected = ndimage.gaussian_filter(x, (0, 0, 0.5, 0.5)) * (1 - 0.03 * paper)
    np.testing.assert_allclose(water, np.clip(expected, 0, 1), atol=1e-12)
    outline = apply_style(scenes, "outline", 0.0).numpy()
    far = ~ndimage.binary_dilation(edge_set(scenes), np.ones((1, 5, 5), bool))[:, None].repeat(3, axis=1)
    np.testing.assert_allclose(outline[far], (np.round(x * 11) / 11)[far], atol=1e-12)  # q_12 away from lines
    hatch = apply_style(scenes, "pattern", 0.0).numpy()
    ratio = hatch / np.maximum(np.round(x * 7) / 7, 1e-9)  # q_8 darkened by ≤ 45% on the lines
    assert ratio.min() >= 0.55 - 1e-9 and ratio.max() <= 1 + 1e-9 and (ratio < 0.99).mean() > 0.05


def test_outline_edges_are_edge_map(scenes):
    assert np.array_equal(edge_set(scenes), edge_map(scenes)[:, 0].numpy() > 0.5)


def test_noise_depends_on_seed_not_content(scenes):
    a = apply_style(scenes[:1], "watercolor", [0.0, 0.0, 1.0, 0.0], seed=1)
    b = apply_style(scenes[:1], "watercolor", [0.0, 0.0, 1.0, 0.0], seed=2)
    assert not torch.equal(a, b)
    # granulation is a fixed multiplicative field: its ratio to λ=0 is the same on every image
    ratios, unclipped = [], []
    for img in (scenes[:1], scenes[1:2]):
        on = apply_style(img, "watercolor", [0.0, 0.0, 1.0, 0.0], seed=1)[0, 1]
        off = apply_style(img, "watercolor", 0.0, seed=1)[0, 1]
        ratios.append(on / off.clamp_min(1e-6))
        unclipped.append(off < 1 - 1e-9)  # paper noise can push the base above 1, where the output is clipped
    both = unclipped[0] & unclipped[1]
    assert both.float().mean() > 0.9
    torch.testing.assert_close(ratios[0][both], ratios[1][both], atol=1e-9, rtol=0)


def test_splats_fade_in_one_by_one_in_fixed_order(scenes):
    """Between λ_s = 1.3·k/32 and 1.3·(k+1)/32 only splat k appears, for any image."""
    centres, radii = _splats(7)
    rows, cols = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5, indexing="ij")
    for img in (scenes[:1], scenes[2:3]):
        for k in (0, 5, 17, 31):
            before = apply_style(img, "watercolor", [0, 0, 0, 1.3 * k / 32], seed=7)
            after = apply_style(img, "watercolor", [0, 0, 0, 1.3 * (k + 1) / 32], seed=7)
            changed = ((after - before).abs() > 1e-9).any(dim=1)[0].numpy()
            dist = np.hypot(cols - centres[k, 0] * 32, rows - centres[k, 1] * 32)
            assert changed.any() and not (changed & (dist > radii[k] + 0.5)).any()
    full = apply_style(scenes[:1], "watercolor", [0, 0, 0, 1.3], seed=7)
    assert torch.equal(full, apply_style(scenes[:1], "watercolor", [0, 0, 0, 2.0], seed=7))  # all 32 are in


def test_batched_equals_per_image(scenes):
    lams = torch.tensor([0.0, 0.4, 0.9, 1.3])
    for name in STYLE_FILTERS:
        batched = apply_style(scenes, name, lams, seed=[1, 2, 3, 4])
        for b in range(4):
            single = apply_style(scenes[b], name, float(lams[b]), seed=b + 1)
            assert torch.equal(batched[b], single), name
    vec = [0.2, 0.5, 0.8, 1.1]
    per_row = apply_style(scenes, "watercolor", torch.tensor([vec] * 4, dtype=torch.float64), seed=0)
    assert torch.equal(per_row, apply_style(scenes, "watercolor", vec, seed=0))


@pytest.mark.parametrize("shape", [(64, 64), (97, 131)])
def test_monotone_at_other_sizes(shape):
    """The s = min(H,W)/32 rule: still monotone at 64² and on a 97×131 crop of a 192-px render."""
    scene = sample_scene(3, 0, "test")
    if shape == (64, 64):
        img = render(scene, 64).double()
    else:  # a crop around the first object, so that it holds edges
        cx, cy = scene.objects[0].center
        top = int(np.clip(cy * 192 - shape[0] / 2, 0, 192 - shape[0]))
        left = int(np.clip(cx * 192 - shape[1] / 2, 0, 192 - shape[1]))
        img = render(scene, 192).double()[:, :, top : top + shape[0], left : left + shape[1]]
    lams = np.array([0.0, 0.3, 0.6, 0.9, 1.3])
    for case in CASES:
        values = _response(img, case, seed=3, lams=lams)
        assert np.all(np.diff(values) > 0), (case[0], values)


def test_noise_field_is_resized_from_the_reference_grid():
    """Other sizes draw the same 32-px field and resize it bilinearly (half-pixel centres, as torch does)."""
    small = torch.from_numpy(np.array(_noise_field(4, "paper", 32, 32)))
    for shape in ((64, 64), (97, 131)):
        big = _noise_field(4, "paper", *shape)
        grid = (32, round(shape[1] / (min(shape) / 32)))
        ref = torch.from_numpy(np.array(_noise_field(4, "paper", *grid)))
        expected = torch.nn.functional.interpolate(ref[None, None], size=shape, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(big, expected[0, 0].numpy(), atol=1e-12)
    assert torch.equal(small, torch.from_numpy(np.array(_noise_field(4, "paper", 32, 32))))


def test_bad_inputs_raise_clear_errors(scenes):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_style(scenes * 2 - 1, "contrast", 0.5)
    with pytest.raises(ValueError, match="unknown style filter"):
        apply_style(scenes, "sepia", 0.5)
    with pytest.raises(ValueError, match="λ tensor"):
        apply_style(scenes, "outline", torch.zeros(3))
    with pytest.raises(ValueError, match="components"):
        apply_style(scenes, "watercolor", [0.1, 0.2])
    with pytest.raises(ValueError, match="variant"):
        apply_style(scenes, "pattern", 0.5, variant="zigzag")
    with pytest.raises(ValueError, match="ref"):
        measure_style(scenes, "watercolor", component="wobble")
    with pytest.raises(ValueError, match="component"):
        measure_style(scenes, "contrast", component="granulation")
