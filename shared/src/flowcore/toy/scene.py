"""The toy scene world (toyworld.md §2): data classes, seeded sampling, captions and their parser.

A scene is one or two objects (shape, colour, size class, grid cell, jitter) on a palette background with an
optional vertical gradient. Everything is a frozen dataclass; edits return new scenes; rendering is pure
(:mod:`flowcore.toy.render`). Captions follow an exact, invertible grammar (§2.4)::

    caption   := object_np [" and " object_np] [" on " ARTICLE " " COLOR " background"]
    object_np := ARTICLE [SIZE " "] [COLOR " "] SHAPE [" in the " POSITION]
    ARTICLE   := "an" before a vowel-initial word, else "a"

The article rule is applied to the background phrase too ("on an orange background").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from flowcore.toy.constants import COLORS, GRADIENT_TARGETS, PALETTE, POSITIONS, SHAPES, SIZE_NAMES, SIZES
from flowcore.toy.seeding import rng_for
from flowcore.toy.tokenizer import split_words

__all__ = [
    "Background",
    "Obj",
    "ObjSpec",
    "Scene",
    "SceneConfig",
    "SceneSampler",
    "SceneSpec",
    "ToyGrammarError",
    "ToySceneError",
    "article_for",
    "parse_caption",
    "sample_scene",
    "training_caption",
]

JITTER_MAX = 4  # jitter k/256 per axis, k in [-4, 4] (±0.5 px at 32 px)
JITTER_UNIT = 1.0 / 256.0
MAX_OBJECTS = 2  # the grammar names at most two objects
ONE_OBJECT_PROB = 0.4
GRADIENT_PROB = 0.3
GRADIENT_RANGE = (0.05, 0.3)
PARTIAL_DROP_PROB = 0.3
CAPTION_MIX = (("full", 0.7), ("partial", 0.2), ("empty", 0.1))  # toyworld §8.5
_CELL_INDEX = {name: i for i, name in enumerate(POSITIONS)}
_VOWELS = frozenset("aeiou")


class ToySceneError(ValueError):
    """An impossible scene (shared cell or colour, unknown attribute, ...) or an edit whose precondition fails."""


class ToyGrammarError(ValueError):
    """A caption or instruction that does not follow the toy grammar."""


def article_for(word: str) -> str:
    """``"an"`` before a vowel-initial word, else ``"a"``."""
    return "an" if word[:1] in _VOWELS else "a"


def _check_choice(kind: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ToySceneError(f"unknown {kind} {value!r}; use one of {list(allowed)}")


# --------------------------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Obj:
    """One object: ``shape``, ``color``, ``size`` class, grid ``cell`` name (an int index is accepted and
    converted) and ``jitter = (kx, ky)``, the offset of its centre from the cell centre in units of 1/256."""

    shape: str
    color: str
    size: str
    cell: str
    jitter: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if isinstance(self.cell, (int, np.integer)) and not isinstance(self.cell, bool):
            if not 0 <= int(self.cell) < len(POSITIONS):
                raise ToySceneError(f"cell index {self.cell} out of range 0..{len(POSITIONS) - 1}")
            object.__setattr__(self, "cell", POSITIONS[int(self.cell)])
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("color", self.color, COLORS)
        _check_choice("size", self.size, SIZE_NAMES)
        _check_choice("cell", self.cell, POSITIONS)
        jitter = tuple(self.jitter)
        if len(jitter) != 2 or not all(isinstance(k, (int, np.integer)) and abs(int(k)) <= JITTER_MAX for k in jitter):
            raise ToySceneError(f"jitter must be two ints in [-{JITTER_MAX}, {JITTER_MAX}], got {self.jitter!r}")
        object.__setattr__(self, "jitter", (int(jitter[0]), int(jitter[1])))

    @property
    def cell_index(self) -> int:
        """Row-major index of the cell (``row * 3 + col``)."""
        return _CELL_INDEX[self.cell]

    @property
    def side(self) -> float:
        """Bounding-box side ``s`` in canvas units."""
        return SIZES[self.size]

    @property
    def center(self) -> tuple[float, float]:
        """Bounding-box centre ``(x, y)`` in canvas units (origin top left, y down)."""
        row, col = divmod(self.cell_index, 3)
        return ((col + 0.5) / 3 + self.jitter[0] * JITTER_UNIT, (row + 0.5) / 3 + self.jitter[1] * JITTER_UNIT)

    def replace(self, **changes: Any) -> Obj:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "cell": self.cell,
                "jitter": list(self.jitter)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Obj:
        return cls(data["shape"], data["color"], data["size"], data["cell"], tuple(data.get("jitter", (0, 0))))


@dataclass(frozen=True)
class Background:
    """Palette ``color`` c plus an optional vertical gradient ``bg(y) = (1−g·y)·c + g·y·t`` with
    ``g = gradient`` and ``t`` the palette colour named by ``toward`` (``"white"`` or ``"black"``)."""

    color: str
    gradient: float = 0.0
    toward: str = "white"

    def __post_init__(self) -> None:
        _check_choice("background color", self.color, COLORS)
        _check_choice("gradient target", self.toward, GRADIENT_TARGETS)
        if not 0.0 <= float(self.gradient) <= 1.0:
            raise ToySceneError(f"gradient must lie in [0, 1] (sampled from [0.05, 0.3]), got {self.gradient!r}")
        object.__setattr__(self, "gradient", float(self.gradient))

    def to_dict(self) -> dict[str, Any]:
        return {"color": self.color, "gradient": self.gradient, "toward": self.toward}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Background:
        return cls(data["color"], float(data.get("gradient", 0.0)), data.get("toward", "white"))


@dataclass(frozen=True)
class ObjSpec:
    """The attributes a caption states about one object; ``None`` = not stated."""

    shape: str
    color: str | None = None
    size: str | None = None
    position: str | None = None

    def phrase(self) -> str:
        """The object noun phrase, e.g. ``"a large red circle in the top left"``."""
        words = [w for w in (self.size, self.color, self.shape) if w is not None]
        text = f"{article_for(words[0])} {' '.join(words)}"
        return f"{text} in the {self.position}" if self.position is not None else text

    def matches(self, obj: Obj) -> bool:
        """True when every stated attribute agrees with ``obj``."""
        return (self.shape == obj.shape and self.color in (None, obj.color) and self.size in (None, obj.size)
                and self.position in (None, obj.cell))


@dataclass(frozen=True)
class SceneSpec:
    """What a caption states: the objects in caption order and the background colour (``None`` = unstated)."""

    objects: tuple[ObjSpec, ...]
    background: str | None = None

    def caption(self) -> str:
        """The caption that states exactly these attributes (inverse of :func:`parse_caption`)."""
        text = " and ".join(o.phrase() for o in self.objects)
        if self.background is not None:
            text += f" on {article_for(self.background)} {self.background} background"
        return text

    @classmethod
    def from_scene(cls, scene: Scene, order: Literal["cell", "stored"] = "cell") -> SceneSpec:
        objs = scene.ordered_objects(order)
        return cls(tuple(ObjSpec(o.shape, o.color, o.size, o.cell) for o in objs), scene.background.color)

    def matches(self, scene: Scene) -> bool:
        """True when the scene satisfies every stated attribute, objects matched in order (cell order)."""
        objs = scene.ordered_objects("cell")
        return (len(objs) == len(self.objects) and self.background in (None, scene.background.color)
                and all(spec.matches(o) for spec, o in zip(self.objects, objs)))


@dataclass(frozen=True)
class Scene:
    """One or two objects on a background. Constructing a scene validates it (:meth:`validate`).

    ``objects`` keep their stored order (sampled scenes store them in cell order; edits keep the source's
    order and append added objects), which is also the compositing order.
    """

    objects: tuple[Obj, ...]
    background: Background

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        self.validate()

    @classmethod
    def unchecked(cls, objects: Iterable[Obj], background: Background) -> Scene:
        """A scene that skips the cross-object checks (for renders of judge readings of model outputs)."""
        scene = object.__new__(cls)
        object.__setattr__(scene, "objects", tuple(objects))
        object.__setattr__(scene, "background", background)
        return scene

    def validate(self) -> None:
        """Raise :class:`ToySceneError` unless the §2.3 constraints hold: 1–2 objects in distinct cells with
        distinct colours, none sharing the background colour."""
        objs = self.objects
        if not all(isinstance(o, Obj) for o in objs):
            raise ToySceneError("Scene.objects must be Obj instances")
        if not isinstance(self.background, Background):
            raise ToySceneError("Scene.background must be a Background")
        if not 1 <= len(objs) <= MAX_OBJECTS:
            raise ToySceneError(f"a scene has 1 or {MAX_OBJECTS} objects (the caption grammar names at most "
                                f"two), got {len(objs)}")
        if len(objs) == 2:
            a, b = objs
            if a.cell == b.cell:
                raise ToySceneError(f"two objects in one cell ({a.cell!r}); every object needs its own cell")
            if a.color == b.color:
                raise ToySceneError(f"two {a.color} objects; object colours must be distinct")
        for o in objs:
            if o.color == self.background.color:
                raise ToySceneError(f"the {o.color} {o.shape} has the background's colour; choose another colour")

    # --- views ----------------------------------------------------------------------------------------------
    def ordered_objects(self, order: Literal["cell", "stored"] = "cell") -> tuple[Obj, ...]:
        if order == "cell":
            return tuple(sorted(self.objects, key=lambda o: o.cell_index))
        if order == "stored":
            return self.objects
        raise ValueError(f"order must be 'cell' or 'stored', got {order!r}")

    def spec(self, order: Literal["cell", "stored"] = "cell") -> SceneSpec:
        """Every attribute a full caption states."""
        return SceneSpec.from_scene(self, order)

    def ref(self, index: int) -> str:
        """How instructions name object ``index``: the shape alone if unique in the scene, else colour + shape."""
        obj = self.objects[index]
        unique = sum(o.shape == obj.shape for o in self.objects) == 1
        return obj.shape if unique else f"{obj.color} {obj.shape}"

    def caption(self, mode: Literal["full", "partial"] = "full", rng: np.random.Generator | None = None, *,
                order: Literal["cell", "stored"] = "cell") -> str:
        """The caption. ``full`` states every attribute; ``partial`` drops colour, size and position of each
        object and the background phrase independently with p = 0.3 (needs ``rng``). The gradient is never
        mentioned. ``order="stored"`` lists objects in stored order (edit pairs use it)."""
        spec = self.spec(order)
        if mode == "full":
            return spec.caption()
        if mode != "partial":
            raise ValueError(f"caption mode must be 'full' or 'partial', got {mode!r}")
        if not isinstance(rng, np.random.Generator):
            raise ValueError("partial captions need rng=numpy.random.Generator (e.g. flowcore.toy.rng_for(...))")
        drops = rng.random(3 * len(spec.objects) + 1) < PARTIAL_DROP_PROB
        objs = tuple(
            ObjSpec(o.shape, None if drops[3 * i] else o.color, None if drops[3 * i + 1] else o.size,
                    None if drops[3 * i + 2] else o.position)
            for i, o in enumerate(spec.objects)
        )
        return SceneSpec(objs, None if drops[-1] else spec.background).caption()

    # --- rendering ------------------------------------------------------------------------------------------
    def render(self, size: int = 32, supersample: int = 8, **kw: Any) -> torch.Tensor:
        """The image ``(3, size, size)`` float32 in [0, 1] (see :func:`flowcore.toy.render.render`)."""
        from flowcore.toy.render import render

        return render(self, size, supersample, **kw)[0]

    def coverage(self, index: int, size: int = 32, supersample: int = 8, **kw: Any) -> torch.Tensor:
        """Coverage ``(1, size, size)`` in {0, 1/ss², …, 1} of object ``index`` alone."""
        from flowcore.toy.render import object_coverage

        return object_coverage([self.objects[index]], size, supersample, **kw)

    # --- (de)serialisation and edits ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects], "background": self.background.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scene:
        return cls(tuple(Obj.from_dict(o) for o in data["objects"]), Background.from_dict(data["background"]))

    def replace_object(self, index: int, **changes: Any) -> Scene:
        """A new scene with object ``index`` changed (e.g. ``color="blue"``); validated."""
        objs = list(self.objects)
        objs[index] = dataclasses.replace(objs[index], **changes)
        return Scene(tuple(objs), self.background)

    def with_background(self, background: Background | None = None, **changes: Any) -> Scene:
        """A new scene with another background (a :class:`Background` or field changes such as ``color=``)."""
        bg = background if background is not None else dataclasses.replace(self.background, **changes)
        return Scene(self.objects, bg)

    def add(self, obj: Obj) -> Scene:
        """A new scene with ``obj`` appended (drawn last)."""
        return Scene((*self.objects, obj), self.background)

    def remove(self, index: int) -> Scene:
        """A new scene without object ``index``."""
        if not -len(self.objects) <= index < len(self.objects):
            raise ToySceneError(f"no object {index}; the scene has {len(self.objects)}")
        objs = list(self.objects)
        del objs[index]
        return Scene(tuple(objs), self.background)


# --------------------------------------------------------------------------------------------------------------
# sampling (§2.5)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneConfig:
    """What :func:`sample_scene` may draw.

    n_objects: ``None`` = 1 object with p = ``one_object_prob`` (0.4), else 2; or exactly 1 or 2.
    gradient_prob: probability of a background gradient (g ~ U[0.05, 0.3]).
    shapes / colors / sizes / positions: the allowed values (colours serve objects and backgrounds).
    size: render size in pixels used by :class:`SceneSampler`.
    """

    n_objects: int | None = None
    gradient_prob: float = GRADIENT_PROB
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = COLORS
    size: int = 32
    sizes: tuple[str, ...] = SIZE_NAMES
    positions: tuple[str, ...] = POSITIONS
    one_object_prob: float = ONE_OBJECT_PROB

    def __post_init__(self) -> None:
        for name, allowed in (("shapes", SHAPES), ("colors", COLORS), ("sizes", SIZE_NAMES),
                              ("positions", POSITIONS)):
            values = tuple(getattr(self, name))
            object.__setattr__(self, name, values)
            if not values or len(set(values)) != len(values) or not set(values) <= set(allowed):
                raise ValueError(f"SceneConfig.{name} must be distinct values from {list(allowed)}, got {values}")
        if self.n_objects not in (None, 1, 2):
            raise ValueError(f"SceneConfig.n_objects must be None, 1 or 2, got {self.n_objects!r}")
        most = self.n_objects or 2
        if len(self.colors) < most + 1 or len(self.positions) < most:
            raise ValueError(f"{most} objects need at least {most + 1} colours and {most} positions")
        if not (0 <= self.gradient_prob <= 1 and 0 <= self.one_object_prob <= 1):
            raise ValueError("SceneConfig probabilities must lie in [0, 1]")
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"SceneConfig.size must be a positive int, got {self.size!r}")


DEFAULT_CONFIG = SceneConfig()


def _pick(values: Sequence[str], u: float) -> str:
    return values[int(u * len(values))]


def _draw_distinct(pool: list[str], us: Sequence[float]) -> list[str]:
    """Partial Fisher–Yates: ``len(us)`` distinct items from ``pool`` (mutates ``pool``)."""
    out = []
    for i, u in enumerate(us):
        j = i + int(u * (len(pool) - i))
        pool[i], pool[j] = pool[j], pool[i]
        out.append(pool[i])
    return out


def draw_scene(rng: np.random.Generator, config: SceneConfig | None = None, n_objects: int | None = None) -> Scene:
    """Draw one scene from ``rng`` (17 uniforms, one call). Objects are stored in cell order."""
    cfg = config or DEFAULT_CONFIG
    u = rng.random(17).tolist()
    n = n_objects or cfg.n_objects or (1 if u[0] < cfg.one_object_prob else 2)
    cells = _draw_distinct(list(cfg.positions), u[1:1 + n])
    colors = list(cfg.colors)
    bg_color = colors.pop(int(u[3] * len(colors)))
    obj_colors = _draw_distinct(colors, u[4:4 + n])
    objs = [
        Obj(_pick(cfg.shapes, u[6 + i]), obj_colors[i], _pick(cfg.sizes, u[8 + i]), cells[i],
            (int(u[10 + 2 * i] * 9) - JITTER_MAX, int(u[11 + 2 * i] * 9) - JITTER_MAX))
        for i in range(n)
    ]
    objs.sort(key=lambda o: o.cell_index)
    if u[14] < cfg.gradient_prob:
        lo, hi = GRADIENT_RANGE
        toward = GRADIENT_TARGETS[int(u[16] * 2)]
        if toward == bg_color:  # a gradient toward its own colour would be invisible: use the other target
            toward = GRADIENT_TARGETS[1 - GRADIENT_TARGETS.index(toward)]
        background = Background(bg_color, lo + (hi - lo) * u[15], toward)
    else:
        background = Background(bg_color)
    return Scene(tuple(objs), background)


def sample_scene(seed: int, index: int = 0, split: str = "train", config: SceneConfig | None = None) -> Scene:
    """Scene ``index`` of ``split``: a pure function of its arguments (own ``SeedSequence``, §2.5)."""
    return draw_scene(rng_for(seed, index, split, "scene"), config)


def training_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The §8.5 caption mix: full (70%), partial (20%) or empty (10%, the CFG dropout)."""
    u = rng.random()
    if u < CAPTION_MIX[0][1]:
        return scene.caption("full")
    if u < CAPTION_MIX[0][1] + CAPTION_MIX[1][1]:
        return scene.caption("partial", rng)
    return ""


