"""Export a training run's EMA weights into the shipped layout (toyworld.md §8.7).

``python -m flowcore.toy export --run DIR --name NAME [--weights-dir DIR] [--no-gates] [--finished true|false]``

- Writes the run's part (``transformer``, ``unet``, ``controlnet``, ``ip_adapter`` or toy-clip's two towers) as
  fp16 ``save_pretrained`` folders under ``<weights>/<name>/``: staged in a temporary folder, size-checked against
  the 25 MB limit of all shipped weights together, then renamed into place.
- Updates ``<weights>/MANIFEST.json``: every file's sha256 and size, ``dtype_stored``, per part the recipe tag, its
  sha256, train command, seed, steps, device and wall hours, plus versions, git commit and the §9 gates
  (``--no-gates`` leaves them ``null``).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowcore.toy.bundle import (
    IP_ADAPTER_WEIGHT_NAME,
    MANIFEST_NAME,
    WEIGHTS_ENV,
    _read_manifest,
    make_scheduler,
    sha256_file,
    weights_root,
)

__all__ = ["LIMIT_MB", "export_run", "main", "save_ip_adapter", "weights_size"]

LIMIT_MB = 25.0
MAIN_PARTS = {"text_encoder+image_encoder", "transformer", "unet"}


def save_ip_adapter(state: dict[str, torch.Tensor], folder: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write an IP-Adapter state dict (original key layout) as ``folder/ip_adapter.safetensors``, atomically."""
    from safetensors.torch import save_file

    from flowcore.io import atomic_write

    tensors = {key: value.detach().to("cpu", dtype).contiguous() for key, value in state.items()}
    return atomic_write(Path(folder) / IP_ADAPTER_WEIGHT_NAME, lambda p: save_file(tensors, str(p)))


def _save_fp16(module: nn.Module, folder: Path) -> None:
    from flowcore.toy.models import quiet_diffusers

    with quiet_diffusers():
        copy.deepcopy(module).to(torch.float16).save_pretrained(folder, safe_serialization=True)


def write_part(recipe, module: nn.Module, staging: Path) -> list[str]:
    """Write the part a recipe trains into ``staging``; returns the subfolders written."""
    from flowcore.toy.models import ip_adapter_state_dict_from_unet
    from flowcore.toy.tokenizer import ToyTokenizer

    if recipe.part == "text_encoder+image_encoder":
        _save_fp16(module.text_encoder, staging / "text_encoder")
        _save_fp16(module.image_encoder, staging / "image_encoder")
        ToyTokenizer().save_pretrained(staging / "tokenizer")
        return ["text_encoder", "image_encoder", "tokenizer"]
    if recipe.part in ("transformer", "unet"):
        _save_fp16(module, staging / recipe.part)
        make_scheduler(recipe.bundle).save_pretrained(staging / "scheduler")
        return [recipe.part, "scheduler"]
    if recipe.part == "controlnet":
        _save_fp16(module, staging / "controlnet")
        return ["controlnet"]
    if recipe.part == "ip_adapter":
        save_ip_adapter(ip_adapter_state_dict_from_unet(module), staging / "ip_adapter")
        return ["ip_adapter"]
    raise ValueError(f"unknown part {recipe.part!r}")


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        str(path.relative_to(folder)): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }


def weights_size(root: Path, skip: Sequence[Path] = ()) -> int:
    """Bytes of all shipped weight files under ``root`` (hidden staging folders and ``skip`` excluded)."""
    total = 0
    skipped = [p.resolve() for p in skip]
    for path in root.rglob("*"):
        rel = path.relative_to(root).parts
        if not path.is_file() or any(p.startswith(".") for p in rel) or path.name == MANIFEST_NAME:
            continue
        if any(path.resolve().is_relative_to(s) for s in skipped):
            continue
        total += path.stat().st_size
    return total


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> dict[str, str | None]:
    from flowcore.io import package_versions

    return package_versions("flowcore", "torch", "diffusers", "accelerate")


def _part_info(run_dir: Path, info: dict[str, Any], meta: dict[str, Any], finished: bool | None) -> dict[str, Any]:
    return {
        "recipe": info["recipe_tag"], "recipe_sha256": info["recipe_sha256"],
        "base_recipe_sha256": info.get("base_recipe_sha256"), "train_command": info.get("train_command"),
        "commands": info.get("commands", []), "seed": info.get("seed"), "steps": meta.get("step"),
        "batch": info["recipe"]["batch"], "samples": meta.get("samples"), "world": info.get("world"),
        "device": meta.get("device", info.get("device")),
        "wall_hours": round(float(meta.get("elapsed_train_s", 0.0)) / 3600, 4),
        "status": meta.get("status"), "finished": bool(meta.get("finished")) if finished is None else finished,
        "sources": info.get("sources", {}), "run": str(run_dir),
    }


