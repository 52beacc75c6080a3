"""Image and mask I/O: PIL/numpy/path ↔ tensors, padding to a model's multiple, mask loading and morphology.

Conventions (architecture §3.6): images are ``(B,3,H,W)`` floats in ``[0,1]``; masks are ``(B,1,H,W)`` floats in
``[0,1]`` with 1 = selected/editable. Sizes passed as tuples are ``(height, width)``, like tensor shapes; error
messages that suggest a resize say ``W×H`` explicitly.

Colour-mode policy of :func:`to_tensor` (PIL inputs and files):

- ``RGB``: as is. ``L``, ``1``, ``I;16*``, ``I``, ``F``: grey replicated to three channels (16-bit modes are scaled
  by 1/65535, ``F`` is taken as already in ``[0,1]`` and clamped).
- ``RGBA``, ``LA``, ``PA``, and ``P`` with a transparency entry: composited over **white** (transparent pixels
  become white, the usual "garment on white" / paper background), then RGB.
- ``P`` (palette), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: converted to RGB by Pillow.
- EXIF orientation is applied (a phone photo shows up the right way round).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

__all__ = [
    "PadInfo",
    "check_image",
    "crop",
    "dilate",
    "erode",
    "load_mask",
    "mask_to_grid",
    "pad_to_multiple",
    "to_pil",
    "to_tensor",
]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


# ----------------------------------------------------------------------------------------------- conversions
def _open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {str(path)!r} (check the path; nothing is substituted)")
    img = Image.open(path)
    img.load()
    return img


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """(H,W,3) float32 in [0,1] following the module's colour-mode policy."""
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.float64) / 65535.0
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)
    if mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def _array_to_tensor(arr: np.ndarray) -> Tensor:
    """numpy (H,W), (H,W,C) or (B,H,W,C) → (B,3,H,W) float in [0,1]; integer arrays are scaled by their range."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"integer image arrays must be uint8 or uint16, got {arr.dtype}; convert or scale to [0,1]")
    elif arr.dtype != np.float64:
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"numpy images must be (H,W), (H,W,C) or (B,H,W,C) with C in 1, 3, 4; got shape {arr.shape}"
        )
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    return _to_three_channels(t)


def _to_three_channels(t: Tensor) -> Tensor:
    """(B,C,H,W) with C in 1, 3, 4 → (B,3,H,W); alpha is composited over white."""
    channels = t.shape[1]
    if channels == 3:
        return t
    if channels == 1:
        return t.expand(-1, 3, -1, -1).clone()
    if channels == 4:
        alpha = t[:, 3:4]
        return t[:, :3] * alpha + (1.0 - alpha)
    raise ValueError(f"images need 1, 3 or 4 channels, got {channels} (shape {tuple(t.shape)})")


def to_tensor(img) -> Tensor:
    """Any image input → ``(B,3,H,W)`` float in ``[0,1]``.

    Accepts a PIL image, a path (str/PathLike), a numpy array (``(H,W)``, ``(H,W,C)``, ``(B,H,W,C)``; uint8/uint16
    are scaled, floats taken as ``[0,1]``), a tensor (``(3,H,W)``, ``(B,C,H,W)`` with C in 1/3/4, ``uint8`` scaled by
    1/255), or a list of any of these with equal sizes (stacked). Colour modes follow the module docstring.
    PIL, path and numpy inputs give float32 on the CPU (float64 numpy stays float64); floating tensors keep their
    dtype and device. Values are not clamped or validated here: see :func:`check_image`.
    """
    if isinstance(img, Tensor):
        t = img
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif t.dtype == torch.bool:
            t = t.float()
        elif not t.is_floating_point():
            raise TypeError(f"image tensors must be floating point or uint8, got {t.dtype}")
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[None]
        if t.ndim != 4:
            raise ValueError(f"image tensors must be (3,H,W) or (B,3,H,W), got shape {tuple(img.shape)}")
        return _to_three_channels(t)
    if isinstance(img, (str, os.PathLike)):
        img = _open_image(img)
    if isinstance(img, Image.Image):
        return torch.from_numpy(_pil_to_array(img)).permute(2, 0, 1)[None].contiguous()
    if isinstance(img, np.ndarray):
        return _array_to_tensor(img)
    if isinstance(img, (list, tuple)):
        if not img:
            raise ValueError("to_tensor got an empty list of images")
        parts = [to_tensor(item) for item in img]
        sizes = {tuple(p.shape[-2:]) for p in parts}
        if len(sizes) > 1:
            raise ValueError(f"images in a list must share one size (H,W), got {sorted(sizes)}; resize them first")
        return torch.cat(parts, dim=0)
    raise TypeError(f"cannot convert {type(img).__name__} to an image tensor (PIL, path, numpy or torch expected)")


def to_pil(t) -> list[Image.Image]:
    """``(B,3,H,W)``/``(3,H,W)`` → RGB images; ``(B,1,H,W)``/``(H,W)`` (masks) → ``L`` images.

    Values are clamped to ``[0,1]`` and rounded to 8 bits. Always returns a list (one image per batch row).
    """
    if isinstance(t, Image.Image):
        return [t]
    if isinstance(t, (list, tuple)):
        return [im for item in t for im in to_pil(item)]
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t)
    if not isinstance(t, Tensor):
        raise TypeError(f"to_pil expects a tensor, numpy array or PIL image, got {type(t).__name__}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    t = t.detach().to("cpu", torch.float32)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"to_pil expects (B,3,H,W) images or (B,1,H,W) masks, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("to_pil got NaN or infinite values; check the decoder output before saving")
    arr = (t.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a, mode="RGB") for a in arr]


# ------------------------------------------------------------------------------------------------- checking
def check_image(img, *, multiple: int | None = None, name: str = "image") -> Tensor:
    """Validate an image and return it as ``(B,3,H,W)`` in ``[0,1]``; raise a ``ValueError`` naming the fix.

    Checks: convertible (see :func:`to_tensor`), 3 channels, floating point, finite, values within ``[0,1]``
    (tolerance 1e-6, e.g. ``[-1,1]`` inputs are rejected with the conversion to use), and — when ``multiple`` is
    given — height and width divisible by it.
    """
    if isinstance(img, Tensor) and img.ndim == 4 and img.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"{name} has {img.shape[1]} channels (shape {tuple(img.shape)}); pass RGB images as (B,3,H,W) — "
            "latents go through the model's encode_image/decode_image, not here"
        )
    t = to_tensor(img)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf values; fix the producer (e.g. a diverged decoder)")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-6 or hi > 1.0 + 1e-6:
        hint = " (looks like [-1,1]: pass (x + 1) / 2)" if lo >= -1.0 - 1e-6 and lo < 0 else ""
        hint = hint or (" (looks like 0..255: divide by 255)" if hi <= 255.0 + 1e-6 and hi > 1.0 else "")
        raise ValueError(f"{name} values must lie in [0,1], got min {lo:.4g}, max {hi:.4g}{hint}")
    if multiple is not None:
        height, width = t.shape[-2:]
        if height % multiple or width % multiple:
            pad_w, pad_h = _round_up(width, multiple), _round_up(height, multiple)
            down_w, down_h = max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)
            raise ValueError(
                f"{name} is {width}×{height} (W×H) but this model needs sides that are multiples of {multiple}: "
                f"pass pad=True (pads to {pad_w}×{pad_h}) or resize to {down_w}×{down_h} (W×H)"
            )
    return t


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# -------------------------------------------------------------------------------------------------- padding
@dataclass(frozen=True)
class PadInfo:
    """What :func:`pad_to_multiple` added. Padding is always at the **bottom and right** (``top = left = 0``), so
    pixel ``(0, 0)`` and every token position of the original content are unchanged and :func:`crop` is a slice.
    """

    height: int  # original size
    width: int
    padded_height: int
    padded_width: int

    @property
    def bottom(self) -> int:
        return self.padded_height - self.height

    @property
    def right(self) -> int:
        return self.padded_width - self.width

    @property
    def is_noop(self) -> bool:
        return self.bottom == 0 and self.right == 0

    def to_dict(self) -> dict:
        return {"size": [self.height, self.width], "padded_size": [self.padded_height, self.padded_width]}


def _reflect_pad(t: Tensor, bottom: int, right: int) -> Tensor:
    """Reflect padding that also works when the pad exceeds the side (reflects the reflection, repeatedly)."""
    for axis_pad, dim in ((right, -1), (bottom, -2)):
        remaining = axis_pad
        while remaining > 0:
            size = t.shape[dim]
            if size == 1:  # nothing to reflect: repeat the single row/column
                pad = (0, remaining, 0, 0) if dim == -1 else (0, 0, 0, remaining)
                t = F.pad(t, pad, mode="replicate")
                break
            step = min(remaining, size - 1)
            pad = (0, step, 0, 0) if dim == -1 else (0, 0, 0, step)
            t = F.pad(t, pad, mode="reflect")
            remaining -= step
    return t


def pad_to_multiple(
    img, multiple: int, *, mode: Literal["white", "zero", "reflect"] = "white"
) -> tuple[Tensor, PadInfo]:
    """Pad the bottom and right so height and width become multiples of ``multiple``.

    ``img``: a ``(B,C,H,W)`` tensor (any C: images, masks, latents) or anything :func:`to_tensor` accepts.
    ``mode``: ``"white"`` fills 1.0 (images), ``"zero"`` fills 0 (masks: padding is never editable),
    ``"reflect"`` mirrors the content without repeating the edge pixel (reflecting again when the pad is wider
    than the image). Returns the padded tensor and a :class:`PadInfo` for :func:`crop`.
    """
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    t = img if isinstance(img, Tensor) and img.ndim == 4 else to_tensor(img)
    height, width = t.shape[-2:]
    info = PadInfo(height, width, _round_up(height, multiple), _round_up(width, multiple))
    if info.is_noop:
        return t, info
    if mode == "white":
        return F.pad(t, (0, info.right, 0, info.bottom), value=1.0), info
    if mode == "zero":
        return F.pad(t, (0, info.right, 0, info.bottom), value=0.0), info
    if mode == "reflect":
        return _reflect_pad(t, info.bottom, info.right), info
    raise ValueError(f"unknown pad mode {mode!r}; use 'white', 'zero' or 'reflect'")


def crop(img, pad: PadInfo) -> Tensor:
    """Undo :func:`pad_to_multiple`: keep the top-left original region.

    Works at the padded pixel size, and at any grid that divides it by an integer factor f (latents, token grids):
    there it keeps ``ceil(H/f) × ceil(W/f)`` cells, the cells that touch the original content.
    """
    t = img if isinstance(img, Tensor) else to_tensor(img)
    height, width = t.shape[-2:]
    if (height, width) == (pad.padded_height, pad.padded_width):
        return t[..., : pad.height, : pad.width]
    factor_h, factor_w = pad.padded_height / height, pad.padded_width / width
    if factor_h == factor_w and factor_h.is_integer() and factor_h > 1:
        f = int(factor_h)
        return t[..., : math.ceil(pad.height / f), : math.ceil(pad.width / f)]
    raise ValueError(
        f"cannot crop a {width}×{height} (W×H) tensor with padding made for {pad.padded_width}×{pad.padded_height}; "
        "pass the padded image or a grid that divides it by an integer factor"
    )


# ---------------------------------------------------------------------------------------------------- masks
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights of Pillow's "L" conversion


def _mask_from_pil(img: Image.Image) -> Tensor:
    """(1,1,H,W) in [0,1]: the alpha channel when it varies, otherwise the luminance."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
        if alpha.min() < alpha.max():
            return torch.from_numpy(alpha)[None, None]
        img = img.convert("RGB")
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.float64) / 65535.0
        return torch.from_numpy(np.clip(grey, 0, 1).astype(np.float32))[None, None]
    if img.mode == "F":
        return torch.from_numpy(np.clip(np.asarray(img, dtype=np.float32), 0, 1))[None, None]
    return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None, None]


