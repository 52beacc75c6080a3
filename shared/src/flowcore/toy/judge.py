"""The scene judge (toyworld.md §6): read a toy scene back from pixels, and the scores built on it.

:func:`read_scene` is a deterministic numpy/scipy reader:

1. **Background** — fit ``a + b·y`` per channel to the 1-px border ring by least squares, refitting 4 times
   without ring pixels whose residual exceeds ``max(0.06, 3·median)``; the colour is the palette colour nearest
   the fitted top row.
2. **Foreground** — ``‖img − bg(y)‖ > 0.15``, 8-connected components of ≥ 3 px.
3. **Colours** — ``c1`` = nearest palette colour (background excluded) to the median of the component pixels
   in the upper half of distance from the background (the anti-aliased rim mixes colours). Pixels are modelled
   as ``bg + α(c1 − bg)``; if ≥ 4 leave a residual above 0.12 a second touching object of colour ``c2`` is
   split off, every pixel going to the mixture that fits it better (unless one other palette colour
   explains the whole component: thin objects under blur have no pure pixels).
4. **Coverage** — ``α`` = clipped projection onto ``c − bg`` inside the component dilated by 1 px; area
   ``Σα`` (blur-invariant); centre = α-weighted centroid. Objects with ``Σα`` below 4 px² (at 32 px; a third
   of the smallest object) are noise specks and dropped.
5. **Shape and size** — for every shape, ``s = sqrt(area / area_fraction)``, a template centred on the
   centroid (moved up by ``s/6`` for the triangle), rendered with 4× supersampling sharp and blurred
   (σ = 0.6 px), scored by soft IoU ``Σmin/Σmax`` under a small search of centre offsets (±0.25 px); the best
   score gives the shape, ``s`` the size class (small < 0.19 ≤ medium < 0.25 ≤ large).
6. **Position** — the cell containing the template's bounding-box centre.

Scores: :func:`alignment` (prompt alignment, the toy CLIP score / GenEval), :func:`edit_success` (edit pairs)
and :func:`rerender_psnr` (an image-quality proxy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from flowcore.metrics import masked_psnr
from flowcore.toy.constants import (
    COLORS,
    PALETTE,
    POSITIONS,
    SHAPE_AREA_FRACTION,
    SHAPES,
)
from flowcore.toy.edits import IDENTITY_KIND, EditPair
from flowcore.toy.render import SHAPE_INSIDE
from flowcore.toy.scene import (
    JITTER_MAX,
    Background,
    Obj,
    Scene,
    SceneSpec,
    parse_caption,
)

__all__ = [
    "AlignmentResult",
    "Claim",
    "EditResult",
    "ObjReading",
    "SceneReading",
    "alignment",
    "edit_success",
    "read_scene",
    "rerender_psnr",
]

PALETTE_RGB = np.array([PALETTE[c] for c in COLORS], dtype=np.float64) / 255.0  # (8,3)
FOREGROUND_THRESHOLD = 0.15
MIN_COMPONENT_PX = 3
MIN_OBJECT_AREA = 4 / 1024  # canvas units²: 4 px² at 32 px, a third of the smallest object (noise specks)
SPLIT_RESIDUAL = 0.12
SPLIT_MIN_PX = 4
RING_REFITS = 4
TEMPLATE_SUPERSAMPLE = 4
TEMPLATE_BLUR = 0.6
SEARCH_OFFSETS_PX = (-0.25, 0.0, 0.25)
SIZE_THRESHOLDS = (0.19, 0.25)  # small | medium | large
BG_PSNR_CAP_DB = 60.0
RERENDER_PSNR_CAP_DB = 100.0
CLAIM_TYPES = ("background", "count", "shape", "color", "size", "position")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------------------------------
# result types
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjReading:
    """One object read from pixels. ``center``: bounding-box centre ``(x, y)`` in canvas units; ``side``: the
    fitted ``s``; ``area``: ``Σα`` in canvas units²; ``iou``: soft IoU of the winning template."""

    shape: str
    color: str
    size: str
    cell: str
    center: tuple[float, float]
    side: float
    area: float
    iou: float

    def to_obj(self) -> Obj:
        """The nearest scene object (jitter rounded to 1/256 and clipped to ±4)."""
        row, col = divmod(POSITIONS.index(self.cell), 3)
        kx = round((self.center[0] - (col + 0.5) / 3) * 256)
        ky = round((self.center[1] - (row + 0.5) / 3) * 256)
        clip = lambda k: max(-JITTER_MAX, min(JITTER_MAX, int(k)))  # noqa: E731
        return Obj(self.shape, self.color, self.size, self.cell, (clip(kx), clip(ky)))


@dataclass(frozen=True)
class SceneReading:
    """What :func:`read_scene` sees: the background colour, the objects (cell order), the estimated gradient
    (``gradient`` toward ``toward``) and the raw background fit ``bg(y) = fit_a + fit_b·y`` per channel."""

    background: str
    objects: tuple[ObjReading, ...]
    gradient: float = 0.0
    toward: str = "white"
    fit_a: tuple[float, ...] = (0.0, 0.0, 0.0)
    fit_b: tuple[float, ...] = (0.0, 0.0, 0.0)

    def to_scene(self, strict: bool = True) -> Scene:
        """The scene this reading describes. ``strict=False`` skips the §2.3 checks (any object count, shared
        cells or colours), for re-rendering model outputs; ``strict=True`` raises ``ToySceneError`` instead."""
        objs = tuple(o.to_obj() for o in self.objects)
        background = Background(self.background, self.gradient, self.toward)
        return Scene(objs, background) if strict else Scene.unchecked(objs, background)


@dataclass(frozen=True)
class Claim:
    """One checkable statement of a caption. ``object``: caption object index (``None`` for background and
    count); ``value``: the claimed value; ``confirmed``: whether the reading agrees."""

    type: str
    object: int | None
    value: str | int
    confirmed: bool


@dataclass(frozen=True)
class AlignmentResult:
    """``score`` = confirmed fraction of claims, ``strict`` = all confirmed, ``accuracies`` per claim type (only
    types the caption makes), ``matching[j]`` = the read object matched to caption object ``j`` (or ``None``)."""

    score: float
    strict: bool
    accuracies: dict[str, float]
    claims: tuple[Claim, ...]
    matching: tuple[int | None, ...]
    reading: SceneReading


@dataclass(frozen=True)
class EditResult:
    """``success`` = strict alignment with the target's full caption; ``edit_ok`` / ``preserve_ok`` = the changed /
    unchanged claims are right; ``bg_psnr`` = 8-bit PSNR against the source over ``¬region_mask`` (capped at
    60 dB; NaN when that region is empty)."""

    success: bool
    edit_ok: bool
    preserve_ok: bool
    bg_psnr: float
    alignment: AlignmentResult = field(repr=False)


# --------------------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------------------
def _as_batch(img: Any) -> tuple[np.ndarray, bool]:
    """``(B,H,W,3)`` float64 from a ``(3,H,W)``/``(B,3,H,W)`` tensor or array; flag = input was batched."""
    if isinstance(img, torch.Tensor):
        img = img.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(img, dtype=np.float64)
    batched = arr.ndim == 4
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"expected RGB images (3,H,W) or (B,3,H,W) in [0,1], got shape {np.shape(img)}")
    if arr.shape[2] < 3 or arr.shape[3] < 3:
        raise ValueError(f"images must be at least 3×3 pixels, got {arr.shape[2]}×{arr.shape[3]}")
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1)), batched


def _nearest_palette(rgb: np.ndarray, exclude: Sequence[int] = ()) -> int:
    dist = np.linalg.norm(PALETTE_RGB - rgb, axis=1)
    dist[list(exclude)] = np.inf
    return int(np.argmin(dist))


# --------------------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------------------
def _fit_background(img: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust per-channel line ``a + b·y`` fitted to the 1-px border ring; returns ``a (3,)``, ``b (3,)``."""
    h, w, _ = img.shape
    ring = np.zeros((h, w), dtype=bool)
    ring[0], ring[-1], ring[:, 0], ring[:, -1] = True, True, True, True
    pixels = img[ring]
    design = np.stack([np.ones(h), ys], axis=1)[np.nonzero(ring)[0]]  # (n,2)
    keep = np.ones(len(pixels), dtype=bool)
    coef = np.zeros((2, 3))
    for attempt in range(RING_REFITS + 1):
        coef = np.linalg.lstsq(design[keep], pixels[keep], rcond=None)[0]
        if attempt == RING_REFITS:
            break
        residual = np.linalg.norm(pixels - design @ coef, axis=1)
        new_keep = residual <= max(0.06, 3.0 * float(np.median(residual)))
        if new_keep.sum() < 4 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return coef[0], coef[1]


