"""The dataset builder (§2.3, §5.4): exact filter renditions of content images with a continuous λ.

Content comes from a folder of photos (any size and colour mode: EXIF orientation applied, alpha composited on
white, greyscale replicated, 16-bit rescaled; short side resized to ``resolution`` and centre-cropped; unreadable
files are skipped with a logged reason, sha256 duplicates dropped) or from the toy world's scenes. Per content image:
the edge map of the *unfiltered* image (Canny, or ``flowcore.toy.edge_map`` for toy scenes), the reference
rendition ``R0 = F(I, 0)`` and R renditions ``F(I, λ_r, seed = hash(id))`` with λ_r drawn per image: with
probability 0.5 one random parameter ~ U(0, 1) and the others 0, otherwise all parameters ~ U(0, 1).

Output: ``shard-NNNNN.safetensors`` (``content u8 (n,3,H,W)``, ``edges u8 (n,1,H,W)``, ``reference u8 (n,3,H,W)``,
``target u8 (n,R,3,H,W)``, ``lam f32 (n,R,P)``, optional fp16 ``latents_reference``/``latents_target``), a
``.jsonl`` beside each shard (source, sha256, caption, λ), ``skipped.jsonl`` and ``manifest.json``. Every file is
written atomically; everything is a pure function of the inputs and the seed, so a rerun gives byte-identical
shards, and ``resume=True`` continues after the last complete shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from style_attr.filters import FAMILY_PARAMS, FILTER_VERSION, AttributeSpec, canny_edges, get_family

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetError",
    "StyleDataset",
    "build_dataset",
    "load_content_image",
    "sample_lambdas",
]

log = logging.getLogger("style_attr.dataset")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
SKIPPED = "skipped.jsonl"
DATASET_FORMAT = "style-attr/dataset"


class DatasetError(ValueError):
    """A dataset folder that cannot be built or read (the message says how to fix it)."""


# --- content ---------------------------------------------------------------------------------------------------------
def load_content_image(path: str | os.PathLike, resolution: int) -> Tensor:
    """One photo as ``(3, r, r)`` float32 in [0, 1]: EXIF transpose, RGB (alpha on white, grey replicated, 16-bit
    rescaled: ``flowcore.images.to_tensor``), short side resized to ``r`` (antialiased bicubic), centre crop."""
    from flowcore.images import to_tensor

    img = to_tensor(Path(path))[0].float()
    h, w = img.shape[-2:]
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    if (nh, nw) != (h, w):
        img = F.interpolate(img[None], size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    return img[:, top:top + resolution, left:left + resolution].clamp(0, 1).contiguous()


def sample_lambdas(rng: np.random.Generator, renditions: int, num_params: int) -> np.ndarray:
    """``(R, P)`` λ: each rendition, w.p. 0.5, one random parameter ~ U(0,1) (others 0), else all ~ U(0,1)."""
    out = np.zeros((renditions, num_params), dtype=np.float32)
    for r in range(renditions):
        if num_params == 1 or rng.random() < 0.5:
            out[r, int(rng.integers(num_params))] = rng.random()
        else:
            out[r] = rng.random(num_params)
    return out


def _filter_seed(content_id: str) -> int:
    return int.from_bytes(hashlib.sha256(content_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _to_u8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


@dataclass
class _Content:
    content_id: str
    source: str
    sha256: str
    image: Tensor          # (3, r, r) float in [0, 1]
    caption: str


def _folder_sources(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"--images {folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return files


def _captions(folder: Path, captions: str | os.PathLike | None) -> dict[str, str]:
    path = Path(captions) if captions is not None else folder / "captions.jsonl"
    if not path.is_file():
        if captions is not None:
            raise DatasetError(f"captions file {path} not found")
        return {}
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[str(rec["file"])] = str(rec.get("caption", rec.get("text", "")))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DatasetError(f"{path}:{n}: each line must be a JSON object with 'file' and 'caption' ({err})") \
                from err
    return out


def _iter_folder(folder: Path, resolution: int, captions: dict[str, str], done: set[str],
                 on_skip: Callable[[str, str], None]) -> Iterator[_Content]:
    seen: set[str] = set(done)
    for path in _folder_sources(folder):
        rel = path.relative_to(folder).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            if path.suffix.lower() not in (".txt", ".jsonl", ".json"):
                on_skip(rel, f"not an image file (suffix {path.suffix or 'none'})")
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            if digest not in done:
                on_skip(rel, "duplicate of an earlier file (same sha256)")
            continue
        try:
            image = load_content_image(path, resolution)
        except Exception as err:
            on_skip(rel, f"unreadable: {type(err).__name__}: {err}")
            continue
        seen.add(digest)
        side = path.with_suffix(".txt")
        caption = captions.get(rel, captions.get(path.name))
        if caption is None:
            caption = side.read_text().strip() if side.is_file() else ""
        yield _Content(digest[:16], rel, digest, image, caption)


def _iter_toy(count: int, seed: int, split: str, resolution: int) -> Iterator[_Content]:
    from flowcore.toy import sample_scene

    for i in range(count):
        scene = sample_scene(seed, i, split)
        image = scene.render(size=resolution)
        cid = f"toy-{split}-{seed}-{i}"
        yield _Content(cid, cid, hashlib.sha256(cid.encode()).hexdigest(), image.float(), scene.caption("full"))


# --- building ----------------------------------------------------------------------------------------------------------
def build_dataset(
    output_dir: str | os.PathLike,
    *,
    family: str,
    images: str | os.PathLike | None = None,
    toy: int | None = None,
    params: Sequence[str] | None = None,
    renditions: int = 4,
    resolution: int | None = None,
    captions: str | os.PathLike | None = None,
    canny_low: int = 100,
    canny_high: int = 200,
    shard_size: int = 256,
    latents_model: Any = None,
    seed: int = 0,
    split: str = "train",
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Build a dataset folder; returns the manifest.

    Args:
        output_dir: the dataset folder (created).
        family, params: the filter family and the parameters λ varies (default all of the family's).
        images / toy: a folder of photos, or the number of toy scenes (``flowcore.toy.sample_scene(seed, i,
            split)``); exactly one.
        renditions: R per content image. resolution: the square side (default 512 for photos, 32 for toys).
        captions: a ``captions.jsonl`` (``{"file", "caption"}`` per line; default ``<images>/captions.jsonl``);
            otherwise a sidecar ``.txt`` per image, else "".
        canny_low/high: the Canny thresholds (photos; toys use ``flowcore.toy.edge_map``).
        latents_model: a FlowModel whose fp16 VAE latents are cached in the shards (real models).
        resume: continue an interrupted build (completed shards are kept).
    """
    if (images is None) == (toy is None):
        raise DatasetError("give exactly one content source: images=FOLDER or toy=N")
    spec = AttributeSpec.for_family(family, tuple(params) if params else None)
    flt = get_family(family)
    col = [flt.params.index(p) for p in spec.params]
    if renditions < 1 or shard_size < 1:
        raise DatasetError("renditions and shard_size must be >= 1")
    resolution = int(resolution or (32 if toy is not None else 512))
    if resolution < 8:
        raise DatasetError(f"resolution must be >= 8, got {resolution}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = {"kind": "toy", "count": int(toy), "split": split} if toy is not None else \
        {"kind": "folder", "path": str(Path(images).resolve())}  # type: ignore[arg-type]
    settings = {
        "format": DATASET_FORMAT, "format_version": 1, "spec": spec.to_dict(), "family_params": list(flt.params),
        "resolution": resolution, "renditions": renditions, "shard_size": shard_size, "seed": seed,
        "lambda_sampling": "one-hot U(0,1) w.p. 0.5, else all U(0,1)", "filter_version": FILTER_VERSION,
        "edges": {"kind": "edge_map", "threshold": 0.35, "sigma": 0.5} if toy is not None else
        {"kind": "canny", "low": canny_low, "high": canny_high},
        "source": source, "latents": None if latents_model is None else str(getattr(latents_model, "model_id", "")),
    }
    state = _load_progress(out, settings, resume)
    done_hashes = {h for shard in state["shards"] for h in shard["sha256"]}
    skipped: list[dict[str, str]] = list(state["skipped"])
    skipped_names = {s["source"] for s in skipped}

    def on_skip(name: str, reason: str) -> None:
        if name in skipped_names:
            return
        skipped_names.add(name)
        log.warning("skipping %s: %s", name, reason)
        skipped.append({"source": name, "reason": reason})

    if toy is not None:
        stream = _iter_toy(int(toy), seed, split, resolution)
        done_ids = {sid for shard in state["shards"] for sid in shard["ids"]}
        stream = (c for c in stream if c.content_id not in done_ids)
    else:
        stream = _iter_folder(Path(images), resolution, _captions(Path(images), captions), done_hashes,  # type: ignore[arg-type]
                              on_skip)
    if progress:
        from flowcore.cli import progress as bar

        stream = iter(bar(stream, desc="content images", unit="img"))
    pending: list[_Content] = []
    index = len(state["shards"])
    for content in stream:
        pending.append(content)
        if len(pending) == shard_size:
            state["shards"].append(_write_shard(out, index, pending, flt, col, renditions, seed, settings,
                                                toy is not None, canny_low, canny_high, latents_model))
            index += 1
            pending = []
            state["skipped"] = skipped
            _save_progress(out, state)
    if pending:
        state["shards"].append(_write_shard(out, index, pending, flt, col, renditions, seed, settings,
                                            toy is not None, canny_low, canny_high, latents_model))
    state["skipped"] = skipped
    _save_progress(out, state)
    return _write_manifest(out, settings, state)


def _progress_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _load_progress(out: Path, settings: dict, resume: bool) -> dict[str, Any]:
    path = out / PROGRESS
    fresh = {"settings_sha256": _progress_key(settings), "shards": [], "skipped": []}
    if not resume:
        if (out / MANIFEST).exists() or path.exists():
            raise DatasetError(f"{out} already holds a dataset; pass resume=True (--resume) to continue it or choose "
                               "an empty --output-dir")
        return fresh
    if not path.is_file():
        if (out / MANIFEST).is_file():
            state = json.loads((out / MANIFEST).read_text())
            if state.get("settings_sha256") != fresh["settings_sha256"]:
                raise DatasetError(f"{out} was built with other settings; use another --output-dir")
            return {"settings_sha256": state["settings_sha256"], "shards": state["shards"],
                    "skipped": state.get("skipped", [])}
        return fresh
    state = json.loads(path.read_text())
    if state.get("settings_sha256") != fresh["settings_sha256"]:
        raise DatasetError(f"{out} holds a partial build with other settings; use the same flags to resume, or "
                           "another --output-dir")
    shards = []
    for shard in state["shards"]:  # keep only shards whose files are complete
        if (out / shard["file"]).is_file() and (out / shard["records"]).is_file():
            shards.append(shard)
        else:
            break
    state["shards"] = shards
    return state


def _save_progress(out: Path, state: dict) -> None:
    from flowcore.io import write_json

    write_json(out / PROGRESS, state)


def _write_manifest(out: Path, settings: dict, state: dict) -> dict[str, Any]:
    from flowcore.io import package_versions, write_json
    from style_attr import __version__

    skipped = state["skipped"]
    if skipped:
        from flowcore.io import atomic_write

        atomic_write(out / SKIPPED, "".join(json.dumps(s) + "\n" for s in skipped))
    manifest = {**settings, "settings_sha256": state["settings_sha256"], "shards": state["shards"],
                "num_content": sum(len(s["ids"]) for s in state["shards"]),
                "num_records": sum(len(s["ids"]) for s in state["shards"]) * settings["renditions"],
                "skipped": skipped, "versions": {**package_versions("flowcore", "torch"), "style-attr": __version__}}
    write_json(out / MANIFEST, manifest)
    (out / PROGRESS).unlink(missing_ok=True)
    return manifest


def _write_shard(out: Path, index: int, items: list[_Content], flt: Any, col: list[int], renditions: int, seed: int,
                 settings: dict, is_toy: bool, canny_low: int, canny_high: int, latents_model: Any) -> dict[str, Any]:
    from safetensors.torch import save_file

    from flowcore.io import atomic_write

    # work on the stored 8-bit content so every rendition is exactly the filter of what the shard holds
    images = _to_u8(torch.stack([c.image for c in items])).float() / 255  # (n,3,H,W)
    n, p_all = len(items), len(flt.params)
    if is_toy:
        from flowcore.toy import edge_map

        edges = edge_map(images)[:, :1]
    else:
        edges = canny_edges(images, canny_low, canny_high)
    seeds = [_filter_seed(c.content_id) for c in items]
    reference = flt(images, torch.zeros(n, p_all), seed=seeds)
    lam = np.zeros((n, renditions, len(col)), dtype=np.float32)
    targets = []
    for k, c in enumerate(items):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _filter_seed(c.content_id)]))
        lam[k] = sample_lambdas(rng, renditions, len(col))
        full = np.zeros((renditions, p_all), dtype=np.float64)
        full[:, col] = lam[k]
        targets.append(flt(images[k:k + 1].expand(renditions, -1, -1, -1), torch.from_numpy(full),
                           seed=[seeds[k]] * renditions))
    target = torch.stack(targets)                                   # (n,R,3,H,W)
    tensors = {"content": _to_u8(images), "edges": _to_u8(edges), "reference": _to_u8(reference),
               "target": _to_u8(target), "lam": torch.from_numpy(lam)}
    if latents_model is not None:
        ref_u8 = tensors["reference"].float() / 255
        tgt_u8 = tensors["target"].flatten(0, 1).float() / 255
        tensors["latents_reference"] = latents_model.encode_image(ref_u8).half().cpu()
        lt = latents_model.encode_image(tgt_u8).half().cpu()
        tensors["latents_target"] = lt.view(n, renditions, *lt.shape[1:])
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    name = f"shard-{index:05d}"
    atomic_write(out / f"{name}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    lines = [json.dumps({"id": c.content_id, "source": c.source, "sha256": c.sha256, "caption": c.caption,
                         "filter_seed": seeds[k], "lam": lam[k].tolist()}) for k, c in enumerate(items)]
    atomic_write(out / f"{name}.jsonl", "\n".join(lines) + "\n")
    return {"file": f"{name}.safetensors", "records": f"{name}.jsonl", "ids": [c.content_id for c in items],
            "sha256": [c.sha256 for c in items]}


