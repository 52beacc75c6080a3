"""Training batches of the toy recipes (toyworld.md §8.5, §8.6).

A batch is a pure function of ``(recipe, seed, step, rank, world)``, built in two halves:

- ``batch_spec(...)`` → ``BatchSpec``: the cheap, picklable CPU half (which scenes/mannequins/designs/edit pairs,
  token ids, per-sample random draws). It can run ahead in worker processes (``Prefetcher``).
- ``materialize(spec, device)`` → ``dict[str, Tensor]``: renders on the training device and adds the dense noise.

Sample ids at global step ``s`` are ``s·B·world + rank·B + j`` (``B`` = the recipe's id stride). Every sample
draws its choices from ``rng_for(seed, id, "train", "train")`` and its content from its own stream (``scene``,
``edit``, ``mannequin``, ``design``), so no state is carried between steps. Batch-level choices (Kontext's edit/T2I
and resolution draws) and the dense noise use their own ``SeedSequence`` keyed by ``(seed, step, rank)``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowcore.toy.constants import MAX_TOKENS, UNK_ID, VOCAB
from flowcore.toy.seeding import SPLIT, STREAM, rng_for

__all__ = ["MASK_ID", "BatchSpec", "Prefetcher", "batch_spec", "materialize", "sample_ids"]

MASK_ID = 56  # the first reserved id: the [MASK] of toy-clip's masked-token loss (never produced by the tokenizer)
N_WORDS = len(VOCAB)
_BATCH_TAG, _NOISE_TAG = 7001, 7002
# supersampling that keeps the §2.1 pooling identity: render(W/k, 8k) == avg_pool_k(render(W, 8))
SUPERSAMPLE = {32: 8, 16: 16, 8: 32}


@dataclass
class BatchSpec:
    """The CPU half of one batch. ``items``/``references``/``control_items`` are ``(kind, object)`` pairs,
    kind ∈ {"scene", "mannequin", "design", "sketch", "blank"}; ``draws`` holds per-sample arrays."""

    recipe: str
    step: int
    rank: int
    kind: str  # "image" or "edit"
    size: int
    ids: np.ndarray
    items: list[tuple[str, Any]]
    input_ids: np.ndarray
    draws: dict[str, np.ndarray] = field(default_factory=dict)
    references: list[tuple[str, Any]] | None = None
    control_items: list[tuple[str, Any]] | None = None
    noise_seed: int = 0

    @property
    def batch_size(self) -> int:
        return len(self.items)


def sample_ids(stride: int, step: int, rank: int, world: int, count: int | None = None) -> np.ndarray:
    """The global sample ids of ``rank`` at ``step``: ``step·stride·world + rank·stride + j``."""
    start = (step * world + rank) * stride
    return np.arange(start, start + (stride if count is None else count), dtype=np.int64)


def _keyed_rng(seed: int, step: int, rank: int, tag: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), SPLIT["train"], STREAM["train"], int(step), int(rank), tag])
    )


def _choose(u: float, mix: Sequence[tuple[str, float]]) -> str:
    total = 0.0
    for name, weight in mix:
        total += weight
        if u < total:
            return name
    return mix[-1][0]


# --- sources ------------------------------------------------------------------------------------------------
def _draw_source(kind: str, seed: int, index: int) -> Any:
    if kind == "scene":
        from flowcore.toy.scene import sample_scene

        return sample_scene(seed, index, "train")
    if kind == "mannequin":
        from flowcore.toy.tryon import sample_mannequin

        return sample_mannequin(seed, index, "train")
    if kind == "design":
        from flowcore.toy.tryon import sample_design

        return sample_design(seed, index, "train")
    raise ValueError(f"unknown data source {kind!r}")


def _caption(kind: str, obj: Any, rng: np.random.Generator, mode: str) -> str:
    """``mode``: "mix" (the §8.5 70/20/10 mix), "kept" (full 7/9 or partial 2/9: text is kept), "empty"."""
    if mode == "empty":
        return ""
    if kind != "scene":  # mannequins and designs have one caption form
        if mode == "mix" and rng.random() < 0.1:
            return ""
        return obj.caption()
    if mode == "mix":
        from flowcore.toy.scene import training_caption

        return training_caption(obj, rng)
    return obj.caption("full") if rng.random() < 7 / 9 else obj.caption("partial", rng)


def _tokenize(texts: Sequence[str]) -> np.ndarray:
    from flowcore.toy.tokenizer import ToyTokenizer

    return ToyTokenizer()(list(texts), padding="max_length", return_tensors="np")["input_ids"]


# --- per-recipe builders ------------------------------------------------------------------------------------
def _image_batch(recipe, seed: int, ids: np.ndarray) -> tuple[list, list[str], dict[str, np.ndarray]]:
    """Mixture draw, content and caption of every sample of an image recipe, plus the per-sample draws."""
    items, texts = [], []
    draws: dict[str, list] = {"n": [], "t": [], "control": [], "drop_image": []}
    controls = []
    for index in ids.tolist():
        rng = rng_for(seed, index, "train", "train")
        u = rng.random(4)
        kind = _choose(u[0], recipe.mix)
        obj = _draw_source(kind, seed, index)
        caption_rng = rng_for(seed, index, "train", "caption")
        mode, drop_image = recipe.caption_mode, False
        if recipe.objective == "controlnet":
            mode = "empty" if u[1] < recipe.empty_prompt_prob else "kept"
            control = _choose(u[2], recipe.control_mix)
            draws["control"].append(("full", "one", "blank").index(control))
            controls.append(_one_outline(kind, obj, u[3]) if control == "one" else ("blank", None))
        elif recipe.objective == "ip_adapter":
            drop = _choose(u[1], recipe.ip_drop_mix)  # "none", "text", "image", "both"
            mode = "empty" if drop in ("text", "both") else "kept"
            drop_image = drop in ("image", "both")
        items.append((kind, obj))
        texts.append(_caption(kind, obj, caption_rng, mode))
        draws["n"].append(rng.standard_normal())
        draws["t"].append(rng.integers(0, 1000))
        draws["drop_image"].append(drop_image)
    arrays = {
        "n": np.asarray(draws["n"], np.float64), "t": np.asarray(draws["t"], np.int64),
        "drop_image": np.asarray(draws["drop_image"], bool),
    }
    if recipe.objective == "controlnet":
        arrays["control"] = np.asarray(draws["control"], np.int64)
        arrays["_controls"] = controls  # type: ignore[assignment]
    return items, texts, arrays


def _one_outline(kind: str, obj: Any, u: float) -> tuple[str, Any]:
    """The "one outline only" control source: one object of a scene alone, or a mannequin's garment sketch."""
    if kind == "scene":
        if len(obj.objects) > 1:
            keep = int(u * len(obj.objects))
            for drop in reversed(range(len(obj.objects))):
                if drop != keep:
                    obj = obj.remove(drop)
        return "scene", obj
    if kind == "mannequin":
        return "sketch", obj
    return "blank", None


