"""Fine-tuning a linearized (or, for the baseline, an unconverted) transformer with the rectified-flow loss (spec §5).

x_t = (1 − σ)x0 + σε, target v = ε − x0, L = ‖v_θ − v‖² + λ_d‖v_θ − v_teacher‖² (``distill_only`` drops the first
term). The loop runs under ``accelerate`` (DDP for several processes/GPUs): every rank takes the rows ``r::world`` of
the same global batch, and the noise and timesteps of a step are drawn for the whole global batch from
``(seed, step)``, so a W-process run equals a single-process run with the global batch.

Multi-process on CPU (gloo): ``torchrun --nproc_per_node 2 -m t5_linearize finetune ... --device cpu`` or
``accelerate launch --multi_gpu --num_processes 2 -m t5_linearize finetune ... --device cpu`` (``accelerate launch
--cpu --num_processes 2`` starts one process with accelerate 1.15).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcore.adapters import Conditioning, FlowModel
from t5_linearize.models import frozen_modules, is_linearized, param_groups

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "ImageFolderData",
    "TensorData",
    "ToyEditData",
    "ToySceneData",
    "TrainingData",
    "finetune",
    "sample_sigmas",
    "self_generated_data",
]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


# Base lr of toy fine-tuning (ours to choose, spec §3). 3e-4 brings the §6 protocol's T5 / softmax loss ratio at
# 3000 steps from 1.21 to 1.05 (A3 passes) but the linear control then recovers as fast (A4 fails) and the judge
# scores both fine-tuned models lower, so 1e-4 stays (README, "Recipe experiments").
TOY_LR = 1e-4


@dataclass
class FinetuneConfig:
    """The fine-tuning recipe (defaults: spec §3; the toy demo uses lr ``TOY_LR``).

    lr: base learning rate of the inherited weights; ``new_lr_mult`` multiplies it for the new parameters
    (``group_mults`` sets single groups: inherited, fast_weights, locality, affine). Warm-up is linear over
    ``warmup_steps``, then constant. ``grad_clip`` 0 disables clipping. ``ema``: decay of an EMA copy saved as
    ``transformer_ema/`` (off by default). ``timestep_sampling``: σ = sigmoid(N(logit_mean, logit_std)) or U(0, 1),
    then the model scheduler's shift. ``distill_weight``/``distill_only``: teacher-velocity distillation (needs
    ``teacher``). ``snapshot_steps``: also save ``transformer-<step>/`` at these steps (for evaluation).
    ``resume``: ``"auto"`` (newest ``checkpoint-<step>`` in ``output_dir``) or a checkpoint folder.
    ``guidance``: the embedded guidance value passed to FLUX-family students.
    """

    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-5
    new_lr_mult: float = 10.0
    group_mults: dict[str, float] | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema: float | None = None
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    distill_weight: float = 0.0
    distill_only: bool = False
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    log_every: int = 50
    save_every: int = 1000
    snapshot_steps: tuple[int, ...] = ()
    output_dir: str = "t5_run"
    resume: str | None = None
    guidance: float = 1.0
    device: str = "auto"
    save_final: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"need steps >= 0 and batch_size >= 1, got {self.steps} and {self.batch_size}")
        if not self.lr > 0 or self.new_lr_mult < 0:
            raise ValueError(f"need lr > 0 and new_lr_mult >= 0, got {self.lr} and {self.new_lr_mult}")
        if self.timestep_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"timestep_sampling must be 'logit_normal' or 'uniform', got {self.timestep_sampling!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.distill_only and self.distill_weight == 0:
            raise ValueError("distill_only=True needs distill_weight > 0 (the only remaining loss term)")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be a decay in (0, 1) or None, got {self.ema}")
        if self.save_every < 1 or self.log_every < 1:
            raise ValueError("save_every and log_every must be >= 1")
        self.snapshot_steps = tuple(sorted({int(s) for s in self.snapshot_steps}))
        self.betas = (float(self.betas[0]), float(self.betas[1]))


@dataclass
class FinetuneResult:
    """What a run did: per-step losses (global batch mean), timing, and where it wrote."""

    steps: int
    losses: list[float]
    final_loss: float
    seconds_per_step: float
    output_dir: Path
    transformer_dir: Path | None
    world_size: int
    snapshots: dict[int, Path] = field(default_factory=dict)
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "final_loss": self.final_loss, "seconds_per_step": self.seconds_per_step,
                "output_dir": str(self.output_dir), "world_size": self.world_size,
                "transformer_dir": None if self.transformer_dir is None else str(self.transformer_dir),
                "snapshots": {str(k): str(v) for k, v in self.snapshots.items()}, "resumed_from": self.resumed_from}


# --- data ----------------------------------------------------------------------------------------------------------
class TrainingData:
    """A source of training rows. Row ``i`` of the stream is a pure function of ``i``; step s uses rows
    ``s·B … s·B + B − 1`` (B = global batch) and rank r of W takes every W-th of them from r."""

    adapter: FlowModel | None = None

    def load(self, indices: Sequence[int], adapter: FlowModel) -> tuple[Tensor, Conditioning]:
        """Clean latents in the adapter's layout and their conditioning, for ``indices``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": type(self).__name__}


