"""The try-on world (toyworld.md §5): a mannequin in one fixed pose, its garment, accessories and designs.

Geometry (canvas units, origin top left, y down; the whole figure shifts by ``offset/32`` horizontally,
``offset ∈ [−2, 2]``): head disc, neck, torso, arms, legs, shoes, plus a garment of one of four kinds
(``t-shirt``, ``sweater``, ``tank-top``, ``dress``), an optional hat and bag. Garment and design patterns
(``plain``, ``striped``, ``dotted``, ``checkered``) have a period of 1/8 of the canvas (4 px at 32 px), anchored to
the canvas, not to the figure.

Rendering
---------
Every part is an inside-test at the 8×8 sub-pixel centres (:mod:`flowcore.toy.render`'s primitives); painting
the parts in order (background, trousers, shoes, skin, garment, hat, bag) gives each sub-sample one label, and a
pixel is the mean of its sub-samples' colours (exact area averaging, also where parts overlap). The geometry
depends only on ``(size, offset, kind)``, so per size the 5 × 4 sub-sample maps are pooled once into an *atlas*
of per-pixel label fractions (multiples of 1/64, exact in float32) and cached per device and dtype; rendering a
batch is then a gather plus a colour sum, fully vectorised on any device (batches of 256 on a GPU in float32;
float64 is the CPU reference). Because a pixel outside a garment's support gets exactly the same terms, a
re-rendered person with another garment equals the original pixel for pixel outside both garments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from flowcore.toy.constants import (
    COLORS,
    DESIGN_KINDS,
    GARMENT_KINDS,
    GARMENT_PATTERNS,
    PALETTE,
    PARSING_LABELS,
    PURE_WHITE,
    SHOES,
    SKIN,
    TROUSERS,
)
from flowcore.toy.render import disc_inside, rect_inside, subpixel_centers
from flowcore.toy.scene import Scene, ToySceneError, article_for, draw_scene
from flowcore.toy.seeding import rng_for

__all__ = [
    "Design",
    "Garment",
    "Mannequin",
    "TryOnSample",
    "draw_design",
    "draw_mannequin",
    "garment_atlas",
    "make_tryon_sample",
    "parsing_maps",
    "pattern_fractions",
    "render_designs",
    "render_mannequins",
    "sample_design",
    "sample_mannequin",
    "tryon_target",
]

SUPERSAMPLE = 8
OFFSETS: tuple[int, ...] = (-2, -1, 0, 1, 2)  # figure shift in 1/32 canvas units
PATTERN_PERIOD = 1 / 8  # canvas units: 4 px at 32 px
ACCESSORY_PROB = 0.3
WHITE_BACKGROUND_PROB = 0.5
TRYON_SAME_KIND_PROB = 0.5
DESIGN_KIND_PROBS = (("swatch", 0.5), ("tile", 0.3), ("scene", 0.2))

# --- geometry (§5), canvas units before the horizontal offset ------------------------------------------------
HEAD_CENTER, HEAD_RADIUS = (0.50, 0.15), 0.08
NECK = (0.47, 0.22, 0.53, 0.26)  # (x0, y0, x1, y1)
TORSO = (0.36, 0.26, 0.64, 0.56)
ARM_X = ((0.28, 0.35), (0.65, 0.72))
ARM_Y = (0.27, 0.62)
LEG_X = ((0.38, 0.49), (0.51, 0.62))
LEG_Y = (0.56, 0.94)
SHOE_Y = (0.94, 0.97)
SLEEVE_END = {"t-shirt": 0.38, "sweater": 0.58}
TANK_TOP = (0.38, 0.26, 0.62, 0.56)
SKIRT_Y = (0.56, 0.82)
SKIRT_HALF_WIDTH = (0.14, 0.20)  # at the skirt's top and bottom, around x = 0.5
HAT_CROWN = (0.42, 0.03, 0.58, 0.09)
HAT_BRIM = (0.38, 0.09, 0.62, 0.11)
BAG = (0.74, 0.52, 0.88, 0.66)

# Atlas channels: visible-label fractions of the figure without accessories, garment ∩ c1 per pattern, and the
# accessory layers (hat: all of it and the part over skin; bag: lies on background only).
CH_BG, CH_SKIN, CH_TROUSERS, CH_SHOES, CH_GARMENT = 0, 1, 2, 3, 4  # CH_GARMENT + pattern index = garment ∩ c1
CH_HAT, CH_HAT_ON_SKIN, CH_BAG = 8, 9, 10
N_CHANNELS = 11
# Colour slots of a render: bg, skin, trousers, shoes, garment c1, garment c2, hat, bag.
N_SLOTS = 8

_RGB01: dict[str, tuple[float, ...]] = {n: tuple(v / 255.0 for v in rgb) for n, rgb in PALETTE.items()}
_FIXED01 = {name: tuple(v / 255.0 for v in rgb) for name, rgb in
            (("skin", SKIN), ("trousers", TROUSERS), ("shoes", SHOES))}


def _check(kind: str, value: object, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ToySceneError(f"unknown {kind} {value!r}; use one of {list(allowed)}")


# --------------------------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Garment:
    """A garment: ``kind`` (``t-shirt``, ``sweater``, ``tank-top``, ``dress``), ``pattern`` (``plain``,
    ``striped``, ``dotted``, ``checkered``) and ``colors``: ``(c,)`` for plain, ``(c1, c2)`` (distinct) otherwise.

    Pattern layout (period 4 px at 32 px, anchored to the canvas): stripes are 2-px horizontal bands starting
    with c1 at the top of the canvas; dots are 2-px discs of c1 on c2 centred on the 4-px grid's corners
    ``(4m+2, 4n+2)``; checks are 2-px squares, c1 in the top-left one.
    """

    kind: str
    pattern: str = "plain"
    colors: tuple[str, ...] = ("red",)

    def __post_init__(self) -> None:
        colors = (self.colors,) if isinstance(self.colors, str) else tuple(self.colors)
        object.__setattr__(self, "colors", colors)
        _check("garment kind", self.kind, GARMENT_KINDS)
        _check("garment pattern", self.pattern, GARMENT_PATTERNS)
        for c in colors:
            _check("garment colour", c, COLORS)
        want = 1 if self.pattern == "plain" else 2
        if len(colors) != want or len(set(colors)) != want:
            raise ToySceneError(f"a {self.pattern} garment needs {want} distinct palette colour(s), got {colors}")

    @property
    def c1(self) -> str:
        return self.colors[0]

    @property
    def c2(self) -> str:
        """The second colour; equals c1 for a plain garment."""
        return self.colors[-1]

    def phrase(self) -> str:
        """``"red t-shirt"`` or ``"red and blue striped t-shirt"`` (no article)."""
        if self.pattern == "plain":
            return f"{self.c1} {self.kind}"
        return f"{self.c1} and {self.c2} {self.pattern} {self.kind}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern, "colors": list(self.colors)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Garment:
        return cls(data["kind"], data.get("pattern", "plain"), tuple(data["colors"]))


@dataclass(frozen=True)
class Mannequin:
    """A dressed mannequin: ``garment``, optional ``hat`` / ``bag`` colour (``None`` = absent), the
    ``background`` palette colour and the horizontal ``offset`` k ∈ [−2, 2] (shift k/32 of the canvas).

    Tensors returned by the methods are on the CPU: images ``(3,H,W)`` float32 in [0,1], masks ``(1,H,W)``.
    """

    garment: Garment
    hat: str | None = None
    bag: str | None = None
    background: str = "white"
    offset: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.garment, Garment):
            raise ToySceneError(f"Mannequin.garment must be a Garment, got {type(self.garment).__name__}")
        for what, c in (("hat colour", self.hat), ("bag colour", self.bag)):
            if c is not None:
                _check(what, c, COLORS)
        _check("background colour", self.background, COLORS)
        if isinstance(self.offset, bool) or int(self.offset) != self.offset or self.offset not in OFFSETS:
            raise ToySceneError(f"offset must be an int in [-2, 2] (shift of k/32), got {self.offset!r}")
        object.__setattr__(self, "offset", int(self.offset))

    def validate(self) -> None:
        """Raise :class:`ToySceneError` if the background colour is used by the garment or an accessory (§5)."""
        used = {*self.garment.colors, self.hat, self.bag}
        if self.background in used:
            raise ToySceneError(f"background {self.background!r} is also used by the garment or an accessory; "
                                "the background must be a palette colour nothing else uses")

    def caption(self) -> str:
        """``"a mannequin wearing a {c1} [and {c2} {pattern}] {kind} [with a {c} hat] [and a {c} bag] on a {bg}
        background"`` (at most 21 words; "an" before vowel-initial words; "with a {c} bag" when there is no hat)."""
        words = [f"a mannequin wearing {article_for(self.garment.c1)} {self.garment.phrase()}"]
        joiner = "with"
        for colour, item in ((self.hat, "hat"), (self.bag, "bag")):
            if colour is not None:
                words.append(f"{joiner} {article_for(colour)} {colour} {item}")
                joiner = "and"
        words.append(f"on {article_for(self.background)} {self.background} background")
        return " ".join(words)

    def render(self, size: int = 32, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The image ``(3, size, size)`` float32 in [0,1] (``dtype`` = compositing precision)."""
        return render_mannequins([self], size, dtype=dtype)[0]

    def garment_coverage(self, size: int = 32) -> torch.Tensor:
        """Visible garment coverage ``(1, size, size)`` float64 in {0, 1/64, …, 1}."""
        atlas = garment_atlas(size)
        return atlas[OFFSETS.index(self.offset), GARMENT_KINDS.index(self.garment.kind), CH_GARMENT][None].clone()

    def garment_mask(self, size: int = 32) -> torch.Tensor:
        """``M_p``: ``(1, size, size)`` bool, the garment's support (pixels with any garment coverage)."""
        return self.garment_coverage(size) > 0

    def garment_only_on_white(self, size: int = 32) -> torch.Tensor:
        """FEAT's ``g = M_p ⊙ x_p + (1 − M_p) ⊙ w``: ``(3, size, size)`` float32, the person inside ``M_p`` and
        pure white (1.0) outside."""
        mask = self.garment_mask(size)
        white = torch.tensor(PURE_WHITE, dtype=torch.float32)[:, None, None] / 255
        return torch.where(mask, self.render(size), white)

    def parsing_map(self, size: int = 32) -> torch.Tensor:
        """``(1, size, size)`` int64 labels (0 background, 1 skin, 2 garment, 3 trousers, 4 shoes, 5 hat, 6 bag):
        each pixel gets the label of largest visible coverage (ties: the lower label)."""
        return parsing_maps([self], size)[0][None]

    def sketch(self, kind: str | None = None, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """The sketch of garment ``kind`` (default: this garment's) on this mannequin.

        Returns ``(sketch, M_s)``: ``sketch`` ``(1,H,W)`` float32, 1 on the silhouette's 1-px inner outline
        (pixels of ``M_s`` with a 4-neighbour outside it; closed for 4-connected flood fill), 0 elsewhere — the
        ``edge_map`` convention of white lines on black; ``M_s`` ``(1,H,W)`` bool, the filled silhouette
        (support of that kind's garment at this offset).
        """
        kind = self.garment.kind if kind is None else kind
        _check("garment kind", kind, GARMENT_KINDS)
        filled = garment_atlas(size)[OFFSETS.index(self.offset), GARMENT_KINDS.index(kind), CH_GARMENT] > 0
        padded = torch.nn.functional.pad(filled[None, None].float(), (1, 1, 1, 1))[0, 0] > 0
        interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]) & filled
        outline = (filled & ~interior).float()
        return outline[None], filled[None]

    def replace(self, **changes: Any) -> Mannequin:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"garment": self.garment.to_dict(), "hat": self.hat, "bag": self.bag,
                "background": self.background, "offset": self.offset}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Mannequin:
        return cls(Garment.from_dict(data["garment"]), data.get("hat"), data.get("bag"),
                   data.get("background", "white"), int(data.get("offset", 0)))