def _clip_tokens(seed: int, ids: np.ndarray, input_ids: np.ndarray, recipe) -> dict[str, np.ndarray]:
    """2% of word tokens → [UNK] (trains its embedding); a further 15% → [MASK] for the masked-token loss."""
    clean, masked = input_ids.copy(), input_ids.copy()
    labels = np.full_like(input_ids, -100)
    for row, index in enumerate(ids.tolist()):
        u = rng_for(seed, index, "train", "train").random(8 + 2 * MAX_TOKENS)[8:].reshape(2, MAX_TOKENS)
        words = clean[row] >= 4  # not [PAD]/[BOS]/[EOS]/[UNK]
        clean[row, words & (u[0] < recipe.unk_prob)] = UNK_ID
        masked[row] = clean[row]
        pick = words & (u[1] < recipe.mlm_prob)
        masked[row, pick] = MASK_ID
        labels[row, pick] = input_ids[row, pick]
    return {"input_ids": clean, "mlm_input_ids": masked, "mlm_labels": labels}


def _edit_batch(recipe, seed: int, ids: np.ndarray) -> tuple[list, list, list[str], dict[str, np.ndarray]]:
    from flowcore.toy.edits import sample_training_edit

    items, references, texts, n, g = [], [], [], [], []
    for index in ids.tolist():
        rng = rng_for(seed, index, "train", "train")
        u = rng.random(4)
        pair = sample_training_edit(seed, index, "train")
        items.append(("scene", pair.target))
        references.append(("scene", pair.source))
        empty = u[0] < recipe.instruction_drop_prob
        texts.append("" if empty else pair.instruction)
        n.append(rng.standard_normal())
        g.append(recipe.guidance_range[0] + (recipe.guidance_range[1] - recipe.guidance_range[0]) * u[1])
    return items, references, texts, {"n": np.asarray(n), "g": np.asarray(g)}


