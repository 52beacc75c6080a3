"""Slider metrics (§6): Spearman ρ, masked SSIM (thin wrappers of ``flowcore.metrics``) and ISTD smoothness."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowcore.metrics import spearman, ssim

__all__ = ["istd", "masked_ssim", "spearman_rho"]


def spearman_rho(lams: Sequence[float] | Tensor, values: Sequence[float] | Tensor) -> float:
    """Spearman's ρ between the λ grid and the measured attribute (NaN for a constant input)."""
    return spearman(lams, values)


def masked_ssim(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Per-image SSIM ``(B,)`` averaged over the pixels where ``mask`` is true (``(B,1,H,W)``)."""
    return ssim(a, b, mask=mask.to(torch.float64))


def istd(images: Tensor) -> float:
    """ISTD-style smoothness of a sweep ``(J, 3, H, W)`` ordered by λ: ``100·std_j(1 − SSIM(x_j, x_{j+1}))``.

    Lower is smoother: equal steps between neighbouring λ give 0, one jump among small steps a large value."""
    if images.ndim != 4 or images.shape[0] < 3:
        raise ValueError(f"istd needs a sweep of at least 3 images (J,3,H,W), got {tuple(images.shape)}")
    steps = 1.0 - ssim(images[1:], images[:-1])
    return float(100.0 * steps.std(unbiased=False))
