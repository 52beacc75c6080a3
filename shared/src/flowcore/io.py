"""The one way to write results: atomic writes, JSON that understands tensors, PNG + sidecar JSON.

Every write goes to a temporary file in the destination folder, is flushed and fsynced, and is then renamed over
the destination (``os.replace``), so a reader never sees a half-written file and an interrupted run leaves either
the old file or the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import importlib
import importlib.metadata
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "TOY_MODEL_NAMES",
    "atomic_write",
    "load_tensors",
    "package_versions",
    "save_result",
    "save_tensors",
    "to_jsonable",
    "write_json",
]

# The embedded toy models (toyworld.md §10.2 `available()`); a sidecar for one of these says "world": "toy".
TOY_MODEL_NAMES = ("toy-sd3", "toy-flux", "toy-kontext", "toy-unet", "toy-clip")


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode(path: Path) -> None:
    """Give a temporary file the mode a plain ``open()`` would (mkstemp creates it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    ``data``: bytes, a str (UTF-8), or a callable that writes the file at the temporary path it is given (e.g.
    ``lambda p: image.save(p, format="PNG")`` or ``lambda p: safetensors.torch.save_file(sd, p)``); the temporary
    name keeps the destination's suffix for writers that look at it. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp")
    tmp = Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            if not tmp.exists():
                raise RuntimeError(f"the writer for {path} did not create the file it was given ({tmp})")
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            with os.fdopen(fd, "wb") as handle:
                fd = -1
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def _float_to_json(value: float):
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def to_jsonable(obj):
    """Convert ``obj`` to plain JSON types.

    Tensors and numpy arrays become (nested) lists or scalars, paths and dtypes/devices strings, dataclasses dicts,
    enums their value, sets and tuples lists; objects with ``to_dict()`` use it. Non-finite floats become the
    strings ``"nan"``, ``"inf"``, ``"-inf"`` so the file stays strict JSON. Anything else raises ``TypeError``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int) and not isinstance(obj, enum.Enum):
        return obj
    if isinstance(obj, float):
        return _float_to_json(obj)
    if isinstance(obj, Mapping):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(item) for item in items]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, (os.PathLike, torch.dtype, torch.device)):
        return os.fspath(obj) if isinstance(obj, os.PathLike) else str(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: to_jsonable(getattr(obj, field.name)) for field in dataclasses.fields(obj)}
    if callable(getattr(obj, "to_dict", None)):
        return to_jsonable(obj.to_dict())
    raise TypeError(f"cannot write {type(obj).__name__} to JSON; convert it (or give it a to_dict method)")


def write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> Path:
    """Atomically write ``obj`` (see :func:`to_jsonable`) as UTF-8 JSON with a trailing newline."""
    text = json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    return atomic_write(path, text + "\n")


_SAFETENSORS_SUFFIX = ".safetensors"


def _with_safetensors_suffix(path: Path) -> Path:
    return path if path.suffix == _SAFETENSORS_SUFFIX else path.with_name(path.name + _SAFETENSORS_SUFFIX)


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    *,
    tag: str,
    meta: Mapping,
    sidecar: bool = False,
) -> Path:
    """Write ``tensors`` and JSON metadata to one safetensors file, atomically; return its path.

    ``.safetensors`` is appended to ``path`` unless it already ends so. ``meta`` (made plain with
    :func:`to_jsonable`) is stored as JSON under the header key ``tag``; put its format version in
    ``meta["format"]`` so that :func:`load_tensors` can check it. The tensors are detached, copied to the CPU and
    made contiguous (safetensors refuses views sharing storage). ``sidecar=True`` also writes the metadata as a
    readable ``<stem>.json`` beside the file (atomically, after it).
    """
    from safetensors.torch import save_file

    path = _with_safetensors_suffix(Path(path))
    plain_meta = to_jsonable(dict(meta))
    header = {tag: json.dumps(plain_meta, ensure_ascii=False, allow_nan=False)}
    cpu_tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu_tensors, str(tmp), metadata=header))
    if sidecar:
        write_json(path.with_suffix(".json"), plain_meta)
    return path


def load_tensors(
    path: str | os.PathLike,
    *,
    tag: str,
    format: object,
    what: str | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_tensors`: ``(tensors on the CPU, metadata dict)``.

    ``path`` may leave out the ``.safetensors`` suffix. ``what`` names the kind of file in errors (default
    ``"<tag> file"``). Raises ``FileNotFoundError`` naming the path when there is no such file, ``ValueError`` when
    the header has no JSON object under ``tag`` (not such a file) or when ``meta["format"] != format`` (written by
    another format version). A file that is not safetensors at all raises safetensors' own error.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    what = what or f"{tag} file"
    path = Path(path)
    if not path.is_file() and _with_safetensors_suffix(path).is_file():
        path = _with_safetensors_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}")
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    try:
        meta = json.loads(header[tag])
    except (KeyError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a {what} (no JSON {tag!r} metadata in its header)")
    if meta.get("format") != format:
        raise ValueError(f"{path} is a {what} of format {meta.get('format')!r}, but this version reads format "
                         f"{format!r}; write it again with this version")
    return load_file(str(path)), meta


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed versions of distributions/modules (``None`` when absent); by default flowcore, torch, diffusers.

    Distribution names and import names both work (``t5-linearize`` / ``t5_linearize``); a module's
    ``__version__`` is the fallback for code that is importable but not installed as a distribution.
    """
    names = names or ("flowcore", "torch", "diffusers")
    versions: dict[str, str | None] = {}
    for name in names:
        version: str | None
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            try:
                version = importlib.metadata.version(name.replace("_", "-"))
            except importlib.metadata.PackageNotFoundError:
                try:
                    version = getattr(importlib.import_module(name.replace("-", "_")), "__version__", None)
                except ImportError:
                    version = None
        versions[name] = version
    return versions


def _as_pil_list(images) -> list:
    from flowcore.images import to_pil

    return to_pil(images)


def _write_pngs(stem: Path, images) -> list[Path]:
    """``<stem>.png`` for one image, ``<stem>-<i>.png`` for several."""
    pil_images = _as_pil_list(images)
    if not pil_images:
        raise ValueError(f"no images to write for {stem}")
    if len(pil_images) == 1:
        targets = [stem.with_name(stem.name + ".png")]
    else:
        targets = [stem.with_name(f"{stem.name}-{index}.png") for index in range(len(pil_images))]
    for target, image in zip(targets, pil_images):
        atomic_write(target, functools.partial(_save_png, image))
    return targets


def _save_png(image, tmp: Path) -> None:
    image.save(tmp, format="PNG")


def _is_toy(meta: Mapping) -> bool:
    if meta.get("world") == "toy" or bool(meta.get("is_toy")):
        return True
    model_id = meta.get("model_id", meta.get("model"))
    return isinstance(model_id, str) and model_id in TOY_MODEL_NAMES


def save_result(
    stem: str | os.PathLike,
    images,
    meta: Mapping,
    *,
    extra_images: Mapping[str, object] | None = None,
) -> Path:
    """Write result images as PNG plus a sidecar ``<stem>.json``; return the JSON's path.

    ``stem``: the path without extension (``out_dir / name``). ``images``: one or several images (tensor
    ``(B,3,H,W)``/``(B,1,H,W)``, PIL image or a list; ``None`` for none) → ``<stem>.png``, or ``<stem>-<i>.png``
    for several. ``extra_images``: ``{key: images}`` → ``<stem>.<key>.png`` (``<stem>.<key>-<i>.png`` for several),
    e.g. ``{"rec": ..., "mask": ...}``. Every file is written atomically, the JSON last.

    The JSON holds every key of ``meta`` (tensors, paths, dataclasses are converted) plus:
    ``versions`` (flowcore, torch, diffusers, and ``meta["package"]`` when given; ``meta["versions"]`` entries are
    kept), ``model_id`` (from ``meta["model_id"]`` or ``meta["model"]``, else ``null``), ``seed`` (``null`` if
    absent), ``world: "toy"`` when ``meta`` says ``world="toy"``/``is_toy=True`` or the model is a toy name, and
    ``outputs``: the written file names, relative to the JSON's folder.
    """
    stem = Path(stem)
    if stem.suffix.lower() in (".png", ".json"):
        raise ValueError(f"stem must not carry an extension, got {stem.name!r}; pass {stem.with_suffix('').name!r}")
    written: list[Path] = []
    if images is not None:
        written += _write_pngs(stem, images)
    for key, extra in (extra_images or {}).items():
        if extra is not None:
            written += _write_pngs(stem.with_name(f"{stem.name}.{key}"), extra)

    meta = dict(meta)
    package = meta.get("package")
    names = ["flowcore", "torch", "diffusers"] + ([package] if isinstance(package, str) else [])
    versions = {**package_versions(*names), **dict(meta.pop("versions", None) or {})}
    model_id = meta.pop("model_id", None) or meta.get("model")
    world = "toy" if _is_toy({**meta, "model_id": model_id}) else meta.get("world")
    meta.pop("world", None)
    record = {
        "model_id": model_id,
        "seed": meta.pop("seed", None),
        **({"world": world} if world is not None else {}),
        "versions": versions,
        **meta,
        "outputs": [target.name for target in written],
    }
    return write_json(stem.with_name(stem.name + ".json"), record)