class TensorData(TrainingData):
    """Fixed latents and conditioning (row i → i mod n): tests, and self-generated base-model samples."""

    def __init__(self, latents: Tensor, cond: Conditioning, adapter: FlowModel | None = None):
        if latents.shape[0] != len(cond):
            raise ValueError(f"{latents.shape[0]} latent rows but {len(cond)} conditioning rows")
        self.latents, self.cond, self.adapter = latents, cond, adapter

    def load(self, indices, adapter):
        rows = torch.as_tensor([i % self.latents.shape[0] for i in indices], dtype=torch.long)
        return self.latents[rows].to(adapter.device), self.cond[rows.tolist()].to(adapter.device)


class ToySceneData(TrainingData):
    """Fresh toy scenes (``flowcore.toy.SceneSampler``) with captions in the toy training mix (70% full, 20%
    partial, 10% empty), rendered at the toy size and encoded by the adapter (pixel VAE, toy text encoder)."""

    def __init__(self, adapter: FlowModel | None = None, *, seed: int = 0, split: str = "train",
                 captions: str = "mix"):
        from t5_linearize import toy

        self.sampler = toy.scene_sampler(seed=seed, split=split, captions=captions)
        self.adapter, self.seed, self.split, self.captions = adapter, seed, split, captions

    def load(self, indices, adapter):
        images, captions, _ = self.sampler.batch(list(indices))
        latents = adapter.encode_image(images.float().to(adapter.device))
        return latents, adapter.encode_prompt(list(captions))

    def describe(self):
        return {"kind": "toy-scenes", "seed": self.seed, "split": self.split, "captions": self.captions}


class ToyEditData(TrainingData):
    """Toy instruction edits for Kontext-family students (``flowcore.toy.sample_training_edit``: the seven kinds plus
    5 % identity pairs): the target image is the clean latent, the instruction the prompt, and the source image's
    latent goes in ``cond.extra["reference"]``, which the training step passes on as ``reference=`` (the Kontext
    reference tokens)."""

    def __init__(self, adapter: FlowModel | None = None, *, seed: int = 0, split: str = "train"):
        self.adapter, self.seed, self.split = adapter, seed, split

    def load(self, indices, adapter):
        from flowcore.toy.edits import sample_training_edit

        pairs = [sample_training_edit(self.seed, int(i), self.split) for i in indices]
        target = torch.stack([p.target_image for p in pairs]).float().to(adapter.device)
        source = torch.stack([p.source_image for p in pairs]).float().to(adapter.device)
        cond = adapter.encode_prompt([p.instruction for p in pairs])
        cond.extra = {**cond.extra, "reference": adapter.encode_image(source)}
        return adapter.encode_image(target), cond

    def describe(self):
        return {"kind": "toy-edits", "seed": self.seed, "split": self.split}


