"""Float-position rotary embedding for Qwen-Image (spec §4).

``QwenEmbedRope`` indexes integer tables: frame ``f`` → ``f``; row ``i`` of an ``h``-row image → ``i − ⌈h/2⌉`` (centred,
``scale_rope=True``); text position ``k`` → ``max(h//2, w//2) + k`` over all images. Coarse tokens sit between
integer rows (``2I + ½``), so specedit installs :class:`FloatPositionRope` as ``transformer.pos_embed``: with no
active layout it delegates to the original module (bitwise stock); with one it returns ``polar(1, pos ⊗ inv_freq)``
per axis computed on the CPU in float32 (identical table values at integer positions), moved to the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["FloatPositionRope", "QwenPositions", "axis_frequencies", "install_float_rope", "remove_float_rope"]


def _inv_freq(dim: int, theta: float) -> Tensor:
    # Same expression as QwenEmbedRope.rope_params so the products are bit-identical.
    return 1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float32).div(dim))


def axis_frequencies(positions: Tensor, axes_dim: Sequence[int], theta: float = 10000) -> Tensor:
    """``positions`` ``(N, 3)`` float32 (frame, row, col) → complex64 ``(N, Σ dim/2)`` rotary factors."""
    pos = positions.to("cpu", torch.float32)
    parts = []
    for axis, dim in enumerate(axes_dim):
        freqs = torch.outer(pos[:, axis], _inv_freq(dim, theta))
        parts.append(torch.polar(torch.ones_like(freqs), freqs))
    return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class QwenPositions:
    """An active layout for the rotary wrapper: image rows ``(N_img, 3)`` (frame, centred row, centred col) in
    joint order, and the first text position."""

    image: Tensor
    text_start: float

    @staticmethod
    def centred(rows_cols: Tensor, frame: int, frame_grid: tuple[int, int]) -> Tensor:
        """Rows/cols in a segment's frame → (frame, row − ⌈gh/2⌉, col − ⌈gw/2⌉) float32."""
        gh, gw = frame_grid
        out = torch.empty(rows_cols.shape[0], 3, dtype=torch.float32)
        out[:, 0] = float(frame)
        out[:, 1] = rows_cols[:, 0].float() - float(gh - gh // 2)
        out[:, 2] = rows_cols[:, 1].float() - float(gw - gw // 2)
        return out


class FloatPositionRope(nn.Module):
    """Drop-in for ``QwenEmbedRope``: stock when ``active is None``, float positions otherwise."""

    def __init__(self, original: nn.Module):
        super().__init__()
        if not hasattr(original, "axes_dim") or not getattr(original, "scale_rope", False):
            raise TypeError(
                f"specedit supports Qwen-Image's centred QwenEmbedRope (scale_rope=True), got {type(original).__name__}"
            )
        if type(original).__name__ != "QwenEmbedRope":
            raise TypeError(f"{type(original).__name__} is not supported (use_layer3d_rope models are future work)")
        self.original = original
        self.active: QwenPositions | None = None
        self._cache: tuple | None = None

    @property
    def axes_dim(self) -> list[int]:
        return list(self.original.axes_dim)

    @property
    def theta(self) -> float:
        return self.original.theta

    def forward(self, video_fhw, device: torch.device | None = None, max_txt_seq_len=None):
        if self.active is None:
            return self.original(video_fhw, device=device, max_txt_seq_len=max_txt_seq_len)
        if max_txt_seq_len is None:
            raise ValueError("`max_txt_seq_len` must be provided.")
        n_txt = int(max_txt_seq_len)
        key = (n_txt, str(device))
        if self._cache is not None and self._cache[0] is self.active and self._cache[1] == key:
            return self._cache[2]
        img = axis_frequencies(self.active.image, self.axes_dim, self.theta)
        txt_pos = self.active.text_start + torch.arange(n_txt, dtype=torch.float32)
        txt = axis_frequencies(txt_pos[:, None].expand(n_txt, 3), self.axes_dim, self.theta)
        if device is not None:
            img, txt = img.to(device), txt.to(device)
        self._cache = (self.active, key, (img, txt))
        return img, txt


def install_float_rope(transformer: nn.Module) -> FloatPositionRope:
    """Replace ``transformer.pos_embed`` by the wrapper (idempotent) and return it."""
    current = transformer.pos_embed
    if isinstance(current, FloatPositionRope):
        return current
    wrapper = FloatPositionRope(current)
    transformer.pos_embed = wrapper
    return wrapper


def remove_float_rope(transformer: nn.Module) -> None:
    current = getattr(transformer, "pos_embed", None)
    if isinstance(current, FloatPositionRope):
        transformer.pos_embed = current.original
