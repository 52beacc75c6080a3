"""Masks for DirectEdit (spec §2.9): user masks, the attention-derived mask, and their preprocessing.

Convention: 1 = editable, 0 = preserve. The blend mask lives on the *blend grid*: the latent grid ``(B,1,h,w)``
for SD3 (and VP / grid-latent models), the token grid flattened to ``(B,T,1)`` for FLUX/Kontext (target tokens
only). Preprocessing (:func:`prepare_mask`) is composed of ``flowcore.images`` functions: pad with 0 to the padded
image size, dilate with a square max filter, bilinear resize to the blend grid.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from directedit.config import arch_of
from flowcore.images import dilate, load_mask, mask_to_grid, pad_to_multiple

__all__ = [
    "AttentionMask",
    "MaskContext",
    "MaskProvider",
    "UserMask",
    "blend_grid",
    "default_dilation",
    "pixel_mask",
    "prepare_mask",
    "resolve_mask",
]

# PIL modes that can hold a mask; colour modes are accepted only when their channels agree (a grey image).
_GREY_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_COLOUR_TOLERANCE = 3 / 255  # JPEG-saved grey masks differ slightly between channels


def default_dilation(model: Any) -> int:
    """Pixel dilation per family (spec §2.9): SD3 3 (7×7), FLUX/Kontext 0, toy-sd3 1, toy-flux/kontext 0."""
    arch = arch_of(model)
    if getattr(model, "is_toy", False):
        return 1 if arch == "sd3" else 0
    return 3 if arch == "sd3" else 0


def blend_grid(model: Any, height: int, width: int) -> tuple[int, int]:
    """The blend grid of a padded ``height × width`` image: FLUX token grid, otherwise the latent grid."""
    if arch_of(model) == "flux":
        m = model.pad_multiple
        return height // m, width // m
    f = model.vae_scale_factor
    return height // f, width // f


def to_blend_layout(model: Any, grid_mask: Tensor) -> Tensor:
    """``(B,1,h,w)`` → the state layout: FLUX ``(B, h·w, 1)`` (row-major tokens), else unchanged."""
    if arch_of(model) == "flux":
        b = grid_mask.shape[0]
        return grid_mask.reshape(b, -1, 1)
    return grid_mask


# --- user masks ---------------------------------------------------------------------------------------------
def _check_pil_mode(img: Image.Image) -> None:
    mode = img.mode
    if mode in _GREY_MODES or mode in _ALPHA_MODES:
        if mode in ("RGBA", "RGBa"):
            alpha = np.asarray(img.getchannel("A"))
            if alpha.min() == alpha.max():  # opaque RGBA: the colour channels carry the mask
                _check_grey(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0, mode)
        return
    if mode in ("RGB", "P"):
        _check_grey(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0, mode)
        return
    raise ValueError(f"mask image has mode {mode!r}, which cannot hold a mask; save it as a greyscale image "
                     "(mode 'L' or '1', white = editable) or an RGBA image whose alpha is the mask")


def _check_grey(rgb: np.ndarray, mode: str) -> None:
    spread = float((rgb.max(axis=-1) - rgb.min(axis=-1)).max()) if rgb.size else 0.0
    if spread > _COLOUR_TOLERANCE:
        raise ValueError(f"the mask is a colour image (mode {mode!r} whose channels differ by up to "
                         f"{spread * 255:.0f}/255): pass a greyscale mask (white = editable, black = preserve)")


def _check_array_mask(t: Tensor) -> None:
    if t.dtype == torch.bool or t.dtype == torch.uint8:
        return
    if not t.is_floating_point():
        raise ValueError(f"mask tensors must be bool, uint8 or float in [0, 1], got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError("the mask contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"mask values must lie in [0, 1] (1 = editable), got min {lo:.4g}, max {hi:.4g}")
    channel_dim = 1 if t.ndim == 4 else (0 if t.ndim == 3 and t.shape[0] in (3, 4) else None)
    if channel_dim is not None and t.shape[channel_dim] in (3, 4):
        rgb = t.narrow(channel_dim, 0, 3)
        if float((rgb.amax(channel_dim) - rgb.amin(channel_dim)).max()) > _COLOUR_TOLERANCE:
            raise ValueError("the mask tensor has 3 colour channels that differ: pass (B,1,H,W) or a grey image")


def load_user_mask(src: Any, size: tuple[int, int], *, invert: bool = False) -> Tensor:
    """A user mask as ``(B,1,H,W)`` float in [0, 1] at ``size = (H, W)``, after mode and value checks.

    ``src``: a path (a missing file raises ``FileNotFoundError``; never a silent zero mask), a PIL image, a numpy
    array or a tensor. Masks of the same aspect ratio are resized with nearest sampling (flowcore's policy); a
    mask of another aspect ratio raises ``ValueError`` naming both sizes.
    """
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"mask file not found: {path!r} (check the path; no mask is substituted)")
        with Image.open(path) as img:
            img.load()
            src = img.copy()
    if isinstance(src, Image.Image):
        _check_pil_mode(src)
    elif isinstance(src, np.ndarray):
        _check_array_mask(torch.from_numpy(np.ascontiguousarray(src.astype(np.float32) / 255.0
                                                                  if src.dtype == np.uint8 else src)))
    elif isinstance(src, Tensor):
        _check_array_mask(src)
    else:
        raise TypeError(f"cannot use a {type(src).__name__} as a mask: pass a path, PIL image, numpy array or tensor")
    return load_mask(src, size, invert=invert).float()


def pixel_mask(mask: Any, model: Any, image_size: tuple[int, int], *, dilation_px: int | None = None,
               invert: bool = False) -> Tensor:
    """Steps 1–2 of the preprocessing: the mask padded with 0 to the padded image size, then dilated.

    Returns ``(B,1,Hp,Wp)`` float in [0, 1].
    """
    loaded = load_user_mask(mask, image_size, invert=invert)
    padded, _ = pad_to_multiple(loaded, model.pad_multiple, mode="zero")
    d = default_dilation(model) if dilation_px is None else int(dilation_px)
    return dilate(padded, d, shape="square") if d > 0 else padded


def prepare_mask(mask: Any, model: Any, image_size: tuple[int, int], *, dilation_px: int | None = None,
                 invert: bool = False) -> Tensor:
    """A user mask on the blend grid: pad with 0, dilate ``(2d+1)²``, bilinear resize (spec §2.9).

    Args:
        mask: path, PIL image, numpy array or tensor (1 = editable).
        model: the FlowModel (decides the padding multiple, blend grid and default dilation).
        image_size: ``(H, W)`` of the (unpadded) image the mask belongs to.
        dilation_px: d; ``None`` = the per-family default (:func:`default_dilation`).
        invert: use ``1 − mask`` (for masks that mark what to keep).
    Returns:
        SD3 / grid latents: ``(B,1,h,w)``; FLUX/Kontext: ``(B,T,1)``; float32 in [0, 1].
    """
    pix = pixel_mask(mask, model, image_size, dilation_px=dilation_px, invert=invert)
    grid = blend_grid(model, pix.shape[-2], pix.shape[-1])
    return to_blend_layout(model, mask_to_grid(pix, grid, mode="bilinear").clamp(0.0, 1.0))


@dataclass
class UserMask:
    """A mask given by the user (path, PIL image, numpy array or tensor; 1 = editable)."""

    source: Any
    invert: bool = False
    dilation_px: int | None = None

    def __call__(self, ctx: MaskContext) -> Tensor:
        d = self.dilation_px if self.dilation_px is not None else ctx.dilation_px
        return prepare_mask(self.source, ctx.model, ctx.image_size, dilation_px=d, invert=self.invert)

    def describe(self) -> dict[str, Any]:
        src = self.source if isinstance(self.source, (str, os.PathLike)) else type(self.source).__name__
        return {"provider": "user", "source": str(src), "invert": self.invert}


@dataclass
class MaskContext:
    """What a mask provider can use. ``image_size``: the unpadded ``(H, W)``; ``padded_size`` the padded one."""

    model: Any
    image_size: tuple[int, int]
    padded_size: tuple[int, int]
    n_images: int
    cache: Any = None
    source_prompts: tuple[str, ...] | None = None
    target_prompts: tuple[str, ...] | None = None
    dilation_px: int | None = None


@runtime_checkable
class MaskProvider(Protocol):
    """Any callable ``provider(ctx: MaskContext) -> Tensor | None``.

    It may return a pixel mask ``(B|1,1,H,W)`` at ``ctx.image_size`` (preprocessed by :func:`prepare_mask`) or a
    mask already on the blend grid; ``None`` means no mask.
    """

    def __call__(self, ctx: MaskContext) -> Tensor | None: ...


# --- the attention-derived mask -----------------------------------------------------------------------------
_WORD = re.compile(r"[\w'-]+")


def changed_words(source_prompt: str, target_prompt: str) -> list[str]:
    """Source words that the target replaces or deletes (``difflib`` alignment of the word sequences)."""
    src = _WORD.findall(source_prompt.lower())
    tar = _WORD.findall(target_prompt.lower())
    out: list[str] = []
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(a=src, b=tar, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            out.extend(src[i1:i2])
    return list(dict.fromkeys(out))


def _ids(tokenizer: Any, text: str) -> list[int]:
    try:
        enc = tokenizer(text, padding=False, return_tensors=None)
    except (TypeError, ValueError):
        enc = tokenizer(text)
    ids = enc["input_ids"]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def token_positions(model: Any, prompt: str, words: Sequence[str]) -> list[int]:
    """Positions (inside the text segment of the joint sequence) of the tokens of ``words`` in ``prompt``."""
    try:
        return list(model.token_positions(prompt, list(words)))
    except (ValueError, TypeError, AttributeError):
        pass  # flowcore's lookup fails on some tokenizers (e.g. the toy one); do it here
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{type(model).__name__} has no tokenizer to locate words for an attention mask")
    ids = _ids(tokenizer, prompt)
    empty = _ids(tokenizer, "")
    offset = int(model._text_offset()) if hasattr(model, "_text_offset") else 0
    positions: list[int] = []
    for word in words:
        sub = _ids(tokenizer, word)
        if empty and sub and sub[-1] == empty[-1]:
            sub = sub[:-1]
        if len(empty) >= 2 and sub and sub[0] == empty[0]:
            sub = sub[1:]
        found = [i for i in range(len(ids) - len(sub) + 1) if sub and ids[i:i + len(sub)] == sub]
        if not found:
            raise ValueError(f"word {word!r} not found in the tokenised prompt {prompt!r}")
        positions.extend(offset + found[0] + j for j in range(len(sub)))
    return positions


class AttentionMask:
    """A mask from the inversion's attention (ours; no network service, spec §2.9).

    1. Words: the source words the target replaces or deletes (``difflib``), or ``words=``.
    2. In inversion calls with σ ∈ ``sigma_range``, at the text-aware sites (FLUX double blocks, SD3 joint
       ``attn``), for the source cond rows: softmax of the image queries over all keys (chunks of ``chunk``
       queries), summed over the selected text columns, averaged over heads, sites and steps.
    3. Min–max normalised, thresholded at ``threshold``, dilated by one cell, nearest-resized to the blend grid.

    Pass it as ``invert(..., mask_probe=AttentionMask(target_prompt=...))`` (or ``direct_edit(mask="attention")``),
    then ``edit(..., mask=...)`` uses the map stored in the cache.
    """

    def __init__(self, words: Sequence[str] | None = None, *, source_prompt: str | None = None,
                 target_prompt: str | None = None, sigma_range: tuple[float, float] = (0.2, 0.8),
                 threshold: float = 0.5, chunk: int = 1024):
        self.words = None if words is None else [str(w) for w in words]
        self.source_prompt = source_prompt
        self.target_prompt = target_prompt
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        self.threshold = float(threshold)
        self.chunk = int(chunk)
        self.columns: list[int] = []
        self.total: Tensor | None = None
        self.count = 0
        self.grid: tuple[int, int] | None = None
        self.selected = False

    # --- probing (during the inversion) -----------------------------------------------------------------
    def select(self, model: Any, source_prompt: str | None, target_prompt: str | None = None) -> list[int]:
        """Choose the text columns; an empty selection warns (no mask will result)."""
        self.selected = True
        src = self.source_prompt or source_prompt
        tar = self.target_prompt or target_prompt
        words = self.words
        if words is None:
            if src is None or tar is None:
                raise ValueError("AttentionMask needs the source and target prompts (or words=) to pick text tokens")
            words = changed_words(src, tar)
        if not words:
            warnings.warn("AttentionMask: the source and target prompts differ in no word, so no text tokens are "
                          "selected and no mask is made; name the words to edit with words=[...]", stacklevel=3)
            self.columns = []
            return []
        if src is None:
            raise ValueError("AttentionMask needs the source prompt to locate the words")
        self.columns = token_positions(model, src, words)
        self.words = list(words)
        return self.columns

    def reset(self) -> None:
        self.total, self.count, self.grid = None, 0, None

    def active(self, sigma: float) -> bool:
        return bool(self.columns) and self.sigma_range[0] <= sigma <= self.sigma_range[1]

    @torch.no_grad()
    def observe(self, q: Tensor, k: Tensor, ctx: Any, rows: Tensor | None) -> None:
        """Accumulate one site's attention. ``q``, ``k``: ``[B, S, heads, d]`` after RoPE."""
        layout = ctx.layout
        if layout is None or not layout.has("text") or not self.columns:
            return
        img = layout.slice("target")
        text = layout.slice("text")
        cols = torch.tensor([text.start + c for c in self.columns if c < text.stop - text.start],
                            dtype=torch.long, device=q.device)
        if rows is not None:
            q, k = q.index_select(0, rows.to(q.device)), k.index_select(0, rows.to(k.device))
        q_img = q[:, img].float()
        keys = k.float()
        scale = q.shape[-1] ** -0.5
        parts = []
        for start in range(0, q_img.shape[1], self.chunk):
            logits = torch.einsum("bqhd,bkhd->bhqk", q_img[:, start:start + self.chunk], keys) * scale
            parts.append(logits.softmax(dim=-1).index_select(-1, cols).sum(-1).mean(1))
        amap = torch.cat(parts, dim=1).cpu()
        self.total = amap if self.total is None else self.total + amap
        self.count += 1
        self.grid = layout.grid("target")

    def attention_map(self) -> Tensor | None:
        """The averaged map ``(B,1,h,w)`` on the image-token grid, or ``None`` when nothing was observed."""
        if self.total is None or self.count == 0 or self.grid is None:
            return None
        return (self.total / self.count).reshape(-1, 1, *self.grid)

    # --- the mask (for the forward pass) ------------------------------------------------------------------
    @staticmethod
    def mask_from_map(amap: Tensor, model: Any, padded_size: tuple[int, int], threshold: float = 0.5) -> Tensor:
        """Normalise, threshold, dilate one cell, nearest-resize to the blend grid, state layout."""
        flat = amap.flatten(1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        norm = (amap - lo.view(-1, 1, 1, 1)) / (hi - lo).clamp_min(1e-12).view(-1, 1, 1, 1)
        binary = (norm > threshold).float()
        binary = dilate(binary, 1, shape="square")
        grid = blend_grid(model, *padded_size)
        return to_blend_layout(model, mask_to_grid(binary, grid, mode="nearest"))

    def __call__(self, ctx: MaskContext) -> Tensor | None:
        cache = ctx.cache
        amap = getattr(cache, "attention_map", None) if cache is not None else None
        if amap is None:
            amap = self.attention_map()
        if amap is not None:
            return self.mask_from_map(amap, ctx.model, ctx.padded_size, self.threshold)
        if self.selected or (cache is not None and getattr(cache, "attention_info", None) is not None):
            return None  # the probe ran but selected no words (it warned): no mask
        raise ValueError("no attention map: invert with mask_probe=AttentionMask(...) (direct_edit(mask='attention') "
                         "does it) to record one")

    def describe(self) -> dict[str, Any]:
        return {"provider": "attention", "words": self.words, "sigma_range": list(self.sigma_range),
                "threshold": self.threshold}


def resolve_mask(mask: Any, ctx: MaskContext) -> tuple[Tensor | None, dict[str, Any]]:
    """Any accepted ``mask=`` value → the blend mask (or ``None``) and a description for the sidecar JSON."""
    if mask is None:
        return None, {"provider": None}
    if isinstance(mask, str) and mask == "attention":
        provider: Any = AttentionMask()
    elif isinstance(mask, (AttentionMask, UserMask)):
        provider = mask
    elif isinstance(mask, (str, os.PathLike, Image.Image, np.ndarray, Tensor)):
        provider = UserMask(mask)
    elif callable(mask):
        provider = mask
    else:
        raise TypeError(f"mask must be None, 'attention', a path, image, array, tensor or a callable, "
                        f"got {type(mask).__name__}")
    out = provider(ctx)
    info = provider.describe() if hasattr(provider, "describe") else {"provider": getattr(provider, "__name__",
                                                                                          type(provider).__name__)}
    if out is None:
        return None, info
    if not isinstance(provider, (AttentionMask, UserMask)):
        out = _callable_result(out, ctx)
    info = {**info, "dilation_px": ctx.dilation_px if ctx.dilation_px is not None else default_dilation(ctx.model),
            "coverage": float(out.float().mean())}
    if float(out.max()) == 0.0:
        warnings.warn("the mask is empty (all zeros): nothing is editable, so the edit equals the reconstruction",
                      stacklevel=3)
    return out, info


def _callable_result(out: Tensor, ctx: MaskContext) -> Tensor:
    """A provider's tensor: a pixel mask at the image size is preprocessed; a blend-grid mask is used as is."""
    if not isinstance(out, Tensor):
        out = torch.as_tensor(np.asarray(out))
    h, w = ctx.image_size
    if out.ndim >= 2 and tuple(out.shape[-2:]) == (h, w):
        return prepare_mask(out, ctx.model, ctx.image_size, dilation_px=ctx.dilation_px)
    gh, gw = blend_grid(ctx.model, *ctx.padded_size)
    expected = (gh * gw, 1) if arch_of(ctx.model) == "flux" else (1, gh, gw)
    if tuple(out.shape[1:]) != expected:
        raise ValueError(f"the mask provider returned shape {tuple(out.shape)}; expected a pixel mask (B,1,{h},{w}) "
                         f"or a blend-grid mask (B,{','.join(map(str, expected))})")
    _check_array_mask(out)
    return out.float()


MaskLike = Callable[[MaskContext], Tensor | None]