def _t2i_batch(recipe, seed: int, ids: np.ndarray) -> tuple[list, list[str], dict[str, np.ndarray]]:
    items, texts, n, g = [], [], [], []
    for index in ids.tolist():
        rng = rng_for(seed, index, "train", "train")
        u = rng.random(4)
        obj = _draw_source("scene", seed, index)
        items.append(("scene", obj))
        texts.append(_caption("scene", obj, rng_for(seed, index, "train", "caption"), recipe.caption_mode))
        n.append(rng.standard_normal())
        g.append(recipe.guidance_range[0] + (recipe.guidance_range[1] - recipe.guidance_range[0]) * u[1])
    return items, texts, {"n": np.asarray(n), "g": np.asarray(g)}


def batch_spec(recipe, seed: int, step: int, rank: int = 0, world: int = 1) -> BatchSpec:
    """The CPU half of the batch of ``rank`` at ``step`` (pure in its arguments)."""
    noise_seed = int(_keyed_rng(seed, step, rank, _NOISE_TAG).integers(0, 2**62))
    stride = recipe.id_stride
    if recipe.objective in ("kontext", "distill"):
        u = _keyed_rng(seed, step, rank, _BATCH_TAG).random(2)
        size = int(_choose(u[1], [(str(s), p) for s, p in recipe.size_mix]))
        if u[0] < recipe.edit_batch_prob:
            ids = sample_ids(stride, step, rank, world, recipe.edit_batch)
            items, references, texts, draws = _edit_batch(recipe, seed, ids)
            return BatchSpec(recipe.name, step, rank, "edit", size, ids, items, _tokenize(texts), draws,
                             references=references, noise_seed=noise_seed)
        ids = sample_ids(stride, step, rank, world, recipe.batch)
        items, texts, draws = _t2i_batch(recipe, seed, ids)
        return BatchSpec(recipe.name, step, rank, "image", size, ids, items, _tokenize(texts), draws,
                         noise_seed=noise_seed)
    ids = sample_ids(stride, step, rank, world, recipe.batch)
    items, texts, draws = _image_batch(recipe, seed, ids)
    controls = draws.pop("_controls", None)  # type: ignore[arg-type]
    input_ids = _tokenize(texts)
    if recipe.objective == "clip":
        draws.update(_clip_tokens(seed, ids, input_ids, recipe))
        input_ids = draws.pop("input_ids")
    return BatchSpec(recipe.name, step, rank, "image", 32, ids, items, input_ids, draws,
                     control_items=controls, noise_seed=noise_seed)


# --- the device half ----------------------------------------------------------------------------------------
def _render_items(items: Sequence[tuple[str, Any]], size: int, device: torch.device) -> Tensor:
    """Render a mixed list of ``(kind, object)`` to ``(B,3,size,size)`` float32 on ``device``."""
    out = torch.zeros(len(items), 3, size, size, device=device)
    groups: dict[str, list[int]] = {}
    for row, (kind, _) in enumerate(items):
        groups.setdefault(kind, []).append(row)
    for kind, rows in groups.items():
        objs = [items[r][1] for r in rows]
        if kind == "blank":
            continue
        if kind == "scene":
            from flowcore.toy.render import render

            images = render(objs, size, SUPERSAMPLE[size], device=device, dtype=torch.float32)
        elif kind == "mannequin":
            from flowcore.toy.tryon import render_mannequins

            images = render_mannequins(objs, size, device=device, dtype=torch.float32)
        elif kind == "design":
            from flowcore.toy.tryon import render_designs

            images = render_designs(objs, size, device=device, dtype=torch.float32)
        elif kind == "sketch":
            images = torch.stack([_sketch(obj, size) for obj in objs]).to(device)
        else:
            raise ValueError(f"cannot render items of kind {kind!r}")
        out[torch.tensor(rows, device=device)] = images.to(out.dtype)
    return out


