"""Spec §7 tests 15–16: sketch filling and the latent regions."""

from __future__ import annotations

import pytest
import torch

from feat_tryon.masks import control_image, fill_sketch, region_masks


def _square_outline(size=32, lo=8, hi=24, dark_on_white=True):
    img = torch.zeros(1, 1, size, size)
    img[..., lo, lo:hi] = 1
    img[..., hi - 1, lo:hi] = 1
    img[..., lo:hi, lo] = 1
    img[..., lo:hi, hi - 1] = 1
    filled = torch.zeros(1, 1, size, size)
    filled[..., lo:hi, lo:hi] = 1
    return (1 - img if dark_on_white else img), filled


def test_15_fill_sketch_square_both_polarities():
    for dark in (True, False):
        sketch, filled = _square_outline(dark_on_white=dark)
        assert torch.equal(fill_sketch(sketch), filled)


def test_15b_small_gap_is_closed_large_gap_raises():
    sketch, filled = _square_outline(size=256, lo=40, hi=200, dark_on_white=False)
    small = sketch.clone()
    small[..., 40, 100:102] = 0  # a 2-px gap in the top edge
    out, kernels = fill_sketch(small, return_kernel=True)
    assert kernels[0] > 1
    inner = filled.clone()
    inner[..., 40, :] = 0
    assert ((out - filled).abs().sum() <= 2 * 256) and bool((out >= inner).all())
    big = sketch.clone()
    big[..., 40, 60:180] = 0  # the whole top edge is missing
    with pytest.raises(ValueError, match="sketch_mask"):
        fill_sketch(big)
    with pytest.raises(ValueError, match="no strokes"):
        fill_sketch(torch.zeros(1, 1, 16, 16))


def test_15c_toy_sketch_fills_to_its_silhouette():
    from flowcore.toy import make_tryon_sample

    for i in range(4):
        s = make_tryon_sample(0, i, "test")
        assert torch.equal(fill_sketch(s.sketch[None]), s.sketch_mask[None].float())


def _rand_mask(b, size, seed, p=0.3):
    g = torch.Generator().manual_seed(seed)
    blobs = (torch.rand(b, 1, size // 4, size // 4, generator=g) < p).float()
    return torch.nn.functional.interpolate(blobs, scale_factor=4, mode="nearest")


@pytest.mark.parametrize("pooling", ["auto", "area", "nearest", "max"])
def test_16_regions_are_binary_disjoint_and_partition(pooling):
    mp, ms = _rand_mask(3, 32, 0), _rand_mask(3, 32, 1)
    r = region_masks(mp, ms, (16, 16), pooling=pooling)
    for m in (r.op, r.new, r.removal, r.keep):
        assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(r.new + r.removal + r.keep, torch.ones_like(r.op))
    assert not bool((r.new * r.removal).any() or (r.new * r.keep).any() or (r.removal * r.keep).any())
    assert bool((r.new <= r.op).all())


def test_16b_removal_empty_cases_and_pooling_agreement():
    mp = torch.zeros(1, 1, 32, 32)
    mp[..., 8:16, 8:16] = 1
    ms = torch.zeros(1, 1, 32, 32)
    ms[..., 8:20, 8:20] = 1
    # cell-aligned masks, no dilation, M_p ⊆ M_s: nothing to remove; every pooling agrees
    results = [region_masks(mp, ms, (16, 16), dilate_px=0, pooling=p) for p in ("auto", "area", "nearest", "max")]
    for r in results:
        assert bool(r.removal_empty.all())
        assert torch.equal(r.new, results[0].new) and torch.equal(r.op, results[0].op)
    # accessory: nothing worn, so nothing is removed even with the dilation margin
    acc = region_masks(torch.zeros(1, 1, 32, 32), ms, (16, 16))
    assert bool(acc.removal_empty.all()) and torch.equal(acc.new, acc.op) and bool(acc.op.any())
    # shrinking: the removal region is non-empty
    shrink = region_masks(ms, mp, (16, 16))
    assert not bool(shrink.removal_empty.any())
    # explicit empty sketch mask: removal only
    removal_only = region_masks(mp, torch.zeros_like(mp), (16, 16))
    assert bool(removal_only.new_empty.all()) and torch.equal(removal_only.removal, removal_only.op)


def test_16c_operating_area_dilation_and_sketch_area():
    mp = torch.zeros(1, 1, 200, 200)
    mp[..., 50:100, 50:100] = 1
    r = region_masks(mp, None, (25, 25))
    assert r.dilate_px == 2  # 1% of 200
    assert torch.equal(r.sketch, mp)
    assert float(r.operating.sum()) > float(mp.sum())
    sk = region_masks(mp, torch.zeros_like(mp), (25, 25), operating_area="sketch")
    assert not bool(sk.op.any())


def test_control_images():
    _, filled = _square_outline()
    assert control_image("filled", None, filled).shape == (1, 3, 32, 32)
    toy = control_image("toy", None, filled)
    assert set(toy.unique().tolist()) <= {0.0, 1.0} and bool(toy.any())
    outline = control_image("outline", None, filled)
    assert float(outline.sum()) == 3 * 60
    with pytest.raises(ValueError, match="control_image="):
        control_image("user", None, filled)
