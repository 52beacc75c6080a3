"""Filter families on arbitrary images (§7 test 15) and Canny edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flowcore.metrics import spearman
from style_attr.dataset import load_content_image
from style_attr.filters import FAMILY_PARAMS, canny_edges, get_family

LAMS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2]


def _content(height: int, width: int) -> torch.Tensor:
    from flowcore.toy import sample_scene

    base = sample_scene(0, 3, "test").render(size=128)[None].float()
    return F.interpolate(base, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("family", list(FAMILY_PARAMS))
def test_filters_are_deterministic_batched_and_in_range(family):
    flt = get_family(family)
    images = torch.cat([_content(32, 32), _content(32, 32).flip(-1)])
    lam = torch.rand(2, len(flt.params), generator=torch.Generator().manual_seed(0))
    out = flt(images, lam, seed=[3, 4])
    assert torch.equal(out, flt(images, lam, seed=[3, 4]))
    assert out.min() >= 0 and out.max() <= 1 and out.shape == images.shape
    for b in range(2):
        single = flt(images[b:b + 1], lam[b:b + 1], seed=[3, 4][b])
        assert torch.allclose(single, out[b:b + 1], atol=1e-6)
    assert not torch.equal(flt(images, 0.0), flt(images, 1.0))


def test_contrast_at_zero_is_its_base_look():
    x = _content(32, 32)
    assert torch.allclose(get_family("contrast")(x, 0.0), (0.9 * x + 0.05).clamp(0, 1), atol=1e-6)


def test_watercolor_depends_on_the_seed_only_through_its_noise():
    flt = get_family("watercolor")
    x = _content(32, 32)
    lam = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert not torch.equal(flt(x, lam, seed=1), flt(x, lam, seed=2))
    assert torch.equal(flt(x, lam, seed=1), flt(x, lam, seed=1))


CASES = [(f, p) for f, ps in FAMILY_PARAMS.items() for p in ps]


@pytest.mark.parametrize("size", [(32, 32), (97, 131), (256, 256), (512, 512)])
@pytest.mark.parametrize(("family", "param"), CASES)
def test_measure_is_monotone_in_lambda_at_any_size(family, param, size):
    flt = get_family(family)
    x = _content(*size)
    col = flt.params.index(param)
    values = []
    for lam in LAMS:
        vec = torch.zeros(1, len(flt.params), dtype=torch.float64)
        vec[0, col] = lam
        out = flt(x, vec, seed=5)
        ref = None
        if param == "wobble":
            ref = flt(x, torch.zeros_like(vec), seed=5)
        values.append(float(flt.measure(out, param, ref=ref)[0]))
    assert spearman(LAMS, values) >= 0.95, values


@pytest.mark.parametrize("family", list(FAMILY_PARAMS))
def test_change_mask_area_is_size_independent(family):
    flt = get_family(family)
    lam = torch.full((1, len(flt.params)), 1.0)
    small = flt.change_mask(_content(64, 64), lam, torch.zeros_like(lam), seed=2)
    large = flt.change_mask(_content(256, 256), lam, torch.zeros_like(lam), seed=2)
    assert small.dtype == torch.bool and small.shape == (1, 1, 64, 64)
    a, b = small.float().mean().item(), large.float().mean().item()
    assert a > 0 and b > 0
    assert max(a, b) / min(a, b) <= 1.5, (a, b)


def test_messy_inputs_are_accepted(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=90)
    rgba = np.concatenate([rgb, np.full((50, 70, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "grey.png")
    Image.fromarray((rng.random((40, 30)) * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    exif = Image.fromarray(rgb)
    info = exif.getexif()
    info[0x0112] = 6  # rotate 90° on display
    exif.save(tmp_path / "rotated.jpg", exif=info)
    for name in ("photo.jpg", "alpha.png", "grey.png", "deep.png", "rotated.jpg"):
        img = load_content_image(tmp_path / name, 32)
        assert img.shape == (3, 32, 32) and img.min() >= 0 and img.max() <= 1
        out = get_family("outline")(img, 0.5)
        assert out.shape == (1, 3, 32, 32)
    grey = load_content_image(tmp_path / "grey.png", 32)
    assert torch.equal(grey[0], grey[1])
    alpha = load_content_image(tmp_path / "alpha.png", 32)
    assert alpha.min() > 0.45  # composited over white


def test_canny_edges_are_binary_and_follow_thresholds():
    x = _content(64, 64)
    edges = canny_edges(x)
    assert edges.shape == (1, 1, 64, 64) and set(edges.unique().tolist()) <= {0.0, 1.0}
    assert edges.sum() > 0
    assert canny_edges(x, 250, 400).sum() <= edges.sum()
    with pytest.raises(ValueError, match="low <= high"):
        canny_edges(x, 200, 100)
