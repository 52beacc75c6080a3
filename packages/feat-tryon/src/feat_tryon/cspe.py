"""Content-Suppressed Prompt Embedding (spec §2.3, CSPE).

The style embedding is the design's image embedding minus the embedding of a colourless, blurred proxy of it:
``e_sty = φ(i) − κ·φ(p)`` with ``p = G_σ(L(i))``, ``L`` the achromatic image of the same CIE lightness and ``G_σ``
a separable Gaussian (σ = ``sigma_frac``·S at the encoder side S). The proxy keeps the design's shapes and loses
its colours, so subtracting it suppresses content and leaves style.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "center_crop_resize",
    "content_proxy",
    "cspe_embeddings",
    "gaussian_blur",
    "lightness",
    "linear_to_srgb",
    "srgb_to_linear",
]

_LUMA_709 = (0.2126, 0.7152, 0.0722)


def srgb_to_linear(c: Tensor) -> Tensor:
    """IEC 61966-2-1 decoding of sRGB values in [0,1]."""
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp(min=0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(y: Tensor) -> Tensor:
    """IEC 61966-2-1 encoding of linear values in [0,1]."""
    return torch.where(y <= 0.0031308, 12.92 * y, 1.055 * y.clamp(min=0) ** (1 / 2.4) - 0.055)


def lightness(img: Tensor) -> Tensor:
    """The achromatic image with the same CIE L* (Lab with a* = b* = 0): ``enc_sRGB(Y)`` in all three channels.

    img: (B,3,H,W) sRGB in [0,1]; ``Y = 0.2126·lin(R) + 0.7152·lin(G) + 0.0722·lin(B)``. Returns (B,3,H,W) with
    R = G = B exactly.
    """
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"lightness expects (B,3,H,W) sRGB images, got {tuple(img.shape)}")
    lin = srgb_to_linear(img)
    w = torch.tensor(_LUMA_709, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    y = (lin * w).sum(dim=1, keepdim=True).clamp(0, 1)
    return linear_to_srgb(y).expand(-1, 3, -1, -1).contiguous()


def _gaussian_taps(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def _reflect_index(size: int, pad: int, device: torch.device) -> Tensor:
    """Indices of a reflect extension without repeating the edge (``c b | a b c d | c b``), reflecting again when
    the pad is wider than the image (so any radius works on tiny images)."""
    index = torch.arange(-pad, size + pad, device=device)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with normalised taps, radius ⌈3σ⌉, reflect padding; σ = 0 returns a copy.

    img: (B,C,H,W); σ in pixels.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return img.clone()
    if img.ndim != 4:
        raise ValueError(f"gaussian_blur expects (B,C,H,W), got {tuple(img.shape)}")
    channels = img.shape[1]
    taps = _gaussian_taps(float(sigma), img.dtype, img.device)
    pad = taps.numel() // 2
    x = img.index_select(-1, _reflect_index(img.shape[-1], pad, img.device))
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = x.index_select(-2, _reflect_index(img.shape[-2], pad, img.device))
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def center_crop_resize(img: Tensor, size: int) -> Tensor:
    """Resize the short side to ``size`` (antialiased bicubic, clamped to [0,1]) and centre-crop to size×size."""
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"design images must be (B,3,H,W), got {tuple(img.shape)}")
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(img, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[..., top:top + size, left:left + size]


def content_proxy(img: Tensor, sigma_frac: float = 0.05) -> Tensor:
    """``p = G_σ(L(img))`` with σ = ``sigma_frac``·S, S the image's short side. img: (B,3,S,S) in [0,1]."""
    sigma = sigma_frac * min(img.shape[-2:])
    return gaussian_blur(lightness(img), sigma)


def cspe_embeddings(
    encode: Callable[[Tensor], Tensor],
    design: Tensor,
    *,
    kappa: float = 1.0,
    sigma_frac: float = 0.05,
    renorm: bool = False,
    size: int | None = None,
    return_info: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict]:
    """The raw and the content-suppressed design embeddings from ONE encoder call (batch 2B).

    Args:
        encode: ``images (N,3,S,S) in [0,1] -> embeds (N,1,D)`` (``FlowModel.encode_ip_image``) or ``(N,D)``.
        design: (B,3,H,W) in [0,1].
        kappa: proxy weight κ. sigma_frac: blur σ as a fraction of the encoder side S.
        renorm: rescale ``e_sty`` to ``‖e_img‖`` per sample.
        size: the encoder side S (default: the design's short side); the design is resized and centre-cropped to
            it first, still in sRGB [0,1].
        return_info: also return a dict with ``sigma_px``, the norms and the cosine of the two (sidecar).
    Returns:
        ``(e_img, e_sty)`` shaped like ``encode``'s output (``(e_img, e_sty, info)`` with ``return_info``).
    """
    size = int(size or min(design.shape[-2:]))
    image = center_crop_resize(design, size)
    proxy = content_proxy(image, sigma_frac)
    both = encode(torch.cat([image, proxy], dim=0))
    e_img, e_proxy = both.chunk(2, dim=0)
    e_sty = e_img - kappa * e_proxy
    if renorm:
        flat_i, flat_s = e_img.flatten(1), e_sty.flatten(1)
        ratio = flat_i.norm(dim=1) / flat_s.norm(dim=1).clamp(min=1e-12)
        e_sty = e_sty * ratio.view(-1, *([1] * (e_sty.ndim - 1)))
    if not return_info:
        return e_img, e_sty
    fi, fs = e_img.flatten(1).float(), e_sty.flatten(1).float()
    info = {
        "sigma_px": sigma_frac * size,
        "encoder_size": size,
        "norm_img": fi.norm(dim=1).tolist(),
        "norm_sty": fs.norm(dim=1).tolist(),
        "cos": torch.cosine_similarity(fi, fs, dim=1).tolist(),
    }
    return e_img, e_sty, info
