"""The garment judge: reads garments, accessories and per-pixel colours back from try-on images (toyworld.md §6).

- :func:`color_map` labels each pixel with the nearest of a list of named colours, or −1 when none lies within
  ``max_dist`` (RGB distance on the [0,1] scale). feat-tryon's residue, design-accuracy and motif metrics count
  these labels.
- :func:`read_garment` reads kind, pattern and colours of the garment inside a mask: RGB 2-means seeded from the
  palette inside the mask eroded by 1 px; ``plain`` if the minority cluster is under 12% of the pixels or the two
  centres are under 0.25 apart; otherwise the cluster map is matched against the striped / dotted / checkered
  templates at all 16 phases. The colours are then unmixed by least squares against the matched template's exact
  pixel coverage (a dot pixel is only 78.5% dot) and snapped to the palette. The kind is the silhouette with the
  best soft IoU against the mask, over the four kinds and five offsets.
- :func:`read_mannequin` also finds the figure's offset (from the fixed trouser colour), the garment pixels, the
  hat, the bag and the background.

Works on 32-px images; larger square images whose side is a multiple of 32 are area-averaged to 32 first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from flowcore.toy.constants import (
    COLORS,
    GARMENT_KINDS,
    GARMENT_PATTERNS,
    INK,
    PALETTE,
    SHOES,
    SKIN,
    TROUSERS,
)
from flowcore.toy.tryon import (
    CH_BAG,
    CH_GARMENT,
    CH_HAT,
    CH_HAT_ON_SKIN,
    CH_TROUSERS,
    OFFSETS,
    Garment,
    Mannequin,
    garment_atlas,
    pattern_fractions,
)

__all__ = ["COLOR_MAP_DEFAULT", "GarmentReading", "MannequinReading", "color_map", "read_garment", "read_mannequin"]

REFERENCE_SIZE = 32
PATTERN_PERIOD_PX = 4
PLAIN_MINORITY = 0.12
PLAIN_SEPARATION = 0.25
MATCH_DIST = 0.15  # a pixel "is" a colour within this RGB distance (the color_map default)

NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    **PALETTE, "skin": SKIN, "trousers": TROUSERS, "shoes": SHOES, "ink": INK,
}
COLOR_MAP_DEFAULT: tuple[str, ...] = (*COLORS, "skin", "trousers")
_PALETTE_RGB = np.array([PALETTE[c] for c in COLORS], dtype=np.float64) / 255.0


def _rgb01(name: str) -> np.ndarray:
    return np.array(NAMED_COLORS[name], dtype=np.float64) / 255.0


def _nearest_palette(rgb: np.ndarray, exclude: Sequence[str] = ()) -> str:
    dist = np.linalg.norm(_PALETTE_RGB - rgb[None], axis=1)
    for name in exclude:
        dist[COLORS.index(name)] = np.inf
    return COLORS[int(np.argmin(dist))]


# --------------------------------------------------------------------------------------------------------------
# per-pixel colours
# --------------------------------------------------------------------------------------------------------------
def color_map(img: torch.Tensor, colors: Sequence[str] | None = None, max_dist: float = 0.15) -> torch.Tensor:
    """Per-pixel colour labels ``(B,H,W)`` int64 (same device as ``img``): the index into ``colors`` of the nearest
    colour (Euclidean RGB distance on [0,1]), or −1 when none lies within ``max_dist``.

    img: ``(B,3,H,W)`` or ``(3,H,W)`` in [0,1]. colors: names from the palette and ``skin``, ``trousers``,
    ``shoes``, ``ink``; default ``COLOR_MAP_DEFAULT`` = the 8 palette colours, then skin and trousers (shoes lie
    0.10 from black and ink is a filter colour, so both are left out unless asked for).
    """
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"color_map expects a tensor image, got {type(img).__name__}")
    x = img[None] if img.ndim == 3 else img
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"color_map expects (B,3,H,W) or (3,H,W) RGB images, got shape {tuple(img.shape)}")
    names = COLOR_MAP_DEFAULT if colors is None else tuple(colors)
    unknown = [c for c in names if c not in NAMED_COLORS]
    if unknown or not names:
        raise ValueError(f"unknown colour names {unknown}; use names from {list(NAMED_COLORS)}")
    if max_dist <= 0:
        raise ValueError(f"max_dist must be positive, got {max_dist}")
    table = torch.tensor([NAMED_COLORS[c] for c in names], dtype=torch.float64, device=x.device) / 255.0
    dist = (x.double()[:, None] - table[None, :, :, None, None]).square().sum(2).sqrt()  # (B,K,H,W)
    best, label = dist.min(dim=1)
    return torch.where(best <= max_dist, label, torch.full_like(label, -1))


# --------------------------------------------------------------------------------------------------------------
# readings
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GarmentReading:
    """What :func:`read_garment` sees. ``colors``: ``(c,)`` for plain, ``(c1, c2)`` otherwise with c1 the colour of
    the pattern's first phase (the dots for ``dotted``). ``offset``: the figure offset of the best silhouette;
    ``kind_iou``: its soft IoU; ``pattern_score``: template agreement (1.0 for plain); ``phase``: (dy, dx) in px."""

    kind: str
    pattern: str
    colors: tuple[str, ...]
    offset: int
    kind_iou: float
    pattern_score: float
    phase: tuple[int, int] = (0, 0)

    def to_garment(self) -> Garment:
        return Garment(self.kind, self.pattern, self.colors)

    def color_ok(self, garment: Garment) -> bool:
        """Colours agree: ordered when both are dotted (dot colour first), as sets otherwise (a plain reading
        never matches a two-colour garment)."""
        if self.pattern == garment.pattern == "dotted":
            return tuple(self.colors) == tuple(garment.colors)
        return set(self.colors) == set(garment.colors)

    def matches(self, garment: Garment) -> dict[str, bool]:
        """Per-attribute agreement with a ground-truth garment: ``kind``, ``color``, ``pattern``."""
        return {"kind": self.kind == garment.kind, "color": self.color_ok(garment),
                "pattern": self.pattern == garment.pattern}


@dataclass(frozen=True)
class MannequinReading:
    """What :func:`read_mannequin` sees: the garment, hat / bag colour (None = absent), background, offset."""

    garment: GarmentReading
    hat: str | None
    bag: str | None
    background: str
    offset: int

    def to_mannequin(self) -> Mannequin:
        """The mannequin this reading describes (its garment at the figure's offset)."""
        return Mannequin(self.garment.to_garment(), self.hat, self.bag, self.background, self.offset)

    def matches(self, person: Mannequin) -> dict[str, bool]:
        """Per-attribute agreement: garment ``kind``/``color``/``pattern``, ``hat``, ``bag``, ``background``."""
        out = self.garment.matches(person.garment)
        out.update(hat=self.hat == person.hat, bag=self.bag == person.bag,
                   background=self.background == person.background)
        return out


# --------------------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------------------
def _image_batch(img: Any) -> tuple[np.ndarray, bool]:
    """-> float64 (B,3,32,32) array in [0,1] and whether the input was a single image."""
    arr = img.detach().to("cpu", torch.float64).numpy() if isinstance(img, torch.Tensor) else np.asarray(img, float)
    single = arr.ndim == 3
    arr = arr[None] if single else arr
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"expected (B,3,H,W) or (3,H,W) RGB images, got shape {tuple(arr.shape)}")
    return _to_reference(np.clip(arr, 0.0, 1.0)), single


