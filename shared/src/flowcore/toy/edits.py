"""Exact edit pairs of the toy world (toyworld.md §3): ground truth for directedit and specedit.

``make_edit(scene, kind, rng)`` changes exactly one declared attribute and records the instruction;
``sample_edit(seed, index, split, kinds)`` draws a source scene that meets the kind's precondition and edits it.
Masks are computed lazily (they need two renders): the trainer only touches scenes and instructions.

| kind       | change                                            | instruction                                  |
|------------|---------------------------------------------------|----------------------------------------------|
| color      | a colour unused by the background / other object  | make the {ref} {color}                       |
| shape      | another shape                                     | turn the {ref} into a {shape}                |
| size       | another size class                                | make the {ref} {size}                        |
| position   | an empty cell (jitter kept)                       | move the {ref} to the {position}             |
| background | a colour no object uses (gradient kept)           | change the background to {color}             |
| add        | a fully sampled object in an empty cell (1 obj)   | add a {size} {color} {shape} in the {position} |
| remove     | drop one object (2 obj)                           | remove the {ref}                             |

``{ref}`` is the shape alone when it is unique in the scene, else ``"{color} {shape}"``. The extra kind
``"identity"`` (empty instruction, target = source) serves the training mix (:func:`sample_training_edit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from flowcore.images import dilate
from flowcore.toy.constants import COLORS, EDIT_KINDS, POSITIONS, SHAPES, SIZE_NAMES
from flowcore.toy.render import object_coverage, render
from flowcore.toy.scene import (
    JITTER_MAX,
    Obj,
    ObjSpec,
    Scene,
    ToySceneError,
    _Words,
    article_for,
    draw_scene,
)
from flowcore.toy.seeding import rng_for

__all__ = [
    "IDENTITY_KIND",
    "IDENTITY_PROB",
    "Edit",
    "EditPair",
    "make_edit",
    "parse_instruction",
    "sample_edit",
    "sample_training_edit",
]

IDENTITY_KIND = "identity"
IDENTITY_PROB = 0.05  # share of identity pairs in the training mix (§3)
PIXEL_CHANGE_THRESHOLD = 0.5 / 255
_OBJECT_KINDS = ("color", "shape", "size", "position", "remove")


@dataclass(frozen=True)
class Edit:
    """A parsed instruction: ``kind``, the edited ``object_index`` (into the source scene; ``None`` for
    background/add/identity), the new ``value`` (colour, shape, size class or cell name) and, for ``add``, the
    new object's attributes as ``new_object``."""

    kind: str
    object_index: int | None = None
    value: str | None = None
    new_object: ObjSpec | None = None

    def apply(self, scene: Scene, jitter: tuple[int, int] = (0, 0)) -> Scene:
        """The edited scene (``jitter`` is the added object's jitter, which instructions do not state)."""
        if self.kind == IDENTITY_KIND:
            return scene
        if self.kind == "background":
            return scene.with_background(color=self.value)
        if self.kind == "add":
            spec = self.new_object
            if spec is None or spec.color is None or spec.size is None or spec.position is None:
                raise ValueError("an 'add' edit needs new_object with shape, color, size and position")
            return scene.add(Obj(spec.shape, spec.color, spec.size, spec.position, jitter))
        if self.object_index is None:
            raise ValueError(f"a {self.kind!r} edit needs object_index")
        if self.kind == "remove":
            return scene.remove(self.object_index)
        field = "cell" if self.kind == "position" else self.kind
        return scene.replace_object(self.object_index, **{field: self.value})


@dataclass(frozen=True)
class EditPair:
    """One exact edit. ``edited_object`` indexes ``source.objects`` (``target.objects`` for ``add``; ``None``
    for ``background`` and ``identity``). Both captions list objects in the source's stored order (which is cell
    order for sampled scenes; an added object comes last).

    Lazily computed at ``size`` px: ``source_image``/``target_image`` ``(3,H,W)`` float32, ``pixel_mask``
    ``(1,H,W)`` bool (renders differ by more than 0.5/255 in some channel) and ``region_mask`` ``(1,H,W)`` bool
    (the semantic region of §3, dilated by 1 px with a 3×3 square).
    """

    kind: str
    source: Scene
    target: Scene
    source_caption: str
    target_caption: str
    instruction: str
    edited_object: int | None
    size: int = 32

    @cached_property
    def _renders(self) -> torch.Tensor:
        return render([self.source, self.target], self.size)

    @property
    def source_image(self) -> torch.Tensor:
        return self._renders[0]

    @property
    def target_image(self) -> torch.Tensor:
        return self._renders[1]

    @cached_property
    def pixel_mask(self) -> torch.Tensor:
        diff = (self._renders[0] - self._renders[1]).abs().amax(0, keepdim=True)
        return diff > PIXEL_CHANGE_THRESHOLD

    @cached_property
    def region_mask(self) -> torch.Tensor:
        return dilate(_semantic_region(self)[None, None], 1, shape="square")[0]

    def edit(self) -> Edit:
        """The :class:`Edit` this pair applies (what :func:`parse_instruction` returns for it)."""
        return parse_instruction(self.instruction, self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source.to_dict(), "target": self.target.to_dict(),
                "source_caption": self.source_caption, "target_caption": self.target_caption,
                "instruction": self.instruction, "edited_object": self.edited_object, "size": self.size}