class ImageFolderData(TrainingData):
    """A folder with ``metadata.jsonl`` (``file_name``, ``text`` per line); images are resized (shorter side) and
    centre-cropped to ``resolution``. ``cache_latents`` keeps each row's latents and conditioning after the first
    encoding."""

    def __init__(self, folder: str | os.PathLike, resolution: int, adapter: FlowModel | None = None, *,
                 cache_latents: bool = False):
        self.folder = Path(folder)
        meta = self.folder / "metadata.jsonl"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta} is missing: the folder needs metadata.jsonl with lines "
                                    '{"file_name": "a.png", "text": "a caption"}')
        self.rows = []
        for number, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "file_name" not in record or "text" not in record:
                raise ValueError(f"{meta}:{number} needs 'file_name' and 'text', got {sorted(record)}")
            self.rows.append((self.folder / record["file_name"], str(record["text"])))
        if not self.rows:
            raise ValueError(f"{meta} lists no images")
        self.resolution, self.adapter, self.cache_latents = int(resolution), adapter, cache_latents
        self._cache: dict[int, tuple[Tensor, Conditioning]] = {}

    def _image(self, path: Path) -> Tensor:
        from flowcore.images import to_tensor

        img = to_tensor(path)
        _, _, h, w = img.shape
        scale = self.resolution / min(h, w)
        size = (max(self.resolution, round(h * scale)), max(self.resolution, round(w * scale)))
        img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
        return img[..., top : top + self.resolution, left : left + self.resolution].clamp(0, 1)

    def load(self, indices, adapter):
        latents, conds = [], []
        for i in indices:
            key = i % len(self.rows)
            if key not in self._cache:
                path, text = self.rows[key]
                item = (adapter.encode_image(self._image(path).to(adapter.device)), adapter.encode_prompt([text]))
                if not self.cache_latents:
                    latents.append(item[0])
                    conds.append(item[1])
                    continue
                self._cache[key] = item
            latents.append(self._cache[key][0])
            conds.append(self._cache[key][1])
        return torch.cat(latents), Conditioning.cat(conds)

    def describe(self):
        return {"kind": "image-folder", "folder": str(self.folder), "rows": len(self.rows),
                "resolution": self.resolution}


@torch.no_grad()
def self_generated_data(adapter: FlowModel, prompts: Sequence[str], *, height: int, width: int, steps: int = 28,
                        guidance: float | None = None, seed: int = 0, batch_size: int = 4,
                        progress: bool = False) -> TensorData:
    """Samples of the base model itself (flowcore's sampler, the model's schedule and guidance kind) as training
    rows: the "self-generated" data of spec §3. Prompt i starts from noise seeded ``seed + i // batch_size``."""
    from flowcore.guidance import guided
    from flowcore.sampling import sample

    prompts = list(prompts)
    if not prompts:
        raise ValueError("self_generated_data needs at least one prompt")
    cond = adapter.encode_prompt(prompts)
    uncond = adapter.encode_prompt([""] * len(prompts)) if adapter.guidance_kind == "cfg" else None
    schedule = adapter.schedule(steps, height=height, width=width)
    latents = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        rows = list(range(start, min(start + batch_size, len(prompts))))
        generator = torch.Generator("cpu").manual_seed(seed + b)
        x = adapter.prepare_noise(len(rows), height, width, generator=generator)
        if adapter.guidance_kind == "cfg":
            predictor = guided(adapter, cond[rows], uncond=uncond[rows], scale=5.0 if guidance is None else guidance)
        elif adapter.guidance_kind == "embedded":
            predictor = guided(adapter, cond[rows], guidance=3.5 if guidance is None else guidance)
        else:
            predictor = guided(adapter, cond[rows])
        latents.append(sample(predictor, x, schedule, progress=progress).float())
    return TensorData(torch.cat(latents), cond, adapter)


