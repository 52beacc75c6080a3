"""Rendering of toy scenes (toyworld.md §2.1, §2.3) and the edge map (§8.4)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from flowcore.toy.constants import PALETTE, SHAPE_AREA_FRACTION, SHAPES, SIZE_NAMES, SIZES
from flowcore.toy.render import SHAPE_INSIDE, edge_map, object_coverage, rect_inside, render, subpixel_centers
from flowcore.toy.scene import Background, Obj, Scene, sample_scene

GOLDEN_SCENES = [
    Scene((Obj("circle", "red", "large", "top left", (0, 0)),), Background("green")),
    Scene((Obj("square", "blue", "small", "center", (3, -2)), Obj("triangle", "yellow", "large", "bottom right",
                                                                    (-4, 4))), Background("white", 0.2, "black")),
    Scene((Obj("diamond", "orange", "medium", "middle left", (1, 1)),), Background("black", 0.3, "white")),
    Scene((Obj("cross", "purple", "large", "top center", (-2, 0)), Obj("circle", "white", "small", "middle right",
                                                                     (4, -4))), Background("yellow")),
    Scene((Obj("triangle", "green", "small", "top right", (0, 3)), Obj("cross", "black", "medium", "bottom left",
                                                                     (2, -1))), Background("purple", 0.05, "white")),
    Scene((Obj("square", "white", "large", "bottom center", (-3, 2)),), Background("red", 0.12, "black")),
]
# sha256 of the 8-bit renders (round(255·x), (3,32,32) uint8, C order), frozen from the float64 reference.
GOLDEN_SHA256 = [
    "bf348086223b609cdb574a23931d69f1b1ee3128c60512232999fe855939c635",
    "8126b43d4d4ca620375f185942322802dd6c47316ca2db191901c36ae7b1c7e4",
    "c65c7640904ab847b8cfe76ddf300ac0f3d970d21deb7733ccf7f186d85deb31",
    "c234499707303408e1cdcb20e7a4ac436e9cebbaf01e9b3252c5afa31b7ff7e8",
    "786465c374af7225d8137430539783da536849886e145d481e66be0686fea873",
    "ba1fb2faa6772ec5dd1c3aa65a3792de75c3814d42e3efae5d742bef984525f5",
]


def _to_8bit(img: torch.Tensor) -> bytes:
    return torch.round(img * 255).to(torch.uint8).numpy().tobytes()


def test_golden_hashes():
    images = render(GOLDEN_SCENES)
    digests = [hashlib.sha256(_to_8bit(img)).hexdigest() for img in images]
    assert digests == GOLDEN_SHA256


def _reference_render(scene: Scene, size: int, ss: int = 8) -> np.ndarray:
    """The §2.1 definition, literally: every sub-sample gets bg(y) then each object's colour where it is
    inside, in object order, over the whole canvas; pixels average their samples. (3,H,W) float64."""
    coords = (np.arange(size * ss) + 0.5) / (size * ss)
    x, y = coords[None, :], coords[:, None]
    bg = scene.background
    c = np.array(PALETTE[bg.color]) / 255
    t = np.array(PALETTE[bg.toward]) / 255
    samples = ((1 - bg.gradient * y)[..., None] * c + (bg.gradient * y)[..., None] * t) * np.ones((1, x.size, 1))
    for obj in scene.objects:
        inside = SHAPE_INSIDE[obj.shape](x, y, obj.center[0], obj.center[1], obj.side)
        samples[inside] = np.array(PALETTE[obj.color]) / 255
    return samples.reshape(size, ss, size, ss, 3).mean(axis=(1, 3)).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [32, 24, 16])
def test_batched_window_render_matches_full_canvas_reference(size):
    scenes = GOLDEN_SCENES + [sample_scene(5, i, "val") for i in range(20)]
    images = render(scenes, size).double().numpy()
    for scene, img in zip(scenes, images):
        np.testing.assert_allclose(img, _reference_render(scene, size), atol=1e-6, rtol=0)


def test_output_format_and_purity():
    scenes = [sample_scene(0, i) for i in range(8)]
    a = render(scenes)
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, render(scenes))
    assert torch.equal(a[3], scenes[3].render())  # a batch equals single renders
    assert render(scenes[0]).shape == (1, 3, 32, 32)


def test_float32_compositing_agrees_with_float64():
    scenes = [sample_scene(1, i) for i in range(128)]
    diff = (render(scenes, dtype=torch.float32) - render(scenes, dtype=torch.float64)).abs().max()
    assert float(diff) <= 1e-5


def test_pooling_identities():
    scenes = [sample_scene(2, i) for i in range(64)] + GOLDEN_SCENES
    assert any(s.background.gradient > 0 for s in scenes) and any(len(s.objects) == 2 for s in scenes)
    full = render(scenes, 32, 8).double()
    half = render(scenes, 16, 16).double()
    quarter = render(scenes, 8, 32).double()
    assert float((half - F.avg_pool2d(full, 2)).abs().max()) <= 1e-6
    assert float((quarter - F.avg_pool2d(full, 4)).abs().max()) <= 1e-6


@dataclass
class _FreeObj:
    """An object at an arbitrary centre (object_coverage only needs shape, center, side)."""

    shape: str
    center: tuple[float, float]
    side: float


@pytest.mark.parametrize("shape", SHAPES)
def test_coverage_area_matches_analytic(shape):
    for size_name in SIZE_NAMES:
        exact = SHAPE_AREA_FRACTION[shape] * SIZES[size_name] ** 2
        # every cell and a few jitters at 64 px: within 1e-3 in canvas units (at 32 px the 8×8 lattice alone can
        # be 1.2e-3 off, e.g. a small square centred at 0.5 spans 40 of 40.96 sub-samples per side)
        objs = [Obj(shape, "red", size_name, cell, jitter) for cell in range(9)
                for jitter in [(0, 0), (3, -2), (-4, 4), (1, 1)]]
        areas = object_coverage(objs, 64).sum((1, 2)) / 64**2
        assert float((areas - exact).abs().max()) <= 1e-3
        # the sampling is unbiased: the mean over random centres at 32 px is within 0.2% of the exact area
        rng = np.random.default_rng(7)
        free = [_FreeObj(shape, tuple(rng.uniform(0.3, 0.7, 2)), SIZES[size_name]) for _ in range(512)]
        mean_area = float(object_coverage(free, 32).sum((1, 2)).mean()) / 32**2
        assert abs(mean_area - exact) <= 2e-3 * exact


def test_triangle_apex_points_up_and_coverage_values():
    cov = Scene((Obj("triangle", "red", "large", "center"),), Background("blue")).coverage(0)
    assert cov.shape == (1, 32, 32)
    rows = cov[0].sum(1)
    nonzero = torch.nonzero(rows).flatten()
    assert rows[nonzero[0]] < rows[nonzero[-1]]  # narrow at the top, wide at the base
    assert torch.equal(cov * 64, torch.round(cov * 64))  # α ∈ {0, 1/64, ..., 1}


def test_replace_object_changes_only_that_objects_support():
    for i in range(30):
        scene = sample_scene(3, i)
        edited = scene.replace_object(0, shape="cross" if scene.objects[0].shape != "cross" else "circle")
        a, b = render([scene, edited])
        support = (scene.coverage(0)[0] > 0) | (edited.coverage(0)[0] > 0)
        assert torch.equal(a[:, ~support], b[:, ~support])
        assert (a[:, support] != b[:, support]).any()


def test_gradient_top_row_and_direction():
    bg = Background("black", 0.3, "white")
    scene = Scene((Obj("circle", "red", "small", "center"),), bg)
    img = scene.render().double()
    c = torch.tensor(PALETTE["black"], dtype=torch.float64) / 255
    t = torch.tensor(PALETTE["white"], dtype=torch.float64) / 255
    # evaluated at pixel centres: the top row is bg(0.5/32), within g·|t−c|/64 of c
    assert float((img[:, 0, 0] - c).abs().max()) <= 0.3 * float((t - c).abs().max()) / 64 + 1e-7
    assert (img[:, -1, 0] > img[:, 0, 0]).all()


def test_primitives_work_on_numpy_and_torch():
    coords = subpixel_centers(8, 4)
    x, y = coords[None, :], coords[:, None]
    for shape, inside in SHAPE_INSIDE.items():
        t = inside(x, y, 0.5, 0.45, 0.6)
        n = inside(x.numpy(), y.numpy(), 0.5, 0.45, 0.6)
        assert np.array_equal(t.numpy(), n), shape
    r = rect_inside(x, y, 0.25, 0.25, 0.5, 0.75)
    assert int(r.sum()) == 8 * 16  # half-open: exactly the 1/4 × 1/2 rectangle's samples


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="size"):
        render(GOLDEN_SCENES[0], 0)
    with pytest.raises(ValueError, match="supersample"):
        render(GOLDEN_SCENES[0], 32, 0)


def _scipy_edges(img: np.ndarray) -> np.ndarray:
    smooth = ndimage.gaussian_filter(img, (0, 0.5, 0.5))
    gx = np.stack([ndimage.sobel(c, axis=1) for c in smooth])
    gy = np.stack([ndimage.sobel(c, axis=0) for c in smooth])
    return np.sqrt((gx**2 + gy**2).sum(0)) > 0.35


def test_edge_map_matches_scipy_definition():
    images = render([sample_scene(4, i) for i in range(12)])
    edges = edge_map(images)
    assert edges.shape == (12, 3, 32, 32) and edges.dtype == torch.float32
    assert set(torch.unique(edges).tolist()) <= {0.0, 1.0}
    assert torch.equal(edges[:, 0], edges[:, 2])
    for img, e in zip(images.double().numpy(), edges):
        expected = _scipy_edges(img)
        assert np.array_equal(e[0].numpy().astype(bool), expected)
        assert expected.sum() > 10
    assert edge_map(images[0]).shape == (3, 32, 32)
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert float(edge_map(flat).sum()) == 0.0
    assert torch.equal(edge_map(images.double()).float(), edges)