def _support(objs: Sequence[Obj], size: int) -> torch.Tensor:
    """``(H,W)`` bool: pixels any of ``objs`` touches."""
    return (object_coverage(objs, size) > 0).any(0)


def _semantic_region(pair: EditPair) -> torch.Tensor:
    """The undilated ``(H,W)`` region of §3."""
    size, src, tgt, i = pair.size, pair.source, pair.target, pair.edited_object
    if pair.kind == IDENTITY_KIND:
        return torch.zeros(size, size, dtype=torch.bool)
    if pair.kind == "background":  # everything not fully covered by an object
        return object_coverage(src.objects, size).sum(0) < 1
    if i is None:
        raise ValueError(f"a {pair.kind!r} pair needs edited_object")
    if pair.kind == "add":
        return _support([tgt.objects[i]], size)
    if pair.kind == "remove":
        return _support([src.objects[i]], size)
    return _support([src.objects[i], tgt.objects[i]], size)


# --------------------------------------------------------------------------------------------------------------
# making edits
# --------------------------------------------------------------------------------------------------------------
def _choose(options: Sequence[str], u: float, what: str) -> str:
    if not options:
        raise ToySceneError(f"no {what} available for this edit")
    return options[int(u * len(options))]


def _pair(kind: str, source: Scene, target: Scene, instruction: str, edited: int | None, size: int) -> EditPair:
    return EditPair(kind, source, target, source.caption("full", order="stored"),
                    target.caption("full", order="stored"), instruction, edited, size)


def make_edit(scene: Scene, kind: str, rng: np.random.Generator, size: int = 32) -> EditPair:
    """Edit ``scene`` by ``kind`` (one of ``EDIT_KINDS`` or ``"identity"``) with choices drawn from ``rng``.

    Raises :class:`ToySceneError` when the precondition fails (``add`` needs 1 object, ``remove`` needs 2).
    """
    if kind not in (*EDIT_KINDS, IDENTITY_KIND):
        raise ValueError(f"unknown edit kind {kind!r}; use one of {[*EDIT_KINDS, IDENTITY_KIND]}")
    objs, bg = scene.objects, scene.background.color
    if kind == "add" and len(objs) != 1:
        raise ToySceneError(f"'add' needs a scene with exactly 1 object (at most 2 fit a caption); got {len(objs)}")
    if kind == "remove" and len(objs) != 2:
        raise ToySceneError(f"'remove' needs a scene with 2 objects (a scene keeps at least one); got {len(objs)}")
    u = rng.random(7).tolist()
    if kind == IDENTITY_KIND:
        return _pair(kind, scene, scene, "", None, size)
    if kind == "background":
        used = {o.color for o in objs} | {bg}
        color = _choose([c for c in COLORS if c not in used], u[1], "background colour")
        return _pair(kind, scene, scene.with_background(color=color), f"change the background to {color}", None,
                     size)
    if kind == "add":
        used_colors = {objs[0].color, bg}
        color = _choose([c for c in COLORS if c not in used_colors], u[1], "colour")
        cell = _choose([p for p in POSITIONS if p != objs[0].cell], u[2], "cell")
        new = Obj(_choose(SHAPES, u[3], "shape"), color, _choose(SIZE_NAMES, u[4], "size"), cell,
                  (int(u[5] * 9) - JITTER_MAX, int(u[6] * 9) - JITTER_MAX))
        instruction = f"add {article_for(new.size)} {new.size} {new.color} {new.shape} in the {new.cell}"
        return _pair(kind, scene, scene.add(new), instruction, 1, size)
    index = int(u[0] * len(objs))
    obj, ref = objs[index], scene.ref(index)
    others = [o for j, o in enumerate(objs) if j != index]
    if kind == "remove":
        return _pair(kind, scene, scene.remove(index), f"remove the {ref}", index, size)
    if kind == "color":
        used = {o.color for o in others} | {bg, obj.color}
        value = _choose([c for c in COLORS if c not in used], u[1], "colour")
        instruction, field = f"make the {ref} {value}", "color"
    elif kind == "shape":
        value = _choose([s for s in SHAPES if s != obj.shape], u[1], "shape")
        instruction, field = f"turn the {ref} into {article_for(value)} {value}", "shape"
    elif kind == "size":
        value = _choose([s for s in SIZE_NAMES if s != obj.size], u[1], "size")
        instruction, field = f"make the {ref} {value}", "size"
    else:  # position
        used_cells = {o.cell for o in objs}
        value = _choose([p for p in POSITIONS if p not in used_cells], u[1], "empty cell")
        instruction, field = f"move the {ref} to the {value}", "cell"
    return _pair(kind, scene, scene.replace_object(index, **{field: value}), instruction, index, size)


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in (*EDIT_KINDS, IDENTITY_KIND)]
    if not kinds or bad:
        raise ValueError(f"kinds must be a non-empty selection of {list(EDIT_KINDS)}; got {list(kinds)}")
    return kinds