# --- timesteps -------------------------------------------------------------------------------------------------------
def sample_sigmas(n: int, config: FinetuneConfig, generator: torch.Generator, adapter: FlowModel | None = None,
                  image_seq_len: int | None = None) -> Tensor:
    """σ ∈ (0, 1) for n rows: logit-normal or uniform, mapped through the scheduler's shift (static ``shift`` or
    the dynamic ``mu`` of FLUX-style schedulers at ``image_seq_len``). float64, on the CPU."""
    if config.timestep_sampling == "logit_normal":
        sigma = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(n, generator=generator,
                                                                                dtype=torch.float64))
    else:
        sigma = torch.rand(n, generator=generator, dtype=torch.float64)
    sched = getattr(adapter, "scheduler", None)
    cfg = getattr(sched, "config", None)
    if cfg is None:
        return sigma
    if cfg.get("use_dynamic_shifting", False) and image_seq_len is not None:
        from flowcore.schedules import calculate_shift

        mu = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))
    shift = float(cfg.get("shift", 1.0) or 1.0)
    return shift * sigma / (1 + (shift - 1) * sigma)


# --- the loop --------------------------------------------------------------------------------------------------------
class _DenoiserProxy:
    """Calls go through the (possibly DDP-wrapped) prepared model; attributes come from the bare module."""

    def __init__(self, wrapped: Any, module: nn.Module):
        self._wrapped, self._module = wrapped, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _view(adapter: FlowModel, denoiser: Any) -> FlowModel:
    view = copy.copy(adapter)
    view.denoiser = denoiser
    return view


def _make_accelerator(config: FinetuneConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, config.mixed_precision) and \
            int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)  # a previous in-process run used another precision
    return Accelerator(mixed_precision=config.mixed_precision, cpu=config.device == "cpu")


def _shares_storage(a: nn.Module, b: nn.Module) -> bool:
    pointers = {p.data_ptr() for p in a.parameters()}
    return any(p.data_ptr() in pointers for p in b.parameters())


def _latest_checkpoint(folder: Path) -> tuple[int, Path] | None:
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := CHECKPOINT_PATTERN.match(p.name))
             and (p / "trainer_state.json").is_file()]
    return max(found) if found else None


