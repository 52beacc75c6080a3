"""Spec §7 tests 7–9: lightness, blur and the content-suppressed embedding."""

from __future__ import annotations

import pytest
import torch
from feat_helpers import LinearPhi

from feat_tryon.cspe import content_proxy, cspe_embeddings, gaussian_blur, lightness


def _cie_lstar(grey: float) -> float:
    """L* of an achromatic sRGB value (reference computation, independent of the implementation)."""
    lin = grey / 12.92 if grey <= 0.04045 else ((grey + 0.055) / 1.055) ** 2.4
    f = lin ** (1 / 3) if lin > (6 / 29) ** 3 else lin / (3 * (6 / 29) ** 2) + 4 / 29
    return 116 * f - 16


def test_7_lightness_values_and_achromatic_output():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    out = lightness(red)
    assert abs(float(out[0, 0, 0, 0]) - 0.49852) < 2e-4
    mixed = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64).view(1, 3, 1, 1)
    grey = float(lightness(mixed)[0, 0, 0, 0])
    assert abs(_cie_lstar(grey) - 42.008) / 42.008 < 2e-4
    img = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    out = lightness(img)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_7b_lightness_keeps_grey():
    grey = torch.full((1, 3, 4, 4), 0.37, dtype=torch.float64)
    torch.testing.assert_close(lightness(grey), grey, atol=1e-9, rtol=0)


def test_8_blur_is_normalised_and_sigma_zero_is_identity():
    const = torch.full((2, 3, 9, 11), 0.42)
    torch.testing.assert_close(gaussian_blur(const, 1.6), const, atol=1e-6, rtol=0)
    img = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(gaussian_blur(img, 0.0), img)
    delta = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    delta[..., 15, 15] = 1
    out = gaussian_blur(delta, 2.0)
    assert abs(float(out.sum()) - 1.0) < 1e-6  # weights sum to 1 (the impulse stays away from the borders)
    assert out[..., 15, 15] == out.max()
    # wider than the image: reflect padding still works
    small = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    assert gaussian_blur(small, 11.2).shape == small.shape


def test_9_cspe_with_a_linear_encoder_and_one_call():
    phi = LinearPhi()
    design = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    e_img, e_sty = cspe_embeddings(phi, design, kappa=0.7, sigma_frac=0.05, size=32)
    assert phi.calls == 1 and phi.images == 4
    proxy = content_proxy(design, 0.05)
    torch.testing.assert_close(e_sty, phi(design - 0.7 * proxy), atol=1e-5, rtol=0)
    torch.testing.assert_close(e_img, phi(design), atol=1e-6, rtol=0)
    grey = torch.full((1, 3, 32, 32), 0.55)
    _, e_grey = cspe_embeddings(LinearPhi(), grey, size=32)
    assert float(e_grey.abs().max()) < 1e-5


def test_9b_design_of_any_size_and_renorm():
    phi = LinearPhi()
    design = torch.rand(1, 3, 50, 20)
    e_img, e_sty, info = cspe_embeddings(phi, design, renorm=True, size=32, return_info=True)
    assert info["sigma_px"] == pytest.approx(1.6)
    torch.testing.assert_close(e_sty.norm(), e_img.norm(), atol=1e-5, rtol=1e-5)