def _edit_from_rng(rng: np.random.Generator, kinds: tuple[str, ...], size: int) -> EditPair:
    kind = kinds[int(rng.random() * len(kinds))]
    n_objects = {"add": 1, "remove": 2}.get(kind)
    return make_edit(draw_scene(rng, n_objects=n_objects), kind, rng, size)


def sample_edit(seed: int, index: int = 0, split: str = "train", kinds: Sequence[str] = EDIT_KINDS,
                size: int = 32) -> EditPair:
    """Edit pair ``index`` of ``split``: the kind uniform over ``kinds``, a source scene meeting its
    precondition (1 object for ``add``, 2 for ``remove``, else the usual 40/60 mix), all drawn from the pair's
    own ``"edit"`` stream. Pure and cheap (masks are lazy)."""
    return _edit_from_rng(rng_for(seed, index, split, "edit"), _check_kinds(kinds), size)


def sample_training_edit(seed: int, index: int = 0, split: str = "train", size: int = 32) -> EditPair:
    """The §3 training mix: an identity pair (empty instruction, target = source) with p = 0.05, otherwise
    the seven kinds uniformly. Uses the ``"edit"`` stream too, so its pairs differ from :func:`sample_edit`'s."""
    rng = rng_for(seed, index, split, "edit")
    if rng.random() < IDENTITY_PROB:
        return make_edit(draw_scene(rng), IDENTITY_KIND, rng, size)
    return _edit_from_rng(rng, EDIT_KINDS, size)


# --------------------------------------------------------------------------------------------------------------
# parsing instructions
# --------------------------------------------------------------------------------------------------------------
def _resolve_ref(cursor: _Words, scene: Scene) -> int:
    """Consume ``{shape}`` or ``{color} {shape}`` and return the object it names in ``scene``."""
    color = cursor.take(COLORS, "") if cursor.peek() in COLORS else None
    shape = cursor.take(SHAPES, f"an object reference ('{{shape}}' or '{{color}} {{shape}}', shapes: {SHAPES})")
    hits = [i for i, o in enumerate(scene.objects) if o.shape == shape and color in (None, o.color)]
    ref = f"{color} {shape}" if color else shape
    if not hits:
        raise ToySceneError(f"the instruction names the {ref}, which is not in the scene")
    if len(hits) > 1:
        raise ToySceneError(f"'the {ref}' is ambiguous in this scene; name it by colour and shape")
    return hits[0]


def parse_instruction(text: str, scene: Scene) -> Edit:
    """Invert the §3 instruction templates against ``scene`` (``""`` is the identity edit).

    Raises :class:`ToyGrammarError` for text outside the templates and :class:`ToySceneError` when the
    referenced object is not (uniquely) in the scene.
    """
    cursor = _Words(text)
    if not cursor.words:
        return Edit(IDENTITY_KIND)
    verb = cursor.take(("make", "turn", "move", "change", "add", "remove"), "an edit verb (make, turn, move, "
                       "change, add, remove)")
    if verb == "change":
        for word in ("the", "background", "to"):
            cursor.take((word,), repr(word))
        edit = Edit("background", value=cursor.take(COLORS, f"a colour ({', '.join(COLORS)})"))
    elif verb == "add":
        cursor.article()
        size = cursor.take(SIZE_NAMES, f"a size ({', '.join(SIZE_NAMES)})")
        color = cursor.take(COLORS, f"a colour ({', '.join(COLORS)})")
        shape = cursor.take(SHAPES, f"a shape ({', '.join(SHAPES)})")
        cursor.take(("in",), "'in'")
        cursor.take(("the",), "'the'")
        edit = Edit("add", new_object=ObjSpec(shape, color, size, cursor.position()))
    else:
        cursor.take(("the",), "'the'")
        index = _resolve_ref(cursor, scene)
        if verb == "remove":
            edit = Edit("remove", index)
        elif verb == "turn":
            cursor.take(("into",), "'into'")
            cursor.article()
            edit = Edit("shape", index, cursor.take(SHAPES, f"a shape ({', '.join(SHAPES)})"))
        elif verb == "move":
            cursor.take(("to",), "'to'")
            cursor.take(("the",), "'the'")
            edit = Edit("position", index, cursor.position())
        else:  # make
            value = cursor.take((*COLORS, *SIZE_NAMES), "a colour or a size")
            edit = Edit("color" if value in COLORS else "size", index, value)
    if not cursor.done():
        raise cursor.fail("the end of the instruction")
    return edit
