"""Spec §7 tests 1–6: Orthogonal Fashion Removal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feat_tryon.ofr import garment_on_white, orthogonal_removal


def _latents(b=3, c=4, h=6, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_p = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    z_g = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    z_w = torch.randn(1, c, h, w, generator=g, dtype=torch.float64)
    return z_p, z_g, z_w


def _dot(a, b):
    return (a * b).flatten(1).sum(1)


@pytest.mark.parametrize("center", ["white", "origin"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.5])
def test_1_projection_scales_the_component_by_one_minus_alpha(center, alpha):
    z_p, z_g, z_w = _latents()
    res = orthogonal_removal(z_p, z_g, z_w, alpha=alpha, center=center)
    c0 = z_w.expand_as(z_p) if center == "white" else torch.zeros_like(z_p)
    d = z_g - z_w
    u = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    got = _dot(res.latent - c0, u)
    want = (1 - alpha) * _dot(z_p - c0, u)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.beta, _dot(z_p - c0, d) / _dot(d, d), atol=1e-12, rtol=0)


@pytest.mark.parametrize("center", ["white", "origin"])
def test_2_full_projection_is_orthogonal_idempotent_and_shrinks(center):
    z_p, z_g, z_w = _latents(seed=1)
    c0 = z_w.expand_as(z_p) if center == "white" else torch.zeros_like(z_p)
    d = z_g - z_w
    res = orthogonal_removal(z_p, z_g, z_w, alpha=1.0, center=center)
    assert _dot(res.latent - c0, d).abs().max() < 1e-12 * _dot(d, d).max()
    again = orthogonal_removal(res.latent, z_g, z_w, alpha=1.0, center=center)
    torch.testing.assert_close(again.latent, res.latent, atol=1e-12, rtol=0)
    # z̃ − z_p is parallel to û: its component orthogonal to d vanishes
    diff = res.latent - z_p
    coef = _dot(diff, d) / _dot(d, d)
    torch.testing.assert_close(diff, coef.view(-1, 1, 1, 1) * d, atol=1e-12, rtol=0)
    for alpha in (0.0, 0.3, 1.0, 1.7, 2.0):
        shrunk = orthogonal_removal(z_p, z_g, z_w, alpha=alpha, center=center).latent
        assert ((shrunk - c0).flatten(1).norm(dim=1) <= (z_p - c0).flatten(1).norm(dim=1) + 1e-12).all()


def test_3_batching_scale_and_shift_equivariance():
    z_p, z_g, z_w = _latents(b=4, seed=2)
    full = orthogonal_removal(z_p, z_g, z_w.expand_as(z_p), center="white")
    for b in range(4):
        one = orthogonal_removal(z_p[b:b + 1], z_g[b:b + 1], z_w, center="white")
        torch.testing.assert_close(one.latent, full.latent[b:b + 1], atol=1e-12, rtol=0)
        torch.testing.assert_close(one.beta, full.beta[b:b + 1], atol=1e-12, rtol=0)
    for center in ("white", "origin"):
        base = orthogonal_removal(z_p, z_g, z_w, center=center).latent
        scaled = orthogonal_removal(3.0 * z_p, 3.0 * z_g, 3.0 * z_w, center=center).latent
        torch.testing.assert_close(scaled, 3.0 * base, atol=1e-12, rtol=0)
    shift = torch.randn(1, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    base = orthogonal_removal(z_p, z_g, z_w, center="white").latent
    moved = orthogonal_removal(z_p + shift, z_g + shift, z_w + shift, center="white").latent
    torch.testing.assert_close(moved, base + shift, atol=1e-12, rtol=0)


def _mock_scene(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_p = torch.rand(b, 3, size, size, generator=g, dtype=torch.float64) * 2 - 1
    mask = torch.zeros(b, 1, size, size, dtype=torch.float64)
    mask[..., 4:12, 2:10] = 1  # aligned to the 2×2 patches of the mock encoder
    return x_p, mask


@pytest.mark.parametrize("center", ["white", "origin"])
def test_4_local_encoder_with_patch_aligned_mask_is_exact(center):
    x_p, mask = _mock_scene()

    def encode(x):  # a local encoder whose white maps onto the projection centre
        return F.avg_pool2d(x - 1.0, 2) if center == "origin" else F.avg_pool2d(x, 2)

    g = garment_on_white(x_p, mask)
    z_p, z_g, z_w = encode(x_p), encode(g), encode(torch.ones_like(x_p[:1]))
    res = orthogonal_removal(z_p, z_g, z_w, center=center)
    assert torch.equal(res.beta, torch.ones_like(res.beta))
    inside = F.max_pool2d(mask, 2).bool().expand_as(z_p)
    assert torch.equal(res.latent[inside], z_w.expand_as(z_p)[inside])
    assert torch.equal(res.latent[~inside], z_p[~inside])


def test_5_identity_encoder_betas():
    size = 8
    white = torch.ones(1, 3, size, size, dtype=torch.float64)
    mask = torch.zeros(1, 1, size, size, dtype=torch.float64)
    mask[..., 2:6, 2:6] = 1
    bg = torch.full((1, 3, size, size), 0.3, dtype=torch.float64)
    red = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, size, size)
    grey = torch.zeros(1, 3, size, size, dtype=torch.float64)
    for garment, origin_beta in ((red, 0.5), (grey, 0.0)):
        x_p = torch.where(mask > 0, garment, bg)
        g = garment_on_white(x_p, mask)
        origin = orthogonal_removal(x_p, g, white, center="origin")
        whitec = orthogonal_removal(x_p, g, white, center="white")
        torch.testing.assert_close(origin.beta, torch.tensor([origin_beta], dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(whitec.beta, torch.tensor([1.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_6_empty_mask_is_a_bitwise_noop_and_per_pixel_respects_the_mask():
    z_p, _, z_w = _latents(b=2, seed=4)
    res = orthogonal_removal(z_p, z_w.expand_as(z_p).clone(), z_w, center="white")
    assert res.noop.all() and torch.equal(res.latent, z_p) and torch.equal(res.beta, torch.zeros(2, dtype=z_p.dtype))
    z_p, z_g, z_w = _latents(b=2, seed=5)
    m = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    m[..., 1:4, 2:5] = 1
    res = orthogonal_removal(z_p, z_g, z_w, mode="per_pixel", mask=m, center="white")
    outside = (m == 0).expand_as(z_p)
    assert torch.equal(res.latent[outside], z_p[outside])
    assert not torch.equal(res.latent[~outside], z_p[~outside])
    # per pixel, the projected channel vector is orthogonal to d_hw inside the mask
    d = z_g - z_w
    inner = ((res.latent - z_w) * d).sum(dim=1, keepdim=True)
    assert inner[m.bool()].abs().max() < 1e-12


def test_6c_tiny_direction_is_a_noop_in_both_modes():
    g = torch.Generator().manual_seed(8)
    z_p = torch.randn(2, 16, 4, 4, generator=g, dtype=torch.float64)
    z_w = torch.randn(1, 16, 4, 4, generator=g, dtype=torch.float64)
    z_g = (z_w + 5e-7).expand_as(z_p).clone()  # ‖d‖ ≤ ε·√(Chw) per sample, yet ‖d_hw‖ = 2e-6 > ε per pixel
    for mode in ("global", "per_pixel"):
        res = orthogonal_removal(z_p, z_g, z_w, mode=mode)
        assert bool(res.noop.all()) and torch.equal(res.latent, z_p), mode


def test_6b_accessory_has_no_garment_direction():
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    g = garment_on_white(x, torch.zeros(1, 1, 8, 8, dtype=torch.float64))
    res = orthogonal_removal(x, g, torch.ones_like(x))
    assert bool(res.noop.all()) and torch.equal(res.latent, x)


def test_garment_on_white_checks_sizes():
    with pytest.raises(ValueError, match="W×H"):
        garment_on_white(torch.rand(1, 3, 8, 8), torch.ones(1, 1, 4, 4))
