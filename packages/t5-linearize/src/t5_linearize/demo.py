"""The toy-world demonstration (spec §6): linearize toy-sd3, fine-tune it and an identically fine-tuned softmax
baseline, and compare them with the toy judge.

- ``run_demo``: no training; evaluates the committed fine-tuned transformers under ``t5_linearize/assets/toy/``
  (``t5-ft/``, ``softmax-ft/``, written by ``run_protocol``) against the original toy-sd3.
- ``run_protocol``: the full protocol (convert, 3000 fine-tuning steps for T5 and for softmax, a 1000-step
  ``operator="linear"`` run for A4, optional ablations, evaluation of every snapshot, acceptance A1–A4, export of the
  fp16 assets). ``preset="ci"`` is the smoke version on the random-init CI-sized toy-sd3 (finiteness and a falling
  loss only).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t5_linearize import toy
from t5_linearize.config import LinearizeConfig
from t5_linearize.models import T5SD3Transformer2DModel, linearize
from t5_linearize.training import TOY_LR

__all__ = ["ABLATIONS", "AssetsMissing", "ProtocolPlan", "assets_dir", "run_demo", "run_protocol"]

T5_ASSET, SOFTMAX_ASSET, RECORD_ASSET = "t5-ft", "softmax-ft", "training.json"
CPU = torch.device("cpu")
ABLATIONS: dict[str, tuple[dict[str, Any], float]] = {  # name -> (LinearizeConfig changes, distill_weight)
    "no_key_norm": ({"key_norm": False}, 0.0),
    "no_locality": ({"locality": False}, 0.0),
    "conv_init_default": ({"conv_init": "default"}, 0.0),
    "per_segment": ({"key_norm_stats": "per_segment"}, 0.0),
    "swiglu3_dot": ({"preset": "classification"}, 0.0),
    "dit5_mixed": ({"preset": "dit5_mixed"}, 0.0),
    "distill": ({}, 1.0),
}


class AssetsMissing(FileNotFoundError):
    """The committed fine-tuned toy transformers are not there yet (run ``t5-linearize demo --train``)."""


def assets_dir() -> Path:
    """``t5_linearize/assets/toy`` inside the installed package."""
    root = importlib.resources.files("t5_linearize").joinpath("assets", "toy")
    return Path(str(root))


RUNS = ("t5", "softmax", "linear")  # the protocol's training runs (subfolders of its output folder)


@dataclass
class ProtocolPlan:
    """Step counts and sizes of one protocol run (``full``: spec §6; ``ci``: the 50-step smoke version)."""

    preset: str = "full"
    steps: int = 3000
    batch_size: int = 32
    lr: float = TOY_LR
    new_lr_mult: float = 10.0
    warmup_steps: int = 100
    snapshots: tuple[int, ...] = (250, 500, 1000, 2000, 3000)
    linear_steps: int = 1000
    ablation_steps: int = 1000
    eval_prompts: int = 512
    eval_batch: int = 32
    sample_steps: int | None = None  # None: the toy default (28)
    guidance: float | None = None  # None: the toy default (5.0)

    @classmethod
    def for_preset(cls, preset: str, steps: int | None = None, eval_prompts: int | None = None, *,
                   lr: float | None = None, new_lr_mult: float | None = None) -> ProtocolPlan:
        """``lr`` (inherited weights, both runs) and ``new_lr_mult`` (the T5 model's new parameters) override the
        preset's recipe; the softmax baseline always gets the same ``lr`` (spec §6 step 3: the identical recipe)."""
        if preset == "full":
            plan = cls()
        elif preset == "ci":
            plan = cls(preset="ci", steps=50, batch_size=8, lr=1e-3, warmup_steps=5, snapshots=(25, 50),
                       linear_steps=25, ablation_steps=25, eval_prompts=8, eval_batch=8, sample_steps=4)
        else:
            raise ValueError(f"unknown protocol preset {preset!r}; use 'full' or 'ci'")
        if steps is not None:
            scale = steps / plan.steps
            plan.snapshots = tuple(sorted({max(1, round(s * scale)) for s in plan.snapshots}))
            plan.linear_steps = max(1, round(plan.linear_steps * scale))
            plan.ablation_steps = max(1, round(plan.ablation_steps * scale))
            plan.steps = steps
        if eval_prompts is not None:
            plan.eval_prompts = eval_prompts
        for name, value in (("lr", lr), ("new_lr_mult", new_lr_mult)):
            if value is not None:
                if not (math.isfinite(value) and value > 0):
                    raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
                setattr(plan, name, value)
        return plan


# --- no training -----------------------------------------------------------------------------------------------------
def run_demo(out_dir: Path, *, quick: bool = False, seed: int = 0, assets: Path | None = None,
             progress: bool = True, n_prompts: int | None = None, sample_steps: int | None = None
             ) -> dict[str, Any]:
    """Evaluate the committed fine-tuned T5 and fine-tuned softmax toy-sd3 against the original (32 prompts if quick,
    else 512; ``n_prompts``/``sample_steps`` override the count and the toy's 28 sampling steps)."""
    assets = assets or assets_dir()
    missing = [p for p in (assets / T5_ASSET, assets / SOFTMAX_ASSET) if not (p / "config.json").is_file()]
    if missing:
        raise AssetsMissing(f"the fine-tuned toy transformers are missing ({', '.join(map(str, missing))}); create "
                            "them with `t5-linearize demo --train` (the full protocol, about 3–4 h on 2 cores)")
    record = _read_record(assets / RECORD_ASSET)
    # Label the T5 model by the steps it was really fine-tuned for (the committed assets may be a shortened run).
    t5_steps = record.get("training", {}).get("T5", {}).get("steps")
    t5_name = f"T5@{t5_steps}" if t5_steps else "T5-ft"
    bundle = toy.load_bundle("toy-sd3")
    from diffusers import SD3Transformer2DModel

    models = {
        "original": bundle.denoiser,
        "ft-softmax": SD3Transformer2DModel.from_pretrained(assets / SOFTMAX_ASSET, torch_dtype=torch.float32).eval(),
        t5_name: T5SD3Transformer2DModel.from_pretrained(assets / T5_ASSET, torch_dtype=torch.float32).eval(),
    }
    captions = toy.eval_captions(n_prompts or (32 if quick else 512))
    report, images = toy.evaluate_models(bundle, models, captions, seed=seed, steps=sample_steps,
                                         pairs=_PAIRS(t5_name), progress=progress)
    report["training"] = record.get("training", {})
    report["acceptance"] = acceptance(report, t5_name, record)
    toy.write_report(out_dir, report, images, ["original", "ft-softmax", t5_name],
                     {"command": "demo", "quick": quick, "seed": seed, "assets": str(assets), "model": "toy-sd3"})
    return report


def _PAIRS(t5: str) -> list[tuple[str, str]]:
    return [(t5, "ft-softmax"), (t5, "original"), ("ft-softmax", "original")]


def _read_record(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


# --- the full protocol ----------------------------------------------------------------------------------------------
def _bundle_for(plan: ProtocolPlan, seed: int, device: torch.device):
    if plan.preset == "ci":
        bundle = toy.build_bundle("toy-sd3", random_init=True, preset="ci", seed=seed)
    else:
        bundle = toy.load_bundle("toy-sd3")
    return bundle if device.type == "cpu" else bundle.to(device)


def _train(name: str, model: nn.Module, bundle: Any, plan: ProtocolPlan, out_dir: Path, seed: int, steps: int,
           snapshots: tuple[int, ...] = (), teacher: nn.Module | None = None, distill: float = 0.0,
           progress: bool = True, device: torch.device = CPU):
    from t5_linearize.training import FinetuneConfig, ToySceneData, finetune

    config = FinetuneConfig(
        steps=steps, batch_size=plan.batch_size, lr=plan.lr, new_lr_mult=plan.new_lr_mult, weight_decay=0.0,
        warmup_steps=plan.warmup_steps, grad_clip=1.0, seed=seed, log_every=50, save_every=500,
        snapshot_steps=snapshots, output_dir=str(out_dir / name), distill_weight=distill,
        device="cpu" if device.type == "cpu" else "auto",
        progress=progress, resume="auto",
    )
    adapter = bundle.adapter()
    return finetune(model, ToySceneData(adapter, seed=seed), config, teacher=teacher, adapter=adapter)


def run_protocol(out_dir: Path, *, preset: str = "full", seed: int = 0, steps: int | None = None,
                 ablations: bool = False, eval_prompts: int | None = None, export_assets: Path | None = None,
                 progress: bool = True, device: str | torch.device = "cpu", lr: float | None = None,
                 new_lr_mult: float | None = None, train_only: Sequence[str] | None = None) -> dict[str, Any]:
    """Spec §6 steps 1–4 (+ ablations); returns the report (also written under ``out_dir``).

    Each training run that already finished under ``out_dir`` with the same recipe is reused (see
    :func:`t5_linearize.training.finished_run`). ``train_only`` (a subset of ``RUNS``) trains just those runs and
    returns their training summary, no evaluation: the runs can be trained on several machines into copies of
    ``out_dir`` and brought together for the rest.
    """
    plan = ProtocolPlan.for_preset(preset, steps, eval_prompts, lr=lr, new_lr_mult=new_lr_mult)
    unknown = sorted(set(train_only or ()) - set(RUNS))
    if unknown:
        raise ValueError(f"unknown protocol run(s) {unknown}; choose from {list(RUNS)}")
    wanted = set(train_only or RUNS)
    device = torch.device(device)
    bundle = _bundle_for(plan, seed, device)
    base = bundle.denoiser
    t5_0 = linearize(copy.deepcopy(base), LinearizeConfig(), generator=torch.Generator().manual_seed(seed))
    runs = {}
    if "t5" in wanted:
        runs["T5"] = _train("t5", copy.deepcopy(t5_0), bundle, plan, out_dir, seed, plan.steps, plan.snapshots,
                            progress=progress, device=device)
    if "softmax" in wanted:
        runs["softmax"] = _train("softmax", copy.deepcopy(base), bundle, plan, out_dir, seed, plan.steps,
                                 progress=progress, device=device)
    if "linear" in wanted:
        linear = linearize(copy.deepcopy(base), LinearizeConfig(operator="linear"),
                           generator=torch.Generator().manual_seed(seed))
        runs["linear"] = _train("linear", linear, bundle, plan, out_dir, seed, plan.linear_steps,
                                progress=progress, device=device)
    if train_only:
        return {"training": _training_summary(runs, {}), "plan": dataclasses.asdict(plan), "train_only": sorted(wanted)}
    models: dict[str, nn.Module] = {"original": base, "T5@0": t5_0}
    models["ft-softmax"] = _load(runs["softmax"].transformer_dir, linearized=False, device=device)
    for step, folder in sorted(runs["T5"].snapshots.items()):
        models[f"T5@{step}"] = _load(folder, linearized=True, device=device)
    models[f"linear@{plan.linear_steps}"] = _load(runs["linear"].transformer_dir, linearized=True, device=device)
    ablation_runs = _ablations(base, bundle, plan, out_dir, seed, models, progress, device) if ablations else {}
    final = f"T5@{plan.steps}"
    captions = toy.eval_captions(plan.eval_prompts)
    report, images = toy.evaluate_models(bundle, models, captions, seed=seed, steps=plan.sample_steps,
                                         guidance=plan.guidance, batch_size=plan.eval_batch, pairs=_PAIRS(final),
                                         progress=progress)
    report["training"] = _training_summary(runs, ablation_runs)
    record = {"training": report["training"], "linear_at": plan.linear_steps}
    report["acceptance"] = acceptance(report, final, record, t5_mid=_closest(plan.snapshots, plan.linear_steps),
                                      linear=f"linear@{plan.linear_steps}")
    report["plan"] = dataclasses.asdict(plan)
    if ablation_runs:
        report["ablations"] = {name: report["models"].get(name, {}).get("all_correct") for name in ablation_runs}
    toy.write_report(out_dir, report, images, ["original", "ft-softmax", final],
                     {"command": "demo --train", "preset": preset, "seed": seed, "model": "toy-sd3"})
    if export_assets is not None and preset == "full":
        _export(export_assets, models[final], models["ft-softmax"], report)
    return report


def _closest(snapshots: tuple[int, ...], target: int) -> str:
    return f"T5@{min(snapshots, key=lambda s: abs(s - target))}" if snapshots else "T5@0"


def _load(folder: Path | None, *, linearized: bool, device: torch.device = CPU) -> nn.Module:
    if folder is None:
        raise RuntimeError("a training run wrote no transformer folder")
    from diffusers import SD3Transformer2DModel

    cls = T5SD3Transformer2DModel if linearized else SD3Transformer2DModel
    model = cls.from_pretrained(folder, torch_dtype=torch.float32).eval()
    return model if device.type == "cpu" else model.to(device)


def _ablations(base, bundle, plan, out_dir, seed, models, progress, device) -> dict[str, Any]:
    runs = {}
    for name, (changes, distill) in ABLATIONS.items():
        model = linearize(copy.deepcopy(base), LinearizeConfig(**changes), generator=torch.Generator().manual_seed(seed))
        teacher = copy.deepcopy(base) if distill > 0 else None
        runs[name] = _train(f"ablation-{name}", model, bundle, plan, out_dir, seed, plan.ablation_steps,
                            teacher=teacher, distill=distill, progress=progress, device=device)
        models[name] = _load(runs[name].transformer_dir, linearized=True, device=device)
    return runs


def _training_summary(runs: Mapping[str, Any], ablation_runs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, result in {**runs, **{f"ablation-{k}": v for k, v in ablation_runs.items()}}.items():
        losses = result.losses
        head = losses[: max(1, len(losses) // 10)]
        tail = losses[-max(1, len(losses) // 10):]
        out[name] = {"steps": result.steps, "final_loss": result.final_loss, "s_per_step": result.seconds_per_step,
                     "first_loss_mean": sum(head) / len(head) if head else None,
                     "last_loss_mean": sum(tail) / len(tail) if tail else None,
                     "finite": all(math.isfinite(x) for x in losses)}
    return out


def acceptance(report: Mapping[str, Any], t5: str, record: Mapping[str, Any], *, t5_mid: str | None = None,
               linear: str | None = None) -> dict[str, Any]:
    """A1–A4 of spec §6 (each ``None`` when its inputs are missing)."""
    models, pairs = report.get("models", {}), report.get("pairs", {})
    training = record.get("training", {})
    out: dict[str, Any] = {}
    if t5 in models and "ft-softmax" in models:
        gap = 100 * (models[t5]["all_correct"] - models["ft-softmax"]["all_correct"])
        out["A1"] = {"gap_points": gap, "pass": gap >= -5, "stretch": gap >= -2}
    pair = pairs.get(f"{t5} vs ft-softmax")
    if pair:
        out["A2"] = {"median_psnr_db": pair["psnr_median"], "pass": pair["psnr_median"] >= 18,
                     "stretch": pair["psnr_median"] >= 22}
    if "T5" in training and "softmax" in training:
        ratio = training["T5"]["final_loss"] / training["softmax"]["final_loss"]
        finite = all(m.get("finite", True) for m in models.values()) and training["T5"]["finite"]
        out["A3"] = {"loss_ratio": ratio, "finite": finite, "pass": finite and ratio <= 1.15}
    if t5_mid and linear and t5_mid in models and linear in models:
        out["A4"] = {"t5": models[t5_mid]["all_correct"], "linear": models[linear]["all_correct"],
                     "pass": models[t5_mid]["all_correct"] >= models[linear]["all_correct"]}
    return out


def _export(folder: Path, t5: nn.Module, softmax: nn.Module, report: Mapping[str, Any]) -> None:
    """fp16 copies of T5@final and ft-softmax plus the training record (what ``run_demo`` evaluates)."""
    from flowcore.io import write_json

    folder.mkdir(parents=True, exist_ok=True)
    for name, model in ((T5_ASSET, t5), (SOFTMAX_ASSET, softmax)):
        target = folder / name
        tmp = folder / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        copy.deepcopy(model).to(torch.float16).save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    write_json(folder / RECORD_ASSET, {"training": report.get("training", {}), "acceptance": report.get("acceptance"),
                                       "plan": report.get("plan")})