def _to_reference(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[-2:]
    if h == w == REFERENCE_SIZE:
        return arr
    if h != w or h % REFERENCE_SIZE:
        raise ValueError(f"the garment judge reads square images whose side is a multiple of 32, got {h}×{w}")
    f = h // REFERENCE_SIZE
    return arr.reshape(*arr.shape[:-2], REFERENCE_SIZE, f, REFERENCE_SIZE, f).mean(axis=(-3, -1))


def _mask_batch(mask: Any, batch: int) -> np.ndarray:
    """-> bool (B,32,32); accepts (H,W), (1,H,W), (B,H,W) or (B,1,H,W), bool or float (> 0.5 = inside)."""
    arr = mask.detach().to("cpu", torch.float64).numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask, float)
    if arr.ndim == 4:
        if arr.shape[1] != 1:
            raise ValueError(f"a 4-D mask must be (B,1,H,W), got {arr.shape}")
        arr = arr[:, 0]
    elif arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise ValueError(f"mask must be (H,W), (1,H,W), (B,H,W) or (B,1,H,W), got shape {arr.shape}")
    if arr.shape[0] == 1 and batch > 1:
        arr = np.repeat(arr, batch, axis=0)
    if arr.shape[0] != batch:
        raise ValueError(f"got {arr.shape[0]} masks for {batch} images")
    return _to_reference(arr.astype(np.float64)) >= 0.5