def _sketch(mannequin: Any, size: int) -> Tensor:
    """The 1-px outline of the mannequin's own garment as a white-on-black RGB control image ``(3,H,W)``."""
    outline = mannequin.sketch(mannequin.garment.kind, size=size)
    outline = outline[0] if isinstance(outline, tuple) else outline
    outline = outline.float()
    return outline.expand(3, -1, -1) if outline.shape[0] == 1 else outline


def materialize(spec: BatchSpec, device: torch.device | str) -> dict[str, Tensor]:
    """Render and move one batch: ``pixels (B,3,S,S)`` in [0,1], ``input_ids (B,32)`` and the per-sample draws
    as tensors; ``reference`` for edit batches, ``control`` for ControlNet batches; ``generator`` seeds the noise."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # tensors land on cuda:N; the noise generator must too
        device = torch.device("cuda", torch.cuda.current_device())
    out: dict[str, Any] = {
        "pixels": _render_items(spec.items, spec.size, device),
        "input_ids": torch.from_numpy(np.ascontiguousarray(spec.input_ids)).to(device),
    }
    for key, value in spec.draws.items():
        array = np.ascontiguousarray(value)
        tensor = torch.from_numpy(array)
        out[key] = tensor.to(device=device, dtype=torch.float32 if array.dtype == np.float64 else tensor.dtype)
    if spec.references is not None:
        out["reference"] = _render_items(spec.references, spec.size, device)
    if spec.control_items is not None:
        from flowcore.toy.render import edge_map

        full = edge_map(out["pixels"])
        one = _render_items(spec.control_items, spec.size, device)
        scene_rows = torch.tensor([k == "scene" for k, _ in spec.control_items], device=device)
        one = torch.where(scene_rows[:, None, None, None], edge_map(one), one)
        mode = out["control"][:, None, None, None]
        out["control"] = torch.where(mode == 0, full, torch.where(mode == 1, one, torch.zeros_like(full)))
    generator = torch.Generator(device=device)
    generator.manual_seed(spec.noise_seed)
    out["generator"] = generator
    return out


# --- prefetching --------------------------------------------------------------------------------------------
class Prefetcher:
    """Builds ``batch_spec`` for the next steps ahead of time: inline (``workers=0``) or in worker processes.

    Specs are pure functions of their step, so prefetching never changes what a step sees.
    """

    def __init__(self, recipe, seed: int, rank: int, world: int, start_step: int, workers: int = 0,
                 depth: int | None = None) -> None:
        self.recipe, self.seed, self.rank, self.world = recipe, seed, rank, world
        self.next_step = start_step
        self.workers = workers
        self.depth = depth or max(2, 3 * workers)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._warm = False  # True once a worker result was ready when needed
        if workers > 0:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn")
            )

    def _submit(self, step: int) -> None:
        assert self._pool is not None
        self._pending[step] = self._pool.submit(batch_spec, self.recipe, self.seed, step, self.rank, self.world)

    def get(self, step: int) -> BatchSpec:
        if self._pool is not None:
            try:
                for ahead in range(step, step + self.depth):
                    if ahead not in self._pending:
                        self._submit(ahead)
                for stale in [s for s in self._pending if s < step]:
                    self._pending.pop(stale).cancel()
                future = self._pending.pop(step)
                if self._warm or future.done():
                    self._warm = True
                    return future.result()
                future.cancel()  # workers still starting up: build this one here rather than wait
            except Exception as exc:  # a broken worker pool must not end a run: build inline from here on
                warnings.warn(f"batch prefetch workers failed ({type(exc).__name__}: {exc}); building batches "
                              "inline", RuntimeWarning, stacklevel=2)
                self.close()
        return batch_spec(self.recipe, self.seed, step, self.rank, self.world)

    def close(self) -> None:
        if self._pool is not None:
            for future in self._pending.values():
                future.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