class SceneSampler:
    """Random-access batches: ``SceneSampler(config, seed, split).batch(indices)``.

    captions: ``"full"`` (default), ``"partial"`` or ``"mix"`` (the §8.5 training mix); partial and mixed
    captions draw from the ``"caption"`` stream of the same ``(seed, index, split)``, so they are pure too.
    """

    def __init__(self, config: SceneConfig | None = None, seed: int = 0, split: str = "train", *,
                 captions: Literal["full", "partial", "mix"] = "full", device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        if captions not in ("full", "partial", "mix"):
            raise ValueError(f"captions must be 'full', 'partial' or 'mix', got {captions!r}")
        rng_for(seed, 0, split)  # validates seed and split early
        self.config = config or DEFAULT_CONFIG
        self.seed, self.split, self.captions = seed, split, captions
        self.device, self.dtype = device, dtype

    def scene(self, index: int) -> Scene:
        return sample_scene(self.seed, index, self.split, self.config)

    def caption(self, scene: Scene, index: int) -> str:
        if self.captions == "full":
            return scene.caption("full")
        rng = rng_for(self.seed, index, self.split, "caption")
        return scene.caption("partial", rng) if self.captions == "partial" else training_caption(scene, rng)

    def batch(self, indices: Iterable[int]) -> tuple[torch.Tensor, list[str], list[Scene]]:
        """``(images (B,3,S,S) float32, captions, scenes)`` for the given sample indices, ``S = config.size``."""
        from flowcore.toy.render import render

        indices = [int(i) for i in indices]
        scenes = [self.scene(i) for i in indices]
        captions = [self.caption(s, i) for s, i in zip(scenes, indices)]
        images = render(scenes, self.config.size, device=self.device, dtype=self.dtype)
        return images, captions, scenes


# --------------------------------------------------------------------------------------------------------------
# parsing (§2.4)
# --------------------------------------------------------------------------------------------------------------
_TWO_WORD_POSITIONS = {tuple(p.split()): p for p in POSITIONS if " " in p}
_ONE_WORD_POSITIONS = {p for p in POSITIONS if " " not in p}


class _Words:
    """A cursor over caption words that raises :class:`ToyGrammarError` with context."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.words = split_words(text)
        self.pos = 0

    def peek(self, ahead: int = 0) -> str | None:
        i = self.pos + ahead
        return self.words[i] if i < len(self.words) else None

    def fail(self, expected: str) -> ToyGrammarError:
        got = f"{self.peek()!r}" if self.peek() is not None else "the end of the text"
        return ToyGrammarError(f"expected {expected} at word {self.pos + 1} but found {got} in {self.text!r}")

    def take(self, allowed: Iterable[str], expected: str) -> str:
        word = self.peek()
        if word is None or word not in allowed:
            raise self.fail(expected)
        self.pos += 1
        return word

    def article(self) -> None:
        """Consume ``a``/``an`` and check it against the next word."""
        article = self.take(("a", "an"), "'a' or 'an'")
        nxt = self.peek()
        if nxt is not None and article != article_for(nxt):
            self.pos -= 1
            raise ToyGrammarError(f"use {article_for(nxt)!r} before {nxt!r}, not {article!r}, in {self.text!r}")

    def position(self) -> str:
        pair = (self.peek() or "", self.peek(1) or "")
        if pair in _TWO_WORD_POSITIONS:
            self.pos += 2
            return _TWO_WORD_POSITIONS[pair]
        return self.take(_ONE_WORD_POSITIONS, f"a position ({', '.join(POSITIONS)})")

    def object_np(self) -> ObjSpec:
        self.article()
        size = self.take(SIZE_NAMES, "") if self.peek() in SIZES else None
        color = self.take(COLORS, "") if self.peek() in PALETTE else None
        shape = self.take(SHAPES, f"a shape ({', '.join(SHAPES)})")
        position = None
        if self.peek() == "in":
            self.pos += 1
            self.take(("the",), "'the' after 'in'")
            position = self.position()
        return ObjSpec(shape, color, size, position)

    def done(self) -> bool:
        return self.pos >= len(self.words)


def parse_caption(text: str) -> SceneSpec:
    """Invert the caption grammar: the stated attributes, ``None`` for unstated ones.

    Raises :class:`ToyGrammarError` on anything the grammar does not produce.
    """
    cursor = _Words(text)
    if not cursor.words:
        raise ToyGrammarError("empty caption; a caption names at least one object, e.g. 'a red circle'")
    objects = [cursor.object_np()]
    if cursor.peek() == "and":
        cursor.pos += 1
        objects.append(cursor.object_np())
    background = None
    if cursor.peek() == "on":
        cursor.pos += 1
        cursor.article()
        background = cursor.take(COLORS, f"a background colour ({', '.join(COLORS)})")
        cursor.take(("background",), "'background'")
    if not cursor.done():
        raise cursor.fail("the end of the caption (or 'and <object>' / 'on a <colour> background')")
    return SceneSpec(tuple(objects), background)