# --------------------------------------------------------------------------------------------------------------
# garment reading
# --------------------------------------------------------------------------------------------------------------
def _two_means(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB 2-means seeded by the two most frequent nearest-palette colours; -> (labels (N,), centres (2,3))."""
    nearest = np.argmin(np.linalg.norm(pixels[:, None] - _PALETTE_RGB[None], axis=2), axis=1)
    counts = np.bincount(nearest, minlength=len(COLORS))
    order = np.argsort(-counts, kind="stable")
    if counts[order[1]] == 0:  # one palette colour only: seed the second centre with the farthest pixel
        far = pixels[np.argmax(np.linalg.norm(pixels - _PALETTE_RGB[order[0]], axis=1))]
        centres = np.stack([_PALETTE_RGB[order[0]], far])
    else:
        centres = _PALETTE_RGB[order[:2]].copy()
    labels = np.zeros(len(pixels), dtype=int)
    for _ in range(20):
        new = np.argmin(np.linalg.norm(pixels[:, None] - centres[None], axis=2), axis=1)
        for k in range(2):
            if (new == k).any():
                centres[k] = pixels[new == k].mean(axis=0)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, centres


@lru_cache(maxsize=1)
def _templates() -> np.ndarray:
    """c1 fractions (3 patterns, 16 phases, 32, 32) of striped/dotted/checkered, phase index = 4·dy + dx."""
    fractions = pattern_fractions(REFERENCE_SIZE).numpy()
    out = np.empty((len(GARMENT_PATTERNS) - 1, PATTERN_PERIOD_PX**2, REFERENCE_SIZE, REFERENCE_SIZE))
    for p in range(1, len(GARMENT_PATTERNS)):
        for dy in range(PATTERN_PERIOD_PX):
            for dx in range(PATTERN_PERIOD_PX):
                out[p - 1, PATTERN_PERIOD_PX * dy + dx] = np.roll(fractions[p], shift=(dy, dx), axis=(0, 1))
    out.setflags(write=False)
    return out


def _pattern_template(pattern: str, dy: int, dx: int) -> np.ndarray:
    """c1 fraction (32,32) of ``pattern`` shifted by (dy, dx) px (phase 0 = the canvas-anchored layout)."""
    return _templates()[GARMENT_PATTERNS.index(pattern) - 1, PATTERN_PERIOD_PX * dy + dx]


def _match_pattern(cluster: np.ndarray, inside: np.ndarray) -> tuple[str, tuple[int, int], float]:
    """Best (pattern, phase, agreement) of the binary cluster map against all templates at all 16 phases, with
    either cluster as the first colour (the better of the two counts)."""
    templates = _templates()[:, :, inside] >= 0.5  # (3,16,N)
    agree = (templates == cluster[inside]).mean(axis=2)
    score = np.maximum(agree, 1.0 - agree)
    p, phase = np.unravel_index(int(np.argmax(score)), score.shape)
    return GARMENT_PATTERNS[p + 1], divmod(int(phase), PATTERN_PERIOD_PX), float(score[p, phase])


def _unmix(pixels: np.ndarray, fraction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares colours (c1, c2) with pixel ≈ a·c1 + (1−a)·c2 for known c1 fractions ``a``."""
    design = np.stack([fraction, 1.0 - fraction], axis=1)  # (N,2)
    solution, *_ = np.linalg.lstsq(design, pixels, rcond=None)
    return solution[0], solution[1]


def _silhouette(mask: np.ndarray) -> tuple[str, int, float]:
    """(kind, offset, soft IoU) of the garment silhouette that best fits a binary mask."""
    coverage = garment_atlas(REFERENCE_SIZE)[:, :, CH_GARMENT].numpy()  # (5,4,32,32)
    m = mask.astype(np.float64)[None, None]
    inter = np.minimum(coverage, m).sum(axis=(2, 3))
    union = np.maximum(coverage, m).sum(axis=(2, 3))
    iou = inter / np.maximum(union, 1e-12)
    o, k = np.unravel_index(int(np.argmax(iou)), iou.shape)
    return GARMENT_KINDS[k], OFFSETS[o], float(iou[o, k])


def _full_coverage(kind: str, offset: int) -> np.ndarray:
    """Pixels (32,32) the garment of ``kind`` at ``offset`` covers completely."""
    atlas = garment_atlas(REFERENCE_SIZE)
    return atlas[OFFSETS.index(offset), GARMENT_KINDS.index(kind), CH_GARMENT].numpy() >= 1.0


def _erode(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)


def _read_pattern(img: np.ndarray, interior: np.ndarray) -> tuple[str, tuple[str, ...], float, tuple[int, int]]:
    """(pattern, colours, template agreement, phase) from the pixels of ``interior`` (bool (32,32))."""
    pixels = img[:, interior].T  # (N,3)
    labels, centres = _two_means(pixels)
    minority = min(labels.mean(), 1 - labels.mean())
    if minority < PLAIN_MINORITY or np.linalg.norm(centres[0] - centres[1]) < PLAIN_SEPARATION:
        return "plain", (_nearest_palette(np.median(pixels, axis=0)),), 1.0, (0, 0)
    cluster = np.zeros(interior.shape, dtype=bool)
    cluster[interior] = labels == 1
    pattern, phase, score = _match_pattern(cluster, interior)
    rgb1, rgb2 = _unmix(pixels, _pattern_template(pattern, *phase)[interior])
    c1 = _nearest_palette(rgb1)
    return pattern, (c1, _nearest_palette(rgb2, exclude=(c1,))), score, phase


def _read_one_garment(img: np.ndarray, mask: np.ndarray, silhouette: np.ndarray | None = None) -> GarmentReading:
    """Kind from the silhouette that best fits ``silhouette`` (default ``mask``); pattern and colours from the
    pixels of ``mask`` eroded by 1 px that this kind covers completely (so anti-aliased rims and the
    sleeve/torso seam, where background shows through, never enter the clustering)."""
    if not mask.any():
        raise ValueError("the garment mask is empty; pass the (1,H,W) region of the garment to read")
    kind, offset, kind_iou = _silhouette(mask if silhouette is None else silhouette)
    eroded = _erode(mask)
    interior = eroded & _full_coverage(kind, offset)
    if interior.sum() < 8:  # the mask is not much of a garment silhouette: read what it holds
        interior = eroded if eroded.sum() >= 4 else mask
    pattern, colors, score, phase = _read_pattern(img, interior)
    return GarmentReading(kind, pattern, colors, offset, kind_iou, score, phase)


def read_garment(img: Any, mask: Any) -> GarmentReading | list[GarmentReading]:
    """Read the garment inside ``mask``: kind, pattern and colours (toyworld §6).

    img: ``(3,H,W)`` or ``(B,3,H,W)`` in [0,1] (H = W = 32, or a multiple of 32, area-averaged to 32).
    mask: ``(H,W)``, ``(1,H,W)``, ``(B,H,W)`` or ``(B,1,H,W)``; bool or float (> 0.5 = inside), e.g. ``M_p``/``M_s``.
    Returns one :class:`GarmentReading` for a single image, a list for a batch.
    """
    x, single = _image_batch(img)
    masks = _mask_batch(mask, x.shape[0])
    readings = [_read_one_garment(x[b], masks[b]) for b in range(x.shape[0])]
    return readings[0] if single else readings


# --------------------------------------------------------------------------------------------------------------
# mannequin reading
# --------------------------------------------------------------------------------------------------------------
def _background(img: np.ndarray) -> str:
    ring = np.concatenate([img[:, 0, :], img[:, -1, :], img[:, 1:-1, 0], img[:, 1:-1, -1]], axis=1)
    return _nearest_palette(np.median(ring, axis=1))


def _offset(img: np.ndarray) -> int:
    """The figure offset whose lower legs (rows always below any skirt) best match the trouser-coloured pixels."""
    trousers = np.linalg.norm(img - _rgb01("trousers")[:, None, None], axis=0) <= MATCH_DIST
    rows = slice(27, 30)  # y ∈ [0.84, 0.94): legs visible for every garment kind
    legs = garment_atlas(REFERENCE_SIZE)[:, 0, CH_TROUSERS].numpy() >= 0.5  # kind 0 (t-shirt): no skirt
    scores = [(legs[o, rows] == trousers[rows]).sum() for o in range(len(OFFSETS))]
    return OFFSETS[int(np.argmax(scores))]


def _accessory(img: np.ndarray, channel: int, offset: int, background: str) -> str | None:
    """Colour of the hat / bag at ``offset``, or None when its region shows the background.

    Reads the pixels the accessory covers at least half over background (never over skin, so a bare head is no
    hat) and, as the scene judge does, takes the half of them farthest from the background (blurred rims mix).
    """
    atlas = garment_atlas(REFERENCE_SIZE)[OFFSETS.index(offset), 0]
    over_background = atlas[channel] - (atlas[CH_HAT_ON_SKIN] if channel == CH_HAT else 0.0)
    pixels = img[:, over_background.numpy() >= 0.5].T  # (N,3)
    bg = _rgb01(background)
    distance = np.linalg.norm(pixels - bg, axis=1)
    far = pixels[distance >= np.median(distance)]
    colour = np.median(far, axis=0)
    if np.linalg.norm(colour - bg) <= MATCH_DIST:
        return None
    return _nearest_palette(colour, exclude=(background,))


def _segment_distance(img: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel RGB distance (H,W) from ``img`` (3,H,W) to the mixtures ``a + t(b − a)``, t ∈ [0, 1]."""
    ab = b - a
    rel = img - a[:, None, None]
    t = np.clip(np.einsum("chw,c->hw", rel, ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(rel - t[None] * ab[:, None, None], axis=0)


def _garment_pixels(img: np.ndarray, offset: int, background: str) -> np.ndarray:
    """Pixels inside some garment silhouette at ``offset`` that no mixture of background, skin and trousers
    explains (anti-aliased pixels where an arm, a background gap and the torso meet are such mixtures; every
    palette colour lies ≥ 0.26 from all of them)."""
    silhouettes = garment_atlas(REFERENCE_SIZE)[OFFSETS.index(offset), :, CH_GARMENT].numpy().max(axis=0) > 0
    bg, skin, trousers = _rgb01(background), _rgb01("skin"), _rgb01("trousers")
    dist = np.minimum.reduce([_segment_distance(img, bg, skin), _segment_distance(img, bg, trousers),
                              _segment_distance(img, skin, trousers)])
    return silhouettes & (dist > MATCH_DIST)


def _read_one_mannequin(img: np.ndarray) -> MannequinReading:
    background = _background(img)
    offset = _offset(img)
    pixels = _garment_pixels(img, offset, background)
    if not pixels.any():
        raise ValueError("no garment pixels found: is this a try-on mannequin image in [0,1]?")
    kind, garment_offset, _ = _silhouette(pixels)
    region = garment_atlas(REFERENCE_SIZE)[OFFSETS.index(garment_offset), GARMENT_KINDS.index(kind), CH_GARMENT]
    # Read the pattern over the whole detected silhouette: mixed pattern pixels (a dot pixel is 78.5% dot) can
    # fall near a background–skin mixture and be missing from ``pixels``.
    garment = _read_one_garment(img, region.numpy() > 0, silhouette=pixels)
    hat = _accessory(img, CH_HAT, offset, background)
    bag = _accessory(img, CH_BAG, offset, background)
    return MannequinReading(garment, hat, bag, background, offset)


def read_mannequin(img: Any) -> MannequinReading | list[MannequinReading]:
    """Read a whole try-on image: garment (kind, pattern, colours), hat, bag, background and figure offset.

    img: ``(3,H,W)`` or ``(B,3,H,W)`` in [0,1]. Returns one :class:`MannequinReading`, or a list for a batch.
    """
    x, single = _image_batch(img)
    readings = [_read_one_mannequin(x[b]) for b in range(x.shape[0])]
    return readings[0] if single else readings