def _mask_from_tensor(t: Tensor) -> Tensor:
    if t.dtype == torch.bool:
        t = t.float()
    elif t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif not t.is_floating_point():
        t = t.float()
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[None] if t.shape[0] in (1, 3, 4) else t[:, None]  # (C,H,W) single image, else (B,H,W)
    if t.ndim != 4 or t.shape[1] not in (1, 3, 4):
        raise ValueError(f"masks must be (H,W), (B,H,W), (B,1,H,W) or (B,3,H,W), got shape {tuple(t.shape)}")
    if t.shape[1] == 4:
        t = t[:, 3:4]
    elif t.shape[1] == 3:
        weights = torch.tensor(_LUMA, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
        t = (t * weights).sum(dim=1, keepdim=True)
    return t


def load_mask(src, size: tuple[int, int], *, invert: bool = False, threshold: float | None = None) -> Tensor:
    """Load a mask as ``(B,1,H,W)`` float in ``[0,1]`` (1 = selected/editable), ``size = (H, W)``.

    ``src``: a path (a missing file raises ``FileNotFoundError``, never a silent empty mask), a PIL image (alpha
    when it varies, otherwise luminance), a numpy array or a tensor (bool, uint8 or float; 3-channel inputs use
    luminance). Soft values are kept unless ``threshold`` is given (then ``mask > threshold`` → 1.0).

    Size policy: a mask of exactly ``size`` is used as is. A mask of the same aspect ratio (within one pixel of
    rounding) is resized with nearest-neighbour sampling, which keeps binary masks binary. Any other size raises a
    ``ValueError`` that names both sizes — load the mask made for this image (pad it after loading if the image is
    padded).
    """
    if isinstance(src, (str, os.PathLike)):
        src = _open_image(src, what="mask")
    if isinstance(src, Image.Image):
        mask = _mask_from_pil(src)
    elif isinstance(src, np.ndarray):
        arr = src.astype(np.float32) / 65535.0 if src.dtype == np.uint16 else src
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.ndim == 3 and t.shape[-1] in (3, 4):  # numpy images are (H,W,C)
            t = t.permute(2, 0, 1)[None]
        mask = _mask_from_tensor(t)
    elif isinstance(src, Tensor):
        mask = _mask_from_tensor(src)
    else:
        raise TypeError(f"cannot load a mask from {type(src).__name__} (path, PIL, numpy or tensor expected)")
    mask = _fit_mask_size(mask, size)
    if threshold is not None:
        mask = (mask > threshold).to(mask.dtype)
    if invert:
        mask = 1.0 - mask
    return mask.clamp(0.0, 1.0)


def _fit_mask_size(mask: Tensor, size: tuple[int, int]) -> Tensor:
    height, width = int(size[0]), int(size[1])
    mask_h, mask_w = mask.shape[-2:]
    if (mask_h, mask_w) == (height, width):
        return mask
    same_aspect = abs(mask_w * height / mask_h - width) <= 1.0 and abs(mask_h * width / mask_w - height) <= 1.0
    if not same_aspect:
        raise ValueError(
            f"mask is {mask_w}×{mask_h} (W×H) but the image is {width}×{height}: the aspect ratios differ, so the "
            "mask was not made for this image; pass the mask for this image (or resize it yourself to "
            f"{width}×{height})"
        )
    return F.interpolate(mask, size=(height, width), mode="nearest-exact")


def _as_float_mask(mask: Tensor) -> tuple[Tensor, torch.dtype]:
    if not isinstance(mask, Tensor):
        raise TypeError(f"masks must be tensors, got {type(mask).__name__}; use load_mask to read one")
    if mask.ndim != 4:
        raise ValueError(f"masks must be (B,1,H,W) (or (B,C,H,W)), got shape {tuple(mask.shape)}")
    dtype = mask.dtype
    return (mask if mask.is_floating_point() else mask.float()), dtype


def _disk_dilate(mask: Tensor, px: int) -> Tensor:
    """Max over the disk {dy² + dx² ≤ px²}: a horizontal max-pool per row offset, then a vertical shift."""
    height = mask.shape[-2]
    out = torch.full_like(mask, -math.inf)
    for dy in range(-px, px + 1):
        half = math.isqrt(px * px - dy * dy)
        row_max = F.max_pool2d(mask, kernel_size=(1, 2 * half + 1), stride=1, padding=(0, half))
        if abs(dy) >= height:
            continue
        # out[y] = max(out[y], row_max[y + dy]) where y + dy is inside the image
        if dy >= 0:
            out[..., : height - dy, :] = torch.maximum(out[..., : height - dy, :], row_max[..., dy:, :])
        else:
            out[..., -dy:, :] = torch.maximum(out[..., -dy:, :], row_max[..., : height + dy, :])
    return out


def dilate(mask: Tensor, px: int, *, shape: Literal["square", "disk"] = "square") -> Tensor:
    """Grey-scale dilation (max filter) of ``(B,C,H,W)`` masks; pixels outside the image are ignored.

    ``square``: the ``(2px+1)²`` max filter (OpenCV's rectangular dilation); ``disk``: the offsets with
    ``dy² + dx² ≤ px²``. ``px = 0`` returns a copy. The dtype is kept (bool and integer masks work too).
    """
    if px < 0:
        raise ValueError(f"dilation radius must be >= 0, got {px}")
    if shape not in ("square", "disk"):
        raise ValueError(f"unknown structuring element {shape!r}; use 'square' or 'disk'")
    values, dtype = _as_float_mask(mask)
    if px == 0:
        return mask.clone()
    if shape == "square":
        out = F.max_pool2d(values, kernel_size=2 * px + 1, stride=1, padding=px)
    else:
        out = _disk_dilate(values, px)
    return out.to(dtype)


def erode(mask: Tensor, px: int, *, shape: Literal["square", "disk"] = "square") -> Tensor:
    """Grey-scale erosion (min filter), the dual of :func:`dilate`: ``erode(m) = -dilate(-m)``.

    Pixels outside the image are ignored, so a mask touching the border is not eaten from the border (OpenCV's
    default). Same ``shape`` options; the dtype is kept.
    """
    values, dtype = _as_float_mask(mask)
    if px == 0:
        return mask.clone()
    if dtype == torch.bool:
        return ~dilate(~mask, px, shape=shape)
    return (-dilate(-values, px, shape=shape)).to(dtype)


def mask_to_grid(
    mask: Tensor, grid_hw: int | Sequence[int], mode: Literal["any", "area", "bilinear", "nearest"] = "any"
) -> Tensor:
    """Resize ``(B,1,H,W)`` masks to a latent or token grid ``(gh, gw)`` → ``(B,1,gh,gw)`` float.

    - ``any``: a cell is the max over its pixels (any coverage selects it); max-pooling when the grid divides the
      image, adaptive max-pooling (overlapping cells) otherwise.
    - ``area``: the mean coverage of each cell (adaptive average pooling = area interpolation).
    - ``bilinear``: ``F.interpolate(..., mode="bilinear", align_corners=False)``, no antialiasing.
    - ``nearest``: ``F.interpolate(..., mode="nearest")``.
    """
    grid = (int(grid_hw), int(grid_hw)) if isinstance(grid_hw, int) else (int(grid_hw[0]), int(grid_hw[1]))
    values, _ = _as_float_mask(mask)
    height, width = values.shape[-2:]
    if mode == "any":
        if height % grid[0] == 0 and width % grid[1] == 0:
            kernel = (height // grid[0], width // grid[1])
            return F.max_pool2d(values, kernel_size=kernel, stride=kernel)
        return F.adaptive_max_pool2d(values, grid)
    if mode == "area":
        return F.adaptive_avg_pool2d(values, grid)
    if mode == "bilinear":
        return F.interpolate(values, size=grid, mode="bilinear", align_corners=False)
    if mode == "nearest":
        return F.interpolate(values, size=grid, mode="nearest")
    raise ValueError(f"unknown mask_to_grid mode {mode!r}; use 'any', 'area', 'bilinear' or 'nearest'")
