"""The toy-world side (spec §6): access to ``flowcore.toy``, generation with a given transformer, and the evaluation
report (judge accuracy per claim type, PSNR between models, comparison grid).

The toy world's public names are taken from ``flowcore.toy`` when it exports them and from its submodules otherwise
(the toy package is being finished in parallel).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CLAIM_TYPES",
    "ToyWeightsMissing",
    "eval_captions",
    "evaluate_models",
    "generate",
    "load_bundle",
    "pair_metrics",
    "write_report",
]

CLAIM_TYPES = ("shape", "color", "size", "position", "background", "count")
_WHERE = {"load": "bundle", "build": "bundle", "ToyWeightsMissing": "bundle", "SceneSampler": "scene",
          "sample_scene": "scene", "alignment": "judge"}


def _toy(name: str) -> Any:
    toy = importlib.import_module("flowcore.toy")
    value = getattr(toy, name, None)
    if value is None:
        value = getattr(importlib.import_module(f"flowcore.toy.{_WHERE[name]}"), name)
    return value


def _missing_class() -> type[Exception]:
    try:
        return _toy("ToyWeightsMissing")
    except (ImportError, AttributeError):  # pragma: no cover - the toy world always defines it
        return FileNotFoundError


ToyWeightsMissing = _missing_class()


def load_bundle(name: str = "toy-sd3", **kwargs: Any):
    """``flowcore.toy.load(name)`` (raises ``ToyWeightsMissing`` until the toy weights are committed)."""
    return _toy("load")(name, **kwargs)


def build_bundle(name: str = "toy-sd3", **kwargs: Any):
    """``flowcore.toy.build(name, random_init=True, ...)``: the architecture with seeded random weights."""
    return _toy("build")(name, **kwargs)


def scene_sampler(seed: int = 0, split: str = "train", captions: str = "mix"):
    return _toy("SceneSampler")(seed=seed, split=split, captions=captions, dtype=torch.float32)


def eval_captions(n: int, seed: int = 0) -> list[str]:
    """The full captions of test scenes 0..n−1 (``sample_scene(seed, i, split="test")``)."""
    sample_scene = _toy("sample_scene")
    return [sample_scene(seed, i, split="test").caption("full") for i in range(n)]


@torch.no_grad()
def generate(bundle: Any, denoiser: nn.Module, prompts: Sequence[str], *, seed: int, steps: int | None = None,
             guidance: float | None = None, batch_size: int = 32) -> Tensor:
    """Images (n, 3, 32, 32) in [0, 1] from the toy's stock pipeline with ``denoiser`` in place of its own.

    Prompts are cut into fixed batches and batch b is seeded with ``seed + b``, so every model given the same
    prompts, seed and batch size starts each prompt from the same noise.
    """
    view = dataclasses.replace(bundle, denoiser=denoiser)
    was_training = denoiser.training
    denoiser.eval()
    images = []
    try:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            chunk = list(prompts[start : start + batch_size])
            images.append(view.generate(chunk, seed=seed + b, steps=steps, guidance=guidance).cpu())
    finally:
        denoiser.train(was_training)
    return torch.cat(images) if images else torch.empty(0, 3, 32, 32)


# --- metrics ---------------------------------------------------------------------------------------------------------
def judge(images: Tensor, captions: Sequence[str]) -> dict[str, Any]:
    """Judge accuracy per claim type, all-correct rate (``AlignmentResult.strict``) and mean score."""
    results = _toy("alignment")(images.float().clamp(0, 1), list(captions))
    per_type: dict[str, list[float]] = {t: [] for t in CLAIM_TYPES}
    for res in results:
        for key, value in res.accuracies.items():
            per_type.setdefault(key, []).append(float(value))
    return {
        "all_correct": float(np.mean([r.strict for r in results])) if results else float("nan"),
        "score": float(np.mean([r.score for r in results])) if results else float("nan"),
        "per_type": {k: (float(np.mean(v)) if v else None) for k, v in per_type.items()},
        "n": len(results),
    }


def pair_metrics(a: Tensor, b: Tensor) -> dict[str, float]:
    """Per-image MSE and PSNR (images in [0, 1]): mean, median and 10th percentile."""
    from flowcore.metrics import psnr

    mse = (a.float() - b.float()).square().flatten(1).mean(dim=1)
    db = psnr(a.float(), b.float(), data_range=1.0, max_db=100.0)
    db = db.flatten() if db.ndim else db.expand(a.shape[0])
    return {
        "mse_mean": float(mse.mean()), "mse_median": float(mse.median()),
        "psnr_mean": float(db.mean()), "psnr_median": float(db.median()),
        "psnr_p10": float(torch.quantile(db.double(), 0.10)),
    }


def evaluate_models(bundle: Any, models: Mapping[str, nn.Module], captions: Sequence[str], *, seed: int = 0,
                    steps: int | None = None, guidance: float | None = None, batch_size: int = 32,
                    pairs: Sequence[tuple[str, str]] = (), progress: bool = True) -> tuple[dict[str, Any], dict]:
    """Generate with every model (same noise per prompt), judge them and compare the given pairs.

    Returns (report, images by model name).
    """
    from flowcore.cli import progress as bar

    images: dict[str, Tensor] = {}
    report: dict[str, Any] = {"n_prompts": len(captions), "seed": seed, "models": {}, "pairs": {}}
    for name in bar(list(models), desc="evaluate", disable=not progress):
        images[name] = generate(bundle, models[name], captions, seed=seed, steps=steps, guidance=guidance,
                                batch_size=batch_size)
        finite = bool(torch.isfinite(images[name]).all())
        report["models"][name] = {**judge(images[name], captions), "finite": finite}
    for first, second in pairs:
        if first in images and second in images:
            report["pairs"][f"{first} vs {second}"] = pair_metrics(images[first], images[second])
    return report, images


def comparison_grid(images: Mapping[str, Tensor], names: Sequence[str], rows: int = 16, pad: int = 2) -> Tensor:
    """A (3, H, W) grid: one row per prompt, one column per model in ``names``."""
    present = [n for n in names if n in images]
    count = min(rows, *(images[n].shape[0] for n in present))
    tiles = []
    for i in range(count):
        row = [torch.nn.functional.pad(images[n][i], (pad, pad, pad, pad), value=1.0) for n in present]
        tiles.append(torch.cat(row, dim=2))
    return torch.cat(tiles, dim=1).clamp(0, 1)


def write_report(out_dir: Path, report: dict[str, Any], images: Mapping[str, Tensor], grid_models: Sequence[str],
                 meta: Mapping[str, Any]) -> dict[str, Path]:
    """``report.json``, ``report.md`` and ``grid.png`` (+ sidecar) under ``out_dir`` (all atomic)."""
    from flowcore.io import atomic_write, save_result, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out_dir / "report.json", {**report, "meta": dict(meta)})}
    paths["md"] = atomic_write(out_dir / "report.md", markdown_report(report))
    present = [n for n in grid_models if n in images]
    if present:
        grid = comparison_grid(images, present)
        paths["grid"] = save_result(out_dir / "grid", grid[None],
                                    {**dict(meta), "columns": present, "package": "t5-linearize", "world": "toy"})
    return paths


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}" if percent else f"{value:.4g}"


def markdown_report(report: Mapping[str, Any]) -> str:
    """The report as Markdown tables (accuracy in %, PSNR in dB)."""
    lines = [f"# t5-linearize toy evaluation ({report.get('n_prompts')} prompts)", ""]
    lines += ["| model | all-correct % | score % | " + " | ".join(f"{t} %" for t in CLAIM_TYPES) + " | finite |",
              "|---" * (4 + len(CLAIM_TYPES)) + "|"]
    for name, row in report.get("models", {}).items():
        cells = [_fmt(row["per_type"].get(t), True) for t in CLAIM_TYPES]
        lines.append(f"| {name} | {_fmt(row['all_correct'], True)} | {_fmt(row['score'], True)} | "
                     + " | ".join(cells) + f" | {row['finite']} |")
    if report.get("pairs"):
        lines += ["", "| pair | PSNR mean dB | PSNR median dB | PSNR p10 dB | MSE mean |", "|---|---|---|---|---|"]
        for name, m in report["pairs"].items():
            lines.append(f"| {name} | {_fmt(m['psnr_mean'])} | {_fmt(m['psnr_median'])} | {_fmt(m['psnr_p10'])} | "
                         f"{_fmt(m['mse_mean'])} |")
    for key in ("training", "acceptance", "ablations"):
        if report.get(key):
            lines += ["", f"## {key}", "", "```", _pretty(report[key]), "```"]
    return "\n".join(lines) + "\n"


def _pretty(obj: Any) -> str:
    import json

    from flowcore.io import to_jsonable

    return json.dumps(to_jsonable(obj), indent=2)