def _install(staging: Path, folder: Path, subfolders: list[str]) -> None:
    """Move each staged subfolder into ``folder``, replacing the old one (rename, never a partial copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in subfolders:
        target, old = folder / sub, folder / f".old-{sub}-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(staging / sub, target)
        shutil.rmtree(old, ignore_errors=True)


def export_run(
    run: str | os.PathLike,
    name: str | None = None,
    *,
    weights_dir: str | os.PathLike | None = None,
    gates: bool = True,
    finished: bool | None = None,
    limit_mb: float = LIMIT_MB,
) -> dict[str, Any]:
    """Export the EMA weights of run folder ``run`` as toy ``name``; returns the updated manifest entry."""
    from flowcore.io import write_json
    from flowcore.toy.trainer import list_checkpoints, load_run_module, read_json

    run_dir = Path(run).expanduser().resolve()
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run folder (no run.json)")
    info = read_json(run_dir / "run.json")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to export")
    module, recipe = load_run_module(run_dir, checkpoints[-1])
    name = name or recipe.bundle
    if name != recipe.bundle:
        raise ValueError(f"run {run_dir.name} trains {recipe.tag}, which belongs to {recipe.bundle}, not {name}")
    root = Path(weights_dir).expanduser().resolve() if weights_dir else weights_root()
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        subfolders = write_part(recipe, module, staging)
        new_bytes = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        kept = weights_size(root, skip=[root / name / sub for sub in subfolders])
        if (kept + new_bytes) > limit_mb * 1e6:
            raise ValueError(
                f"exporting {name}/{'+'.join(subfolders)} ({new_bytes / 1e6:.2f} MB) would bring the shipped "
                f"weights to {(kept + new_bytes) / 1e6:.2f} MB, over the {limit_mb} MB limit"
            )
        _install(staging, root / name, subfolders)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    meta = read_json(checkpoints[-1] / "meta.json")
    data, _ = _read_manifest(root)
    entry = data["models"].get(name, {})
    part = _part_info(run_dir, info, meta, finished)
    entry.setdefault("parts", {})[recipe.part] = part
    if recipe.part in MAIN_PARTS:
        entry.update({key: part[key] for key in ("recipe", "recipe_sha256", "train_command", "seed", "steps",
                                                 "device", "wall_hours")})
    entry.update({
        "files": _files(root / name), "dtype_stored": "float16", "preset": recipe.preset,
        "versions": _versions(), "git_commit": git_commit(), "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "finished": all(p["finished"] for p in entry["parts"].values()),
    })
    entry.setdefault("gates", None)
    if gates:
        entry["gates"] = _run_gates(name, root)
    data["models"][name] = entry
    data["format"] = 1
    write_json(root / MANIFEST_NAME, data)
    return entry


def _run_gates(name: str, root: Path) -> Any:
    try:
        from flowcore.toy.gates import evaluate
    except ImportError as exc:
        raise RuntimeError(
            "flowcore.toy.gates (the §9 gates) is not available in this checkout; export with --no-gates and "
            "run `python -m flowcore.toy evaluate` later"
        ) from exc
    previous = os.environ.get(WEIGHTS_ENV)
    os.environ[WEIGHTS_ENV] = str(root)
    try:
        return evaluate(name)
    finally:
        if previous is None:
            os.environ.pop(WEIGHTS_ENV, None)
        else:
            os.environ[WEIGHTS_ENV] = previous


def add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="the training run folder")
    parser.add_argument("--name", default=None, help="toy name (default: the recipe's toy, e.g. toy-kontext)")
    parser.add_argument("--weights-dir", default=None,
                        help=f"weights root (default ${WEIGHTS_ENV} or the packaged flowcore/toy/weights)")
    parser.add_argument("--no-gates", action="store_true", help="skip the §9 gates (manifest gates stay null)")
    parser.add_argument("--finished", choices=("true", "false"), default=None,
                        help="mark the part finished or not (default: whether the run completed its schedule)")
    parser.add_argument("--limit-mb", type=float, default=LIMIT_MB)


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    finished = None if args.finished is None else args.finished == "true"
    return export_run(args.run, args.name, weights_dir=args.weights_dir, gates=not args.no_gates,
                      finished=finished, limit_mb=args.limit_mb)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowcore.toy export")
    add_export_args(parser)
    entry = run_from_args(parser.parse_args(argv))
    print(f"exported {entry.get('recipe', '')}: {len(entry['files'])} files, "
          f"{sum(f['bytes'] for f in entry['files'].values()) / 1e6:.2f} MB", flush=True)
    return 0
