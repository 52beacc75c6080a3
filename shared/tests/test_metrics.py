"""flowcore.metrics against closed forms, scipy and an independent SSIM reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from flowcore.metrics import bootstrap_ci, masked_mse, masked_psnr, psnr, spearman, ssim


def _rand(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------------ PSNR
def test_psnr_known_values_per_sample():
    a = torch.zeros(3, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # mse 0.01 → 20 dB
    b[1] += 0.01  # mse 1e-4 → 40 dB
    values = psnr(a, b)
    assert values.shape == (3,) and values.dtype == torch.float64
    assert values[0].item() == pytest.approx(20.0) and values[1].item() == pytest.approx(40.0)
    assert math.isinf(values[2].item())
    assert psnr(a, b, max_db=60)[2].item() == 60.0
    assert psnr(a * 255, b * 255, data_range=255.0)[0].item() == pytest.approx(20.0)


def test_psnr_resolves_tiny_errors_in_float32_inputs():
    a = torch.full((1, 3, 16, 16), 0.5)
    b = a + 1e-6  # what an exact inversion leaves behind
    assert psnr(a, b).item() == pytest.approx(120.0, abs=0.5)


def test_psnr_shape_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_masked_mse_and_psnr():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[:, :, :2] = 0.5  # differences only in the top half
    top = torch.zeros(2, 1, 4, 4)
    top[:, :, :2] = 1
    assert torch.allclose(masked_mse(a, b, top), torch.full((2,), 0.25, dtype=torch.float64))
    assert torch.allclose(masked_mse(a, b, 1 - top), torch.zeros(2, dtype=torch.float64))
    assert masked_psnr(a, b, 1 - top)[0].item() == pytest.approx(100.0)  # floor 1e-10
    assert masked_psnr(a, b, 1 - top, max_db=60)[0].item() == 60.0
    assert masked_psnr(a, b, top)[0].item() == pytest.approx(10 * math.log10(1 / 0.25))
    soft = torch.full((2, 1, 4, 4), 0.5)  # uniform weights equal the plain mean
    assert torch.allclose(masked_mse(a, b, soft), (a - b).pow(2).flatten(1).mean(1).double())
    with pytest.warns(UserWarning, match="empty mask"):
        assert torch.isnan(masked_psnr(a, b, torch.zeros(2, 1, 4, 4))).all()


def test_masked_mse_random_against_numpy():
    a, b = _rand(2, 3, 9, 7, seed=1), _rand(2, 3, 9, 7, seed=2)
    mask = (_rand(2, 1, 9, 7, seed=3) > 0.4).float()
    got = masked_mse(a, b, mask)
    for i in range(2):
        sel = mask[i, 0].bool().numpy()
        diff = (a[i] - b[i]).numpy()[:, sel]
        assert got[i].item() == pytest.approx(float((diff.astype(np.float64) ** 2).mean()), rel=1e-6)


# ------------------------------------------------------------------------------------------------ SSIM
def _ssim_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM map of one channel with scipy's Gaussian filter (σ 1.5, 11 taps, mirrored border)."""
    def blur(z):
        return ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_ssim_matches_scipy_reference():
    a = _rand(2, 3, 20, 17, seed=4, dtype=torch.float64)
    b = (a + 0.1 * _rand(2, 3, 20, 17, seed=5, dtype=torch.float64)).clamp(0, 1)
    smap = ssim(a, b, return_map=True)
    assert smap.shape == (2, 1, 20, 17)
    for i in range(2):
        ref = np.mean([_ssim_reference(a[i, c].numpy(), b[i, c].numpy()) for c in range(3)], axis=0)
        assert np.allclose(smap[i, 0].numpy(), ref, atol=1e-10)
    assert torch.allclose(ssim(a, b), smap.flatten(1).mean(1))


def test_ssim_identity_and_masked_mean():
    a = _rand(1, 3, 16, 16, seed=6)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    b = a.clone()
    b[..., 8:] = _rand(1, 3, 16, 8, seed=7)  # the right half differs
    left = torch.zeros(1, 1, 16, 16)
    left[..., :3] = 1
    smap = ssim(a, b, return_map=True)
    assert ssim(a, b, mask=left).item() == pytest.approx(smap[..., :3].mean().item())
    assert ssim(a, b, mask=left).item() == pytest.approx(1.0, abs=1e-6)  # far from the change
    assert ssim(a, b, mask=1 - left).item() < 0.9


# ------------------------------------------------------------------------------------------ statistics
def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    y = x + rng.normal(size=40)
    y[::7] = y[0]  # ties in y too
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), [10, 20, 15]) == pytest.approx(0.5)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == 1.0
    with pytest.warns(UserWarning, match="constant"):
        assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equal lengths"):
        spearman([1, 2], [1, 2, 3])


def test_bootstrap_ci_deterministic_and_calibrated():
    rng = np.random.default_rng(1)
    values = rng.normal(loc=2.0, scale=1.0, size=400)
    mean, lo, hi = bootstrap_ci(values, seed=3)
    assert (mean, lo, hi) == bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(values.mean()) and lo < mean < hi
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(values.size)  # the normal-theory interval
    assert (hi - lo) / 2 == pytest.approx(half_width, rel=0.15)
    ref = stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", random_state=0)
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.03)


def test_bootstrap_ci_paired_uses_differences():
    rng = np.random.default_rng(2)
    base = rng.uniform(size=200)
    method = base + 0.05 + rng.normal(scale=0.01, size=200)  # a small, consistent improvement
    mean, lo, hi = bootstrap_ci(method, paired=base)
    assert mean == pytest.approx(float((method - base).mean()))
    assert 0 < lo < hi < 0.1  # paired: the CI excludes 0
    _, lo_unpaired, _ = bootstrap_ci(method)
    assert bootstrap_ci(method - base) == (mean, lo, hi)
    assert lo_unpaired > 0.3  # the unpaired CI is about the level, not the difference
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ci([1.0, 2.0], paired=[1.0])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