def finetune(model: nn.Module, data: TrainingData, config: FinetuneConfig, *, teacher: nn.Module | None = None,
             adapter: FlowModel | None = None, accelerator: Any = None) -> FinetuneResult:
    """Fine-tune ``model`` (linearized, or unconverted for the softmax baseline) on ``data``.

    ``adapter``: the flowcore adapter of the base model (default ``data.adapter``); its denoiser is replaced by
    ``model`` for the student calls. ``teacher``: the frozen unconverted base transformer (distillation); it must
    not share tensors with ``model`` (``linearize`` shares them unless ``copy=True``). Writes, under
    ``config.output_dir``: ``checkpoint-<step>/`` (accelerate state), ``train_log.jsonl`` (one line per step),
    ``transformer/`` (+ ``transformer-<step>/`` snapshots, ``transformer_ema/``) and ``t5_train.json``.
    """
    adapter = adapter or data.adapter
    if adapter is None:
        raise ValueError("finetune needs the flowcore adapter of the base model (adapter=, or data.adapter)")
    if config.distill_weight > 0 and teacher is None:
        raise ValueError("distill_weight > 0 needs teacher= (the frozen unconverted base transformer)")
    if teacher is not None and _shares_storage(model, teacher):
        raise ValueError("the teacher shares weight tensors with the student (linearize() does not copy): pass a "
                         "separate copy, e.g. linearize(copy.deepcopy(base)) or linearize(base, copy=True)")
    finished = finished_run(config) if config.resume == "auto" else None
    if finished is not None:
        _load_weights(model, finished.transformer_dir)
        return finished
    accelerator = accelerator or _make_accelerator(config)
    world, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    out_dir = Path(config.output_dir)
    _prepare_model(model, config)
    groups = param_groups(model, config.lr, new_lr_mult=config.new_lr_mult, group_mults=config.group_mults,
                          weight_decay=config.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    warmup = max(config.warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by hand: accelerate would step it W times
    ema = _Ema(model, config.ema) if config.ema else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    student = _view(adapter, _DenoiserProxy(wrapped, model))
    teacher_view = None
    if teacher is not None:
        teacher.requires_grad_(False).eval().to(accelerator.device)
        teacher_view = _view(adapter, teacher)
    log = _TrainLog(out_dir / "train_log.jsonl", accelerator.is_main_process)
    start = _maybe_resume(accelerator, config, out_dir, log)
    loop = _Loop(config, data, student, teacher_view, model, wrapped, optimizer, scheduler, accelerator, ema, log,
                 rank, world)
    snapshots = loop.run(start, out_dir)
    for step in config.snapshot_steps:  # snapshots written before a resume
        folder = out_dir / f"transformer-{step}"
        if step not in snapshots and step <= config.steps and (folder / "config.json").is_file():
            snapshots[step] = folder
    transformer_dir = None
    if config.save_final and accelerator.is_main_process:
        transformer_dir = _save_model(accelerator.unwrap_model(wrapped), out_dir / "transformer")
        if ema is not None:
            _save_model(ema.copy_into(copy.deepcopy(accelerator.unwrap_model(wrapped))), out_dir / "transformer_ema")
    accelerator.wait_for_everyone()
    losses = log.losses()
    tail = losses[-200:]
    result = FinetuneResult(
        steps=config.steps, losses=losses, final_loss=float(sum(tail) / len(tail)) if tail else float("nan"),
        seconds_per_step=log.mean_seconds(), output_dir=out_dir, transformer_dir=transformer_dir, world_size=world,
        snapshots=snapshots, resumed_from=start or None,
    )
    if accelerator.is_main_process:
        _write_summary(out_dir, model, data, config, result)
    return result


# FinetuneConfig fields that only say where and how verbosely a run went: a finished run is reused across them
_RUN_PLACE_FIELDS = ("output_dir", "resume", "device", "progress", "log_every", "save_every")


def finished_run(config: FinetuneConfig) -> FinetuneResult | None:
    """The result of a run already finished under ``config.output_dir`` with the same recipe, else None.

    With ``resume="auto"`` :func:`finetune` returns it instead of training again, so a protocol whose runs were
    trained elsewhere (e.g. on a GPU machine, their checkpoints left behind) goes on from the saved transformers.
    Finished means: ``t5_train.json`` with this recipe (every config field but where/how verbosely it ran), its
    ``train_log.jsonl`` covering every step, ``transformer/`` and each requested snapshot.
    """
    out_dir = Path(config.output_dir)
    record_path, log_path = out_dir / "t5_train.json", out_dir / "train_log.jsonl"
    if not (record_path.is_file() and log_path.is_file() and (out_dir / "transformer" / "config.json").is_file()):
        return None
    record = json.loads(record_path.read_text())
    recorded = record.get("config", {})
    wanted = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()}
    if any(recorded.get(k) != v for k, v in wanted.items() if k not in _RUN_PLACE_FIELDS):
        return None
    snapshots = {step: out_dir / f"transformer-{step}" for step in config.snapshot_steps if step <= config.steps}
    if any(not (folder / "config.json").is_file() for folder in snapshots.values()):
        return None
    log = _TrainLog(log_path, active=False)
    log.load_until(config.steps)
    if len(log.records) != config.steps:
        return None
    losses = log.losses()
    tail = losses[-200:]
    return FinetuneResult(
        steps=config.steps, losses=losses, final_loss=float(sum(tail) / len(tail)) if tail else float("nan"),
        seconds_per_step=log.mean_seconds(), output_dir=out_dir, transformer_dir=out_dir / "transformer",
        world_size=int(record.get("result", {}).get("world_size", 1)), snapshots=snapshots, resumed_from=config.steps,
    )


def _load_weights(model: nn.Module, folder: Path) -> None:
    """Load a ``save_pretrained`` folder's safetensors into ``model`` in place (strict: same architecture)."""
    from safetensors.torch import load_file

    state: dict[str, Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
    model.load_state_dict(state, strict=True)


def _prepare_model(model: nn.Module, config: FinetuneConfig) -> None:
    """All parameters trainable except the modules that never reach the loss; optional checkpointing."""
    model.requires_grad_(True)
    for name in frozen_modules(model):
        model.get_submodule(name).requires_grad_(False)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()


class _Ema:
    """Exponential moving average of the trainable parameters (``state_dict`` for accelerate checkpoints)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().clone().float() for n in self.names}
        self.model = model

    @torch.no_grad()
    def update(self) -> None:
        params = dict(self.model.named_parameters())
        for n in self.names:
            self.shadow[n].lerp_(params[n].detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_into(self, model: nn.Module) -> nn.Module:
        params = dict(model.named_parameters())
        for n in self.names:
            params[n].copy_(self.shadow[n].to(params[n].dtype))
        return model

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for n in self.names:
            self.shadow[n].copy_(state[n])


class _TrainLog:
    """Per-step records, rewritten atomically as ``train_log.jsonl`` (main process only)."""

    def __init__(self, path: Path, active: bool):
        self.path, self.active, self.records = path, active, []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records]

    def mean_seconds(self) -> float:
        """Mean s/step over every logged step, resumed parts included (nan before the first step)."""
        seconds = [r["seconds"] for r in self.records if "seconds" in r]
        return sum(seconds) / len(seconds) if seconds else float("nan")

    def load_until(self, step: int) -> None:
        if self.path.is_file():
            lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in lines if r["step"] < step]

    def flush(self) -> None:
        if not self.active:
            return
        from flowcore.io import atomic_write, to_jsonable

        atomic_write(self.path, "".join(json.dumps(to_jsonable(r)) + "\n" for r in self.records))


def _maybe_resume(accelerator: Any, config: FinetuneConfig, out_dir: Path, log: _TrainLog) -> int:
    if not config.resume:
        return 0
    if config.resume == "auto":
        found = _latest_checkpoint(out_dir)
        if found is None:
            return 0
        step, folder = found
    else:
        folder = Path(config.resume)
        state = folder / "trainer_state.json"
        if not state.is_file():
            raise FileNotFoundError(f"{folder} is not a t5-linearize checkpoint (no trainer_state.json)")
        step = int(json.loads(state.read_text())["step"])
    accelerator.load_state(str(folder))
    log.load_until(step)
    return step


class _Loop:
    """One optimisation step per global batch; all ranks draw the same noise/σ and take their own rows."""

    def __init__(self, config, data, student, teacher, model, wrapped, optimizer, scheduler, accelerator, ema, log,
                 rank, world):
        self.config, self.data, self.student, self.teacher = config, data, student, teacher
        self.model, self.wrapped, self.optimizer, self.scheduler = model, wrapped, optimizer, scheduler
        self.accelerator, self.ema, self.log, self.rank, self.world = accelerator, ema, log, rank, world

    def run(self, start: int, out_dir: Path) -> dict[int, Path]:
        from flowcore.cli import progress

        cfg, acc = self.config, self.accelerator
        snapshots: dict[int, Path] = {}
        steps = range(start, cfg.steps)
        bar = progress(steps, desc="finetune", disable=not (cfg.progress and acc.is_main_process))
        for step in bar:
            tick = time.perf_counter()
            record = self.step(step)
            record["seconds"] = time.perf_counter() - tick
            self.log.add(record)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                self.log.flush()
            if done in cfg.snapshot_steps and acc.is_main_process:
                snapshots[done] = _save_model(acc.unwrap_model(self.wrapped), out_dir / f"transformer-{done}")
            if done % cfg.save_every == 0 or done == cfg.steps:
                self.checkpoint(done, out_dir)
        return snapshots

    def step(self, step: int) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        rows = list(range(step * cfg.batch_size, (step + 1) * cfg.batch_size))[self.rank :: self.world]
        x0, cond = self.data.load(rows, self.student)
        x0 = x0.to(acc.device, torch.float32)
        generator = torch.Generator().manual_seed(_step_seed(cfg.seed, step))
        noise = torch.randn((cfg.batch_size, *x0.shape[1:]), generator=generator)[self.rank :: self.world]
        seq_len = x0.shape[1] if x0.ndim == 3 else None
        sigma = sample_sigmas(cfg.batch_size, cfg, generator, self.student, seq_len)[self.rank :: self.world]
        noise, sigma = noise.to(acc.device), sigma.to(acc.device, torch.float32)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        xt = (1 - s) * x0 + s * noise
        timestep = sigma * _train_timesteps(self.student)
        kwargs = {"guidance": cfg.guidance} if self.student.guidance_kind == "embedded" else {}
        if "reference" in cond.extra:  # Kontext edits (ToyEditData): the source latent as reference tokens
            kwargs["reference"] = cond.extra["reference"].to(acc.device)
        with acc.autocast():
            pred = self.student.predict(xt, timestep, cond, **kwargs).float()
        flow = F.mse_loss(pred, noise - x0)
        loss = flow if not cfg.distill_only else pred.new_zeros(())
        distill = None
        if self.teacher is not None and cfg.distill_weight > 0:
            with torch.no_grad(), acc.autocast():
                target = self.teacher.predict(xt, timestep, cond, **kwargs).float()
            distill = F.mse_loss(pred, target)
            loss = loss + cfg.distill_weight * distill
        acc.backward(loss)
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        mean_loss = acc.reduce(loss.detach(), reduction="mean")
        record = {"step": step, "loss": float(mean_loss), "flow_loss": float(acc.reduce(flow.detach(), "mean")),
                  "lr": float(self.scheduler.get_last_lr()[0])}
        if distill is not None:
            record["distill_loss"] = float(acc.reduce(distill.detach(), "mean"))
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"the loss became {record['loss']} at step {step}; lower the lr or check data")
        return record

    def checkpoint(self, step: int, out_dir: Path) -> None:
        from flowcore.io import write_json

        folder = out_dir / f"checkpoint-{step}"
        self.accelerator.save_state(str(folder))
        if self.accelerator.is_main_process:
            write_json(folder / "trainer_state.json", {"step": step, "seed": self.config.seed})
        self.accelerator.wait_for_everyone()


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7_919 + 12_345) % (2**63 - 1)


def _train_timesteps(adapter: FlowModel) -> float:
    cfg = getattr(getattr(adapter, "scheduler", None), "config", None)
    return float(cfg.get("num_train_timesteps", 1000)) if cfg is not None else 1000.0


def _save_model(model: nn.Module, folder: Path) -> Path:
    """``save_pretrained`` into a temporary sibling folder, then rename (an interrupted save leaves no half folder)."""
    import shutil

    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _write_summary(out_dir: Path, model: nn.Module, data: TrainingData, config: FinetuneConfig,
                   result: FinetuneResult) -> None:
    from flowcore.io import package_versions, write_json
    from t5_linearize.models import count_new_parameters

    record = {
        "model_class": type(model).__name__, "linearized": is_linearized(model),
        "ttt_config": model.linearize_config.to_dict() if is_linearized(model) else None,
        "new_parameters": count_new_parameters(model), "data": data.describe(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "result": result.to_dict(),
        "versions": package_versions("t5-linearize", "flowcore", "flowkernels", "torch", "diffusers", "accelerate"),
    }
    write_json(out_dir / "t5_train.json", record)