def _estimate_gradient(color: int, a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
    """``(g, toward)`` such that ``b ≈ g·(t − c)``; ``(0, "white")`` for a flat background."""
    base = PALETTE_RGB[color]
    best = (math.inf, 0.0, "white")
    for toward in ("white", "black"):
        span = PALETTE_RGB[COLORS.index(toward)] - base
        norm = float(span @ span)
        if norm < 1e-9:
            continue
        g = min(max(float(b @ span) / norm, 0.0), 1.0)
        best = min(best, (float(np.linalg.norm(b - g * span)), g, toward))
    _, g, toward = best
    return (round(g, 4), toward) if g >= 0.01 else (0.0, "white")


def _mixture(diff: np.ndarray, color_minus_bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: clipped ``α`` of ``diff ≈ α·v`` and the residual norm. ``diff`` (...,3), ``v`` (...,3)."""
    norm = np.maximum((color_minus_bg * color_minus_bg).sum(-1), 1e-12)
    alpha = np.clip((diff * color_minus_bg).sum(-1) / norm, 0.0, 1.0)
    residual = np.linalg.norm(diff - alpha[..., None] * color_minus_bg, axis=-1)
    return alpha, residual


def _component_colors(img: np.ndarray, diff: np.ndarray, dist: np.ndarray, bg_line: np.ndarray,
                      mask: np.ndarray, bg_color: int) -> list[int]:
    """Step 3: the palette colour(s) of one component (two when a second object touches the first)."""
    d = dist[mask]
    upper = d >= np.median(d)
    c1 = _nearest_palette(np.median(img[mask][upper], axis=0), exclude=[bg_color])
    pixels, bg_pixels = diff[mask], bg_line[mask]
    _, residual = _mixture(pixels, PALETTE_RGB[c1] - bg_pixels)
    bad = residual > SPLIT_RESIDUAL
    if bad.sum() < SPLIT_MIN_PX:
        return [c1]
    # A thin object under blur has no pure pixels, so the median can land nearer another palette colour:
    # before splitting, check whether one colour explains the whole component as a mixture with the background.
    best: tuple[int, float, int] | None = None
    for c in range(len(COLORS)):
        if c != bg_color:
            _, res = _mixture(pixels, PALETTE_RGB[c] - bg_pixels)
            best = min(best or (len(res) + 1, 0.0, c), (int((res > SPLIT_RESIDUAL).sum()), float(res.sum()), c))
    assert best is not None
    if best[0] < SPLIT_MIN_PX:
        return [best[2]]
    c2 = _nearest_palette(np.median(img[mask][bad], axis=0), exclude=[bg_color, c1])
    return [c1, c2]


def _template_scores(alpha: np.ndarray, rows: slice, cols: slice, size_hw: tuple[int, int],
                     centroid: tuple[float, float], area: float) -> tuple[str, float, float, tuple[float, float]]:
    """Step 5: best ``(shape, iou, side, bbox centre)`` for the ``α`` window ``alpha`` at ``rows, cols``."""
    h, w = size_hw
    ss = TEMPLATE_SUPERSAMPLE
    xs = (cols.start + (np.arange((cols.stop - cols.start) * ss) + 0.5) / ss) / w
    ys = (rows.start + (np.arange((rows.stop - rows.start) * ss) + 0.5) / ss) / h
    offsets = np.array(SEARCH_OFFSETS_PX)
    dx = np.repeat(offsets, len(offsets))[:, None, None] / w
    dy = np.tile(offsets, len(offsets))[:, None, None] / h
    best = ("circle", -1.0, 0.0, centroid)
    for shape in SHAPES:
        side = math.sqrt(area / SHAPE_AREA_FRACTION[shape])
        cx = centroid[0] + dx
        cy = centroid[1] - (side / 6 if shape == "triangle" else 0.0) + dy
        inside = SHAPE_INSIDE[shape](xs[None, None, :], ys[None, :, None], cx, cy, side)
        n, hy, wx = inside.shape
        sharp = inside.reshape(n, hy // ss, ss, wx // ss, ss).mean(axis=(2, 4))
        blurred = ndimage.gaussian_filter(sharp, (0, TEMPLATE_BLUR, TEMPLATE_BLUR), mode="constant")
        templates = np.concatenate([sharp, blurred])
        iou = np.minimum(templates, alpha).sum((1, 2)) / np.maximum(np.maximum(templates, alpha).sum((1, 2)), 1e-12)
        k = int(np.argmax(iou))
        if iou[k] > best[1]:
            k9 = k % n
            best = (shape, float(iou[k]), side, (float(cx[k9, 0, 0]), float(cy[k9, 0, 0])))
    return best


def _size_class(side: float) -> str:
    return "small" if side < SIZE_THRESHOLDS[0] else "medium" if side < SIZE_THRESHOLDS[1] else "large"


def _cell_of(x: float, y: float) -> str:
    col = min(max(math.floor(x * 3), 0), 2)
    row = min(max(math.floor(y * 3), 0), 2)
    return POSITIONS[row * 3 + col]


def _read_one(img: np.ndarray) -> SceneReading:
    """Read one ``(H,W,3)`` float64 image."""
    h, w, _ = img.shape
    ys = (np.arange(h) + 0.5) / h
    a, b = _fit_background(img, ys)
    bg_line = np.broadcast_to((a + b * ys[:, None])[:, None, :], (h, w, 3))  # (H,W,3)
    bg_color = _nearest_palette(a + b * ys[0])
    diff = img - bg_line
    dist = np.linalg.norm(diff, axis=-1)
    labels, n_labels = ndimage.label(dist > FOREGROUND_THRESHOLD, structure=_EIGHT_CONNECTED)
    counts = np.bincount(labels.ravel(), minlength=n_labels + 1)
    kept = [k for k in range(1, n_labels + 1) if counts[k] >= MIN_COMPONENT_PX]
    in_kept = np.isin(labels, kept)
    candidates: list[tuple[int, np.ndarray]] = []  # (colour, allowed pixels)
    for k in kept:
        mask = labels == k
        allowed = ndimage.binary_dilation(mask, _EIGHT_CONNECTED) & (mask | ~in_kept)
        candidates += [(c, allowed) for c in _component_colors(img, diff, dist, bg_line, mask, bg_color)]
    objects = []
    if candidates:
        alphas, residuals = zip(*(_mixture(diff, PALETTE_RGB[c] - bg_line) for c, _ in candidates))
        cost = np.stack([np.where(allowed, r, np.inf) for (_, allowed), r in zip(candidates, residuals)])
        owner = np.argmin(cost, axis=0)
        owned_any = np.isfinite(cost.min(axis=0))
        px_x, px_y = (np.arange(w) + 0.5) / w, ys
        for j, (color, _) in enumerate(candidates):
            alpha = np.where(owned_any & (owner == j), alphas[j], 0.0)
            total = float(alpha.sum())
            if total < MIN_OBJECT_AREA * h * w:
                continue
            centroid = (float((alpha.sum(0) * px_x).sum() / total), float((alpha.sum(1) * px_y).sum() / total))
            r_idx, c_idx = np.nonzero(alpha)
            rows = slice(max(r_idx.min() - 2, 0), min(r_idx.max() + 3, h))
            cols = slice(max(c_idx.min() - 2, 0), min(c_idx.max() + 3, w))
            area = total / (h * w)
            shape, iou, side, center = _template_scores(alpha[rows, cols], rows, cols, (h, w), centroid, area)
            objects.append(ObjReading(shape, COLORS[color], _size_class(side), _cell_of(*center), center, side,
                                      area, iou))
    objects.sort(key=lambda o: (POSITIONS.index(o.cell), o.center))
    gradient, toward = _estimate_gradient(bg_color, a, b)
    return SceneReading(COLORS[bg_color], tuple(objects), gradient, toward,
                        tuple(float(v) for v in a), tuple(float(v) for v in b))


def read_scene(img: Any) -> SceneReading | list[SceneReading]:
    """Read a ``(3,H,W)`` image in [0,1] (tensor or array) -> one reading; ``(B,3,H,W)`` -> a list of ``B``
    readings (also for ``B = 1``). Deterministic; about 2–4 ms per 32-px image."""
    batch, batched = _as_batch(img)
    readings = [_read_one(im) for im in batch]
    return readings if batched else readings[0]


# --------------------------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------------------------
def _object_claims(spec: SceneSpec) -> list[list[tuple[str, str]]]:
    """Per caption object: its claims ``(type, value)``: the shape, plus colour/size/position when stated."""
    return [[("shape", o.shape)] + [(t, v) for t, v in (("color", o.color), ("size", o.size),
                                                          ("position", o.position)) if v is not None]
            for o in spec.objects]


def _read_value(obj: ObjReading, claim_type: str) -> str:
    return obj.cell if claim_type == "position" else getattr(obj, claim_type)


def _align_reading(reading: SceneReading, spec: SceneSpec) -> AlignmentResult:
    per_object = _object_claims(spec)
    hits = np.array([[sum(_read_value(r, t) == v for t, v in claims) for r in reading.objects]
                     for claims in per_object], dtype=np.int64).reshape(len(per_object), len(reading.objects))
    matching: list[int | None] = [None] * len(per_object)
    if hits.size:
        for i, j in zip(*linear_sum_assignment(hits, maximize=True)):
            matching[int(i)] = int(j)
    claims: list[Claim] = []
    if spec.background is not None:
        claims.append(Claim("background", None, spec.background, reading.background == spec.background))
    claims.append(Claim("count", None, len(spec.objects), len(reading.objects) == len(spec.objects)))
    for i, object_claims in enumerate(per_object):
        j = matching[i]
        matched = reading.objects[j] if j is not None else None
        for t, v in object_claims:
            claims.append(Claim(t, i, v, matched is not None and _read_value(matched, t) == v))
    confirmed = sum(c.confirmed for c in claims)
    accuracies = {}
    for t in CLAIM_TYPES:
        of_type = [c.confirmed for c in claims if c.type == t]
        if of_type:
            accuracies[t] = sum(of_type) / len(of_type)
    return AlignmentResult(confirmed / len(claims), confirmed == len(claims), accuracies, tuple(claims),
                           tuple(matching), reading)


def _as_spec(caption: str | SceneSpec) -> SceneSpec:
    if isinstance(caption, SceneSpec):
        return caption
    if isinstance(caption, str):
        return parse_caption(caption)
    raise TypeError(f"caption must be a str or SceneSpec, got {type(caption).__name__}")


def alignment(img: Any, caption: str | SceneSpec | Sequence[str | SceneSpec]) -> AlignmentResult | list[AlignmentResult]:
    """Prompt alignment of ``img`` with ``caption`` (the toy CLIP score / GenEval).

    Claims: the stated background, the object count (always), and per caption object its shape plus its stated
    colour, size and position. Caption objects are matched to read objects by ``linear_sum_assignment``
    maximising confirmed claims. ``(3,H,W)`` input gives one result; ``(B,3,H,W)`` input takes ``B`` captions
    (or one for all) and gives a list.
    """
    batch, batched = _as_batch(img)
    captions = [caption] if isinstance(caption, (str, SceneSpec)) else list(caption)
    if len(captions) == 1 and len(batch) > 1:
        captions = captions * len(batch)
    if len(captions) != len(batch):
        raise ValueError(f"got {len(batch)} images but {len(captions)} captions")
    results = [_align_reading(_read_one(im), _as_spec(c)) for im, c in zip(batch, captions)]
    return results if batched else results[0]


def _edited_claims(pair: EditPair) -> set[tuple[str, int | None]]:
    """Which target-caption claims the edit changes (keys ``(type, caption object)``)."""
    i = pair.edited_object
    if pair.kind == IDENTITY_KIND:
        return set()
    if pair.kind == "background":
        return {("background", None)}
    if pair.kind == "remove":
        return {("count", None)}
    if pair.kind == "add":
        return {("count", None)} | {(t, i) for t in ("shape", "color", "size", "position")}
    return {("position" if pair.kind == "position" else pair.kind, i)}


def _psnr_8bit(a: np.ndarray, b: np.ndarray, mask: np.ndarray, cap_db: float) -> float:
    """PSNR of the 8-bit images ``round(255·x)`` (``(H,W,3)``) over ``mask`` ``(H,W)``, capped at ``cap_db``;
    NaN for an empty mask."""
    if not mask.any():
        return float("nan")
    qa, qb = (torch.from_numpy(np.round(np.clip(x, 0, 1) * 255.0)).permute(2, 0, 1)[None] for x in (a, b))
    return float(masked_psnr(qa, qb, torch.from_numpy(mask)[None, None], data_range=255.0, max_db=cap_db)[0])


def edit_success(output: Any, pair: EditPair | Sequence[EditPair]) -> EditResult | list[EditResult]:
    """Judge an edit ``output`` (``(3,H,W)`` at ``pair.size`` px) against ``pair``; ``(B,3,H,W)`` outputs take a
    list of ``B`` pairs and give a list. ``success`` needs every claim of ``pair.target_caption``; ``edit_ok``
    covers the claims the edit changes (the edited attribute; for ``add`` the new object and the count; for
    ``remove`` the count), ``preserve_ok`` all others."""
    batch, batched = _as_batch(output)
    pairs = [pair] if isinstance(pair, EditPair) else list(pair)
    if len(pairs) != len(batch):
        raise ValueError(f"got {len(batch)} outputs but {len(pairs)} edit pairs")
    results = []
    for im, p in zip(batch, pairs):
        if im.shape[:2] != (p.size, p.size):
            raise ValueError(f"output is {im.shape[0]}×{im.shape[1]} but the pair was rendered at {p.size} px")
        result = _align_reading(_read_one(im), p.target.spec(order="stored"))
        edited = _edited_claims(p)
        edit_ok = all(c.confirmed for c in result.claims if (c.type, c.object) in edited)
        preserve_ok = all(c.confirmed for c in result.claims if (c.type, c.object) not in edited)
        source = p.source_image.double().permute(1, 2, 0).numpy()
        keep = ~p.region_mask[0].numpy()
        bg_psnr = _psnr_8bit(im, source, keep, BG_PSNR_CAP_DB)
        results.append(EditResult(result.strict, edit_ok, preserve_ok, bg_psnr, result))
    return results if batched else results[0]


def rerender_psnr(img: Any) -> float | list[float]:
    """PSNR (dB, float images, capped at 100) of ``img`` against the render of its own reading
    (``reading.to_scene(strict=False).render()``); a float, or a list for ``(B,3,H,W)`` input."""
    batch, batched = _as_batch(img)
    if batch.shape[1] != batch.shape[2]:
        raise ValueError(f"rerender_psnr needs square images, got {batch.shape[1]}×{batch.shape[2]}")
    values = []
    for im in batch:
        scene = _read_one(im).to_scene(strict=False)
        redrawn = scene.render(im.shape[0]).double().permute(1, 2, 0).numpy()
        mse = float(((im - redrawn) ** 2).mean())
        values.append(RERENDER_PSNR_CAP_DB if mse == 0 else min(RERENDER_PSNR_CAP_DB, 10 * math.log10(1 / mse)))
    return values if batched else values[0]