@dataclass(frozen=True)
class Design:
    """A design source (§5): ``swatch`` (one colour), ``tile`` (a full-canvas two-colour pattern) or ``scene``
    (a one-object toy scene standing in for "any image").

    ``colors``/``pattern`` describe swatches and tiles; for a scene they are derived: by our convention its style
    is ``(plain, object colour)``, and the object's shape with the scene's background colour around it (the
    *motif colour*) is content that must not leak into a try-on.
    """

    kind: str
    colors: tuple[str, ...] = ()
    pattern: str = "plain"
    scene: Scene | None = None

    def __post_init__(self) -> None:
        _check("design kind", self.kind, DESIGN_KINDS)
        colors = (self.colors,) if isinstance(self.colors, str) else tuple(self.colors)
        if self.kind == "scene":
            if not isinstance(self.scene, Scene) or len(self.scene.objects) != 1:
                raise ToySceneError("a scene design needs scene=Scene with exactly one object")
            derived = (self.scene.objects[0].color,)
            if colors not in ((), derived) or self.pattern != "plain":
                raise ToySceneError(f"a scene design's style is (plain, object colour {derived[0]!r}); "
                                    "leave colors/pattern unset")
            colors = derived
        elif self.scene is not None:
            raise ToySceneError(f"scene= is only used by scene designs, not {self.kind!r}")
        elif self.kind == "swatch":
            if self.pattern != "plain" or len(colors) != 1:
                raise ToySceneError(f"a swatch is one plain colour, got pattern {self.pattern!r}, colors {colors}")
        else:
            if self.pattern == "plain" or self.pattern not in GARMENT_PATTERNS:
                raise ToySceneError(f"a tile's pattern is one of {GARMENT_PATTERNS[1:]}, got {self.pattern!r}")
            if len(colors) != 2 or colors[0] == colors[1]:
                raise ToySceneError(f"a tile needs two distinct colours, got {colors}")
        for c in colors:
            _check("design colour", c, COLORS)
        object.__setattr__(self, "colors", colors)

    @property
    def main_color(self) -> str:
        return self.colors[0]

    @property
    def motif_color(self) -> str | None:
        """For scene designs, the scene's background colour (content that must not leak); else None."""
        return self.scene.background.color if self.scene is not None else None

    def style(self) -> tuple[str, str, str | None]:
        """``(pattern, c1, c2)``; ``c2`` is None for plain styles (swatches and scenes)."""
        return self.pattern, self.colors[0], (self.colors[1] if len(self.colors) > 1 else None)

    def garment(self, kind: str) -> Garment:
        """The garment of ``kind`` in this design's style."""
        return Garment(kind, self.pattern, self.colors)

    def caption(self) -> str:
        if self.kind == "swatch":
            return f"a plain {self.colors[0]} swatch"
        if self.kind == "tile":
            c1, c2 = self.colors
            return f"{article_for(c1)} {c1} and {c2} {self.pattern} pattern"
        assert self.scene is not None
        return self.scene.caption("full")

    def render(self, size: int = 32, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The design image ``(3, size, size)`` float32 in [0,1]."""
        return render_designs([self], size, dtype=dtype)[0]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "colors": list(self.colors), "pattern": self.pattern,
                "scene": self.scene.to_dict() if self.scene is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Design:
        if data["kind"] == "scene":
            return cls("scene", scene=Scene.from_dict(data["scene"]))
        return cls(data["kind"], tuple(data["colors"]), data.get("pattern", "plain"))


@dataclass(frozen=True)
class TryOnSample:
    """One ground-truth try-on (§5). Images ``(3,H,W)`` float32, masks ``(1,H,W)`` bool, on the CPU.

    ``regions``: ``old`` (person's garment support = ``garment_mask``), ``new`` (target's = ``sketch_mask``),
    ``union`` and ``keep`` (= not union; the target equals the person there pixel for pixel).
    """

    person: Mannequin
    design: Design
    new_kind: str | None
    target: Mannequin
    regions: dict[str, torch.Tensor]
    person_image: torch.Tensor
    design_image: torch.Tensor
    target_image: torch.Tensor
    garment_mask: torch.Tensor
    garment_on_white: torch.Tensor
    sketch: torch.Tensor
    sketch_mask: torch.Tensor
    caption: str
    target_caption: str


# --------------------------------------------------------------------------------------------------------------
# sub-sample geometry and the atlas
# --------------------------------------------------------------------------------------------------------------
def _rect(x: np.ndarray, y: np.ndarray, box: tuple[float, float, float, float], dx: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    return rect_inside(x, y, x0 + dx, y0, x1 + dx, y1)


def _subsamples(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-sample centres as a row ``x (1, 8·size)`` and a column ``y (8·size, 1)`` (canvas units, float64)."""
    s = subpixel_centers(size, SUPERSAMPLE).numpy()
    return s[None, :], s[:, None]


def _pool(inside: np.ndarray) -> np.ndarray:
    """(8·H, 8·W) bool sub-samples -> (H, W) coverage in {0, 1/64, …, 1}."""
    h, w = inside.shape[0] // SUPERSAMPLE, inside.shape[1] // SUPERSAMPLE
    counts = inside.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).sum(axis=(1, 3), dtype=np.int64)
    return counts / SUPERSAMPLE**2