# --- reading -------------------------------------------------------------------------------------------------------
class StyleDataset:
    """A built dataset: ``len`` = content images × renditions; :meth:`batch` gathers training samples.

    Shards are read lazily (the last two stay in memory).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise DatasetError(f"{self.path} has no {MANIFEST}: build it with `style-attr build-dataset` (or finish "
                               "an interrupted build with --resume)")
        self.manifest = json.loads(mpath.read_text())
        if self.manifest.get("format") != DATASET_FORMAT:
            raise DatasetError(f"{mpath} is not a {DATASET_FORMAT} manifest")
        self.spec = AttributeSpec.from_dict(self.manifest["spec"])
        self.renditions = int(self.manifest["renditions"])
        self.shards = list(self.manifest["shards"])
        self.sizes = [len(s["ids"]) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.captions: list[str] = []
        for shard in self.shards:
            for line in (self.path / shard["records"]).read_text().splitlines():
                if line.strip():
                    self.captions.append(json.loads(line)["caption"])
        self._cache: dict[int, dict[str, Tensor]] = {}
        if self.num_content == 0:
            raise DatasetError(f"{self.path} holds no content images")

    @property
    def num_content(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.num_content * self.renditions

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256((self.path / MANIFEST).read_bytes()).hexdigest()

    def _shard(self, k: int) -> dict[str, Tensor]:
        if k not in self._cache:
            from safetensors.torch import load_file

            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = load_file(str(self.path / self.shards[k]["file"]))
        return self._cache[k]

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Records ``indices`` (``content·R + rendition``): ``target``/``reference`` ``(B,3,H,W)`` float in [0, 1],
        ``edges`` ``(B,3,H,W)`` (white on black), ``lam`` ``(B,P)``, ``captions`` and the cached latents if any."""
        out: dict[str, list] = {"target": [], "reference": [], "edges": [], "lam": [], "captions": [],
                                "latents_target": [], "latents_reference": []}
        for idx in indices:
            idx = int(idx)
            if not 0 <= idx < len(self):
                raise IndexError(f"record {idx} outside 0..{len(self) - 1}")
            content, r = divmod(idx, self.renditions)
            k = int(np.searchsorted(self.offsets, content, side="right") - 1)
            i = content - int(self.offsets[k])
            shard = self._shard(k)
            out["target"].append(shard["target"][i, r])
            out["reference"].append(shard["reference"][i])
            out["edges"].append(shard["edges"][i])
            out["lam"].append(shard["lam"][i, r])
            out["captions"].append(self.captions[content])
            if "latents_target" in shard:
                out["latents_target"].append(shard["latents_target"][i, r])
                out["latents_reference"].append(shard["latents_reference"][i])
        result: dict[str, Any] = {
            "target": torch.stack(out["target"]).float() / 255, "reference": torch.stack(out["reference"]).float() / 255,
            "edges": (torch.stack(out["edges"]).float() / 255).expand(-1, 3, -1, -1).contiguous(),
            "lam": torch.stack(out["lam"]).float(), "captions": out["captions"],
        }
        if out["latents_target"]:
            result["latents_target"] = torch.stack(out["latents_target"]).float()
            result["latents_reference"] = torch.stack(out["latents_reference"]).float()
        return result


def family_params(family: str) -> tuple[str, ...]:
    return FAMILY_PARAMS[family]