def _pattern_c1(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Sub-samples (8H, 8W) that take the pattern's first colour (canvas-anchored, period 1/8)."""
    half = PATTERN_PERIOD / 2
    px, py = x % PATTERN_PERIOD, y % PATTERN_PERIOD
    shape = (y.shape[0], x.shape[1])
    band_x, band_y = px < half, py < half
    return {
        "plain": np.ones(shape, dtype=bool),
        "striped": np.broadcast_to(band_y, shape),
        "dotted": disc_inside(px, py, half, half, PATTERN_PERIOD / 4),
        "checkered": band_x == band_y,
    }


@lru_cache(maxsize=8)
def pattern_fractions(size: int = 32) -> torch.Tensor:
    """``(4, size, size)`` float64: per pattern (``GARMENT_PATTERNS`` order), the pixel fraction of colour c1."""
    _check_size(size)
    c1 = _pattern_c1(*_subsamples(size))
    return torch.from_numpy(np.stack([_pool(c1[p]) for p in GARMENT_PATTERNS]))


def _garment_inside(kind: str, x: np.ndarray, y: np.ndarray, dx: float) -> np.ndarray:
    if kind == "tank-top":
        return _rect(x, y, TANK_TOP, dx)
    inside = _rect(x, y, TORSO, dx)
    if kind in SLEEVE_END:
        for x0, x1 in ARM_X:
            inside = inside | _rect(x, y, (x0, ARM_Y[0], x1, SLEEVE_END[kind]), dx)
    else:  # dress: a trapezoid skirt below the torso
        (y0, y1), (w0, w1) = SKIRT_Y, SKIRT_HALF_WIDTH
        half_width = w0 + (y - y0) * (w1 - w0) / (y1 - y0)
        inside = inside | ((y >= y0) & (y < y1) & (np.abs(x - 0.5 - dx) <= half_width))
    return inside


def _figure_parts(x: np.ndarray, y: np.ndarray, dx: float) -> dict[str, np.ndarray]:
    """Sub-sample masks (8H, 8W) of the garment-independent parts at horizontal shift ``dx``."""
    legs = _rect(x, y, (LEG_X[0][0], LEG_Y[0], LEG_X[0][1], LEG_Y[1]), dx)
    legs = legs | _rect(x, y, (LEG_X[1][0], LEG_Y[0], LEG_X[1][1], LEG_Y[1]), dx)
    shoes = _rect(x, y, (LEG_X[0][0], SHOE_Y[0], LEG_X[0][1], SHOE_Y[1]), dx)
    shoes = shoes | _rect(x, y, (LEG_X[1][0], SHOE_Y[0], LEG_X[1][1], SHOE_Y[1]), dx)
    skin = disc_inside(x, y, HEAD_CENTER[0] + dx, HEAD_CENTER[1], HEAD_RADIUS)
    skin = skin | _rect(x, y, NECK, dx) | _rect(x, y, TORSO, dx)
    for x0, x1 in ARM_X:
        skin = skin | _rect(x, y, (x0, ARM_Y[0], x1, ARM_Y[1]), dx)
    hat = _rect(x, y, HAT_CROWN, dx) | _rect(x, y, HAT_BRIM, dx)
    return {"legs": legs, "shoes": shoes, "skin": skin, "hat": hat, "bag": _rect(x, y, BAG, dx)}


@lru_cache(maxsize=8)
def garment_atlas(size: int = 32) -> torch.Tensor:
    """Per-pixel label fractions for every ``(offset, kind)``: ``(5, 4, 11, size, size)`` float64 on the CPU.

    Channels: 0 background, 1 skin, 2 trousers, 3 shoes, 4 garment (visible fractions without accessories),
    5/6/7 garment ∩ c1 for striped/dotted/checkered, 8 hat, 9 hat over skin, 10 bag. Offsets in ``OFFSETS``
    order, kinds in ``GARMENT_KINDS`` order. Values are multiples of 1/64. Built once per size on the CPU
    (numpy, with :mod:`flowcore.toy.render`'s inside-tests at the 8×8 sub-pixel centres).
    """
    _check_size(size)
    x, y = _subsamples(size)
    c1 = _pattern_c1(x, y)
    atlas = np.zeros((len(OFFSETS), len(GARMENT_KINDS), N_CHANNELS, size, size))
    for i, k in enumerate(OFFSETS):
        parts = _figure_parts(x, y, k / 32)
        for j, kind in enumerate(GARMENT_KINDS):
            garment = _garment_inside(kind, x, y, k / 32)
            label = np.zeros(garment.shape, dtype=np.int8)  # painter's order: legs, shoes, skin, garment
            for value, part in ((2, parts["legs"]), (3, parts["shoes"]), (1, parts["skin"]), (4, garment)):
                label[part] = value
            if (parts["hat"] & (label > 1)).any() or (parts["bag"] & (label != 0)).any():
                raise AssertionError("the hat may only cover skin/background and the bag only background")
            channels = [label == 0, label == 1, label == 2, label == 3, garment]
            channels += [garment & c1[p] for p in GARMENT_PATTERNS[1:]]
            channels += [parts["hat"], parts["hat"] & (label == 1), parts["bag"]]
            atlas[i, j] = np.stack([_pool(c) for c in channels])
    return torch.from_numpy(atlas)


_DEVICE_ATLAS: dict[tuple[int, str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _atlas_on(size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The atlas and the pattern fractions on ``device`` in ``dtype`` (cached)."""
    key = (size, str(device), dtype)
    if key not in _DEVICE_ATLAS:
        _DEVICE_ATLAS[key] = (garment_atlas(size).to(device, dtype), pattern_fractions(size).to(device, dtype))
    return _DEVICE_ATLAS[key]


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int ≥ 8 (the toy models are trained at 32), got {size!r}")


def _rgb(name: str | None) -> tuple[float, ...]:
    return (0.0, 0.0, 0.0) if name is None else _RGB01.get(name) or _FIXED01[name]


def _slot_fractions(mannequins: Sequence[Mannequin], size: int, device: torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
    """``(B, 8, H, W)`` fractions of the colour slots bg, skin, trousers, shoes, c1, c2, hat, bag."""
    atlas, _ = _atlas_on(size, device, dtype)
    meta = torch.tensor(
        [(OFFSETS.index(m.offset), GARMENT_KINDS.index(m.garment.kind), GARMENT_PATTERNS.index(m.garment.pattern),
          m.hat is not None, m.bag is not None) for m in mannequins], device=device)
    flat = atlas.reshape(-1, *atlas.shape[2:])  # (offsets·kinds, 11, H, W)
    f = flat.index_select(0, meta[:, 0] * len(GARMENT_KINDS) + meta[:, 1])  # (B, 11, H, W)
    has_hat = meta[:, 3, None, None].to(dtype)
    has_bag = meta[:, 4, None, None].to(dtype)
    hat, hat_on_skin, bag = f[:, CH_HAT] * has_hat, f[:, CH_HAT_ON_SKIN] * has_hat, f[:, CH_BAG] * has_bag
    garment = f[:, CH_GARMENT]
    c1 = f.gather(1, (CH_GARMENT + meta[:, 2]).view(-1, 1, 1, 1).expand(-1, 1, size, size))[:, 0]
    bg = f[:, CH_BG] - (hat - hat_on_skin) - bag
    skin = f[:, CH_SKIN] - hat_on_skin
    return torch.stack([bg, skin, f[:, CH_TROUSERS], f[:, CH_SHOES], c1, garment - c1, hat, bag], dim=1)


def _composite(fractions: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Σ_slot fraction·colour in a fixed order: (B,S,H,W), (B,S,3) -> (B,3,H,W)."""
    img = fractions[:, 0, None] * colours[:, 0, :, None, None]
    for slot in range(1, fractions.shape[1]):
        img = img + fractions[:, slot, None] * colours[:, slot, :, None, None]
    return img


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def render_mannequins(mannequins: Mannequin | Sequence[Mannequin], size: int = 32, *,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Render mannequins to ``(B, 3, size, size)`` float32 in [0,1] on ``device`` (default CPU).

    ``dtype`` is the compositing precision (float64 = the reference; float32 on GPUs agrees to ~1e-7).
    Vectorised over the batch: one gather from the cached atlas and an 8-term colour sum.
    """
    _check_size(size)
    mannequins = [mannequins] if isinstance(mannequins, Mannequin) else list(mannequins)
    dev = _device(device)
    if not mannequins:
        return torch.zeros(0, 3, size, size, dtype=torch.float32, device=dev)
    fractions = _slot_fractions(mannequins, size, dev, dtype)
    colours = torch.tensor(
        [[_rgb(m.background), _rgb("skin"), _rgb("trousers"), _rgb("shoes"), _rgb(m.garment.c1),
          _rgb(m.garment.c2), _rgb(m.hat), _rgb(m.bag)] for m in mannequins], dtype=dtype, device=dev)
    return _composite(fractions, colours).clamp_(0.0, 1.0).to(torch.float32)


def parsing_maps(mannequins: Sequence[Mannequin], size: int = 32, *,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``(B, size, size)`` int64 parsing labels (see :meth:`Mannequin.parsing_map`)."""
    _check_size(size)
    dev = _device(device)
    f = _slot_fractions(list(mannequins), size, dev, torch.float64)
    labels = torch.stack([f[:, 0], f[:, 1], f[:, 4] + f[:, 5], f[:, 2], f[:, 3], f[:, 6], f[:, 7]], dim=1)
    assert tuple(PARSING_LABELS.values()) == tuple(range(7))
    return labels.argmax(dim=1)


def render_designs(designs: Design | Sequence[Design], size: int = 32, *, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Render designs to ``(B, 3, size, size)`` float32 in [0,1]: swatches and tiles from the canvas-anchored
    pattern (period 1/8), scenes through :func:`flowcore.toy.render.render`."""
    from flowcore.toy.render import render

    _check_size(size)
    designs = [designs] if isinstance(designs, Design) else list(designs)
    dev = _device(device)
    out = torch.empty(len(designs), 3, size, size, dtype=torch.float32, device=dev)
    flat = [i for i, d in enumerate(designs) if d.kind != "scene"]
    if flat:
        _, patterns = _atlas_on(size, dev, dtype)
        pid = torch.tensor([GARMENT_PATTERNS.index(designs[i].pattern) for i in flat], device=dev)
        c1 = patterns[pid]  # (N, H, W)
        fractions = torch.stack([c1, 1 - c1], dim=1)
        colours = torch.tensor([[_rgb(designs[i].colors[0]), _rgb(designs[i].colors[-1])] for i in flat],
                               dtype=dtype, device=dev)
        out[flat] = _composite(fractions, colours).clamp_(0.0, 1.0).to(torch.float32)
    scenes = [i for i, d in enumerate(designs) if d.kind == "scene"]
    if scenes:
        out[scenes] = render([designs[i].scene for i in scenes], size, device=dev, dtype=dtype)
    return out


# --------------------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------------------
def _pick(values: Sequence[Any], u: float) -> Any:
    return values[min(int(u * len(values)), len(values) - 1)]


def draw_mannequin(rng: np.random.Generator) -> Mannequin:
    """Draw one mannequin from ``rng`` (one call of 11 uniforms): the background first (white with p = 0.5,
    else another palette colour), then garment kind and pattern (uniform) in distinct colours other than the
    background, a hat and a bag each with p = 0.3 in a non-background colour, and the offset (uniform in [−2, 2])."""
    u = rng.random(11).tolist()
    background = "white" if u[0] < WHITE_BACKGROUND_PROB else _pick([c for c in COLORS if c != "white"], u[1])
    free = [c for c in COLORS if c != background]
    kind = _pick(GARMENT_KINDS, u[2])
    pattern = _pick(GARMENT_PATTERNS, u[3])
    c1 = _pick(free, u[4])
    colors: tuple[str, ...] = (c1,)
    if pattern != "plain":
        colors = (c1, _pick([c for c in free if c != c1], u[5]))
    hat = _pick(free, u[7]) if u[6] < ACCESSORY_PROB else None
    bag = _pick(free, u[9]) if u[8] < ACCESSORY_PROB else None
    return Mannequin(Garment(kind, pattern, colors), hat, bag, background, _pick(OFFSETS, u[10]))


def sample_mannequin(seed: int, index: int = 0, split: str = "train") -> Mannequin:
    """Mannequin ``index`` of ``split`` (stream ``"mannequin"``): a pure function of its arguments."""
    return draw_mannequin(rng_for(seed, index, split, "mannequin"))


def draw_design(rng: np.random.Generator, exclude: Sequence[str] = (), main_exclude: Sequence[str] = ()) -> Design:
    """Draw one design: swatch 50%, tile 30%, scene 20%.

    ``exclude``: colours no garment colour of the design may take (e.g. the person's background and accessory
    colours); ``main_exclude``: colours the main colour may not take either (e.g. the old garment colours).
    """
    u = rng.random(5).tolist()
    allowed = [c for c in COLORS if c not in set(exclude)]
    main_allowed = [c for c in allowed if c not in set(main_exclude)]
    if not main_allowed:
        raise ToySceneError(f"no palette colour left for the design after excluding {exclude} and {main_exclude}")
    kind = "scene"
    cumulative = 0.0
    for name, p in DESIGN_KIND_PROBS:
        cumulative += p
        if u[0] < cumulative:
            kind = name
            break
    main = _pick(main_allowed, u[1])
    if kind == "swatch":
        return Design("swatch", (main,))
    if kind == "tile":
        second = [c for c in allowed if c != main]
        if not second:  # not enough colours left for two: fall back to a swatch
            return Design("swatch", (main,))
        return Design("tile", (main, _pick(second, u[2])), _pick(GARMENT_PATTERNS[1:], u[3]))
    scene = draw_scene(rng, n_objects=1)
    obj = scene.objects[0].replace(color=main)
    background = scene.background
    if background.color == main:
        background = dataclasses.replace(background, color=_pick([c for c in COLORS if c != main], u[4]))
    return Design("scene", scene=Scene((obj,), background))


def sample_design(seed: int, index: int = 0, split: str = "train") -> Design:
    """Design ``index`` of ``split`` (stream ``"design"``): a pure function of its arguments."""
    return draw_design(rng_for(seed, index, split, "design"))


# --------------------------------------------------------------------------------------------------------------
# ground-truth try-on
# --------------------------------------------------------------------------------------------------------------
def tryon_target(person: Mannequin, design: Design, new_kind: str | None = None, *,
                 size: int = 32) -> tuple[Mannequin, dict[str, torch.Tensor]]:
    """The person re-dressed in ``design``'s style (same accessories, background and offset; the kind changes
    only if ``new_kind`` is given) and the regions ``old``, ``new``, ``union``, ``keep`` as ``(1,size,size)``
    bool masks. Outside ``union`` the target's render equals the person's pixel for pixel."""
    if not isinstance(person, Mannequin) or not isinstance(design, Design):
        raise TypeError("tryon_target(person: Mannequin, design: Design, new_kind=None)")
    kind = person.garment.kind if new_kind is None else new_kind
    _check("garment kind", kind, GARMENT_KINDS)
    target = dataclasses.replace(person, garment=design.garment(kind))
    old, new = person.garment_mask(size), target.garment_mask(size)
    union = old | new
    return target, {"old": old, "new": new, "union": union, "keep": ~union}


def make_tryon_sample(seed: int, index: int = 0, split: str = "train", *, size: int = 32) -> TryOnSample:
    """Try-on sample ``index`` of ``split`` (stream ``"tryon"``).

    The person is drawn as in :func:`sample_mannequin`; the design's colours avoid the person's background and
    accessory colours (so the target is a valid mannequin) and its main colour differs from the old garment's
    colours; ``new_kind`` is None (same silhouette) with p = 0.5, else another kind.
    """
    rng = rng_for(seed, index, split, "tryon")
    person = draw_mannequin(rng)
    design = draw_design(rng, exclude=[c for c in (person.background, person.hat, person.bag) if c],
                         main_exclude=person.garment.colors)
    u = rng.random(2).tolist()
    new_kind = None
    if u[0] >= TRYON_SAME_KIND_PROB:
        new_kind = _pick([k for k in GARMENT_KINDS if k != person.garment.kind], u[1])
    target, regions = tryon_target(person, design, new_kind, size=size)
    images = render_mannequins([person, target], size)
    sketch, sketch_mask = person.sketch(target.garment.kind, size)
    return TryOnSample(
        person=person, design=design, new_kind=new_kind, target=target, regions=regions,
        person_image=images[0], design_image=design.render(size), target_image=images[1],
        garment_mask=regions["old"], garment_on_white=person.garment_only_on_white(size),
        sketch=sketch, sketch_mask=sketch_mask, caption=person.caption(), target_caption=target.caption(),
    )
