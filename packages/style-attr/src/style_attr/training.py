"""Training the attribute network (§2.4) and the toy-sd3 edge ControlNet, under ``accelerate``.

One optimisation step on a global batch of B records:

1. ``y_k = E(Y)``, ``y_0 = E(R0)`` (cached fp16 latents when the dataset has them); ``e = encode(caption)``, with
   prompt dropout (p = 0.5) replacing the caption by "".
2. Per record, noise ``n`` and time come from a generator seeded by ``(seed, step, global record position)``, so
   splitting the batch over processes does not change the maths: VP ``t ~ U{0..999}``, flow ``σ = sigmoid(N(0,1))``.
3. ``z_k = a·y_k + s·n``; the regulariser branch ``z_0 = a·y_0 + s·n`` (``"paired"``) or ``z_k`` (``"shared"``).
4. One call of 2B rows ``[z_k | z_0]`` with tokens ``[T(λ) | T(0)]`` and text ``[e | e]`` (B rows at β = 0),
   then ``L = L_base + β·L_reg`` (:mod:`style_attr.losses`), AdamW on the new layers only.

Multi-process: ``torchrun --nproc_per_node N -m style_attr train ...`` (CPU: gloo) or ``accelerate launch
--multi_gpu``; each process takes its contiguous share of the global batch and DDP averages the gradients. Only the
main process writes (``train_log.jsonl``, checkpoints, the final network).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowcore.adapters import Conditioning, ControlInput
from flowcore.seeding import seeded_init
from style_attr.dataset import StyleDataset
from style_attr.losses import LossTerms, attribute_loss
from style_attr.network import AttributeControlNet, TokenGroup, host_of

__all__ = ["ControlNetTrainConfig", "TrainConfig", "train_attribute_net", "train_controlnet"]

TRAIN_LOG = "train_log.jsonl"
STATE_NAME = "training_state.pt"


@dataclass
class TrainConfig:
    """Settings of ``style-attr train`` (§3 defaults; ``lr=None``: 5e-4 for toys, 1e-4 for real models)."""

    data: str
    output_dir: str
    model: str = "toy-unet"
    controlnet: str | None = None
    steps: int = 5000
    beta: float = 5.0
    reg_weighting: str = "elementwise"
    reg_input: str = "paired"
    anchor_reference: bool | None = None  # None: on with paired inputs (see losses.attribute_loss)
    reg_steps: int | None = None
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int = 100
    batch_size: int = 32
    grad_accum: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    prompt_dropout: float = 0.5
    baseline: str = "none"
    save_every: int = 1000
    log_every: int = 10
    resume: bool = False
    seed: int = 0
    name: str = "attr"
    tokens_per_param: int = 4
    hidden_dim: int | None = None
    device: str = "auto"
    random_init: bool = False
    preset: str = "full"
    save_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}")
        if self.beta < 0 or not math.isfinite(self.beta):
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.reg_weighting not in ("elementwise", "global"):
            raise ValueError(f"reg_weighting must be 'elementwise' or 'global', got {self.reg_weighting!r}")
        if self.reg_input not in ("paired", "shared"):
            raise ValueError(f"reg_input must be 'paired' or 'shared', got {self.reg_input!r}")
        if self.anchor_reference is None:
            self.anchor_reference = self.reg_input == "paired"
        if self.anchor_reference and self.reg_input != "paired":
            raise ValueError("anchor_reference needs reg_input='paired' (the λ = 0 rows' target is defined by y_0); "
                             "drop --anchor-reference or use --reg-input paired")
        if self.baseline not in ("none", "prompt-level", "prompt-text"):
            raise ValueError(f"baseline must be none, prompt-level or prompt-text, got {self.baseline!r}")
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps must be >= 0, batch_size and grad_accum >= 1")
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must lie in [0, 1], got {self.prompt_dropout}")


# --- per-sample randomness ----------------------------------------------------------------------------------------------
def sample_generator(seed: int, step: int, position: int, stream: int = 0) -> torch.Generator:
    """The CPU generator of one record of one step (independent of how the batch is split over processes)."""
    state = np.random.SeedSequence([int(seed), int(step), int(position), int(stream)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def batch_indices(num_records: int, seed: int, step: int, micro: int, global_batch: int) -> np.ndarray:
    """The global batch of records at ``(step, micro)``: a seeded draw, without replacement when possible."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 17, int(step), int(micro)]))
    return rng.choice(num_records, size=global_batch, replace=num_records < global_batch)


@dataclass
class NoiseDraw:
    noise: Tensor
    timestep: Tensor   # network time input (B,)
    a: Tensor
    s: Tensor
    a_next: Tensor
    s_next: Tensor
    drop: Tensor       # (B,) bool: prompt dropped


def draw_noise(model: Any, shape: tuple[int, ...], positions: list[int], *, seed: int, step: int,
               prompt_dropout: float, reg_steps: int) -> NoiseDraw:
    """Noise, time and dropout per record (rows of ``shape``) from :func:`sample_generator`."""
    noises, times, drops = [], [], []
    for pos in positions:
        g = sample_generator(seed, step, pos)
        u = torch.rand(2, generator=g)
        noises.append(torch.randn(shape[1:], generator=g))
        drops.append(bool(u[1] < prompt_dropout))
        if model.family == "vp":
            times.append(int(torch.randint(0, _num_train(model), (1,), generator=g)))
        else:
            times.append(float(torch.sigmoid(torch.randn(1, generator=g))))
    noise = torch.stack(noises)
    drop = torch.tensor(drops)
    if model.family == "vp":
        acp = model.scheduler.alphas_cumprod.to(torch.float32)
        t = torch.tensor(times, dtype=torch.long)
        t_next = (t - _num_train(model) // reg_steps).clamp(min=0)
        a, s = acp[t].sqrt(), (1 - acp[t]).sqrt()
        a_next, s_next = acp[t_next].sqrt(), (1 - acp[t_next]).sqrt()
        return NoiseDraw(noise, t, a, s, a_next, s_next, drop)
    sigma = torch.tensor(times, dtype=torch.float32)
    sigma_next = (sigma - 1.0 / reg_steps).clamp(min=0.0)
    return NoiseDraw(noise, sigma * _num_train(model), 1 - sigma, sigma, 1 - sigma_next, sigma_next, drop)


def _num_train(model: Any) -> int:
    return int(getattr(model.scheduler.config, "num_train_timesteps", 1000))


# --- the module DDP wraps -----------------------------------------------------------------------------------------------
class AttributeObjective(nn.Module):
    """``forward(batch, step, positions) -> LossTerms``: one training step's loss for this process's records.

    Holds the attribute network (the only registered parameters, so DDP syncs just them); the base model is
    referenced. ``conditioner`` may be a :class:`~style_attr.baseline.PromptLevelBaseline` instead.
    """

    def __init__(self, model: Any, conditioner: nn.Module, config: TrainConfig):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.conditioner = conditioner
        self.config = config
        self.reg_steps = config.reg_steps or (50 if model.family == "vp" else 28)
        self._empty: Conditioning | None = None

    def encode(self, captions: list[str], drop: Tensor) -> Conditioning:
        prompts = ["" if d else c for c, d in zip(captions, drop.tolist())]
        return self.model.encode_prompt(prompts).to(self.model.device)

    def latents(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        if "latents_target" in batch:
            return batch["latents_target"].to(self.model.device), batch["latents_reference"].to(self.model.device)
        with torch.no_grad():
            return (self.model.encode_image(batch["target"].to(self.model.device)).float(),
                    self.model.encode_image(batch["reference"].to(self.model.device)).float())

    def forward(self, batch: dict[str, Any], step: int, positions: list[int]) -> LossTerms:  # type: ignore[override]
        model, cfg = self.model, self.config
        device = model.device
        y_k, y_0 = self.latents(batch)
        draw = draw_noise(model, tuple(y_k.shape), positions, seed=cfg.seed, step=step,
                          prompt_dropout=cfg.prompt_dropout, reg_steps=self.reg_steps)
        noise = draw.noise.to(device)
        a, s = draw.a.to(device), draw.s.to(device)
        col = (-1, *([1] * (y_k.ndim - 1)))
        z_k = a.view(col) * y_k + s.view(col) * noise
        cond = self.encode(batch["captions"], draw.drop)
        lam = batch["lam"].to(device)
        edges = batch["edges"].to(device)
        t = draw.timestep.to(device)
        use_reg = cfg.beta > 0
        if use_reg:
            z_0 = z_k if cfg.reg_input == "shared" else a.view(col) * y_0 + s.view(col) * noise
            z = torch.cat([z_k, z_0])
            out = self.predict(z, torch.cat([t, t]), Conditioning.cat([cond, cond]),
                               torch.cat([edges, edges]), torch.cat([lam, torch.zeros_like(lam)]))
            o_k, o_0 = out.chunk(2)
            return attribute_loss(o_k, y_k, z_k, noise, a, s, kind=model.prediction, family=model.family,
                                  beta=cfg.beta, o_0=o_0, z_0=z_0, y_0=y_0, a_next=draw.a_next.to(device),
                                  s_next=draw.s_next.to(device), weighting=cfg.reg_weighting,
                                  anchor_reference=cfg.anchor_reference)
        o_k = self.predict(z_k, t, cond, edges, lam)
        return attribute_loss(o_k, y_k, z_k, noise, a, s, kind=model.prediction, family=model.family, beta=0.0)

    def predict(self, z: Tensor, t: Tensor, cond: Conditioning, edges: Tensor, lam: Tensor) -> Tensor:
        """The frozen base plus C_A for every row (ControlNet text = the row's text)."""
        conditioner = self.conditioner
        if isinstance(conditioner, AttributeControlNet):
            tokens = conditioner.embedder(lam)
            host = host_of(conditioner.controlnet)
            assert host is not None
            with host.slot.fill([TokenGroup(conditioner.name, None, tokens)]):
                return self.model.predict(z, t, cond, control=ControlInput(image=edges))
        return conditioner.predict_rows(self.model, z, t, cond, edges, lam)  # type: ignore[operator]


# --- the loop -----------------------------------------------------------------------------------------------------------
def _accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator

    from flowcore.cli import resolve_device

    device = resolve_device(config.device)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=config.mixed_precision,
                       gradient_accumulation_steps=config.grad_accum)


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((p for p in out.glob("checkpoint-*") if (p / STATE_NAME).is_file()),
                   key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def _default_lr(model: Any) -> float:
    return 5e-4 if getattr(model, "is_toy", False) else 1e-4


def build_conditioner(model: Any, dataset: StyleDataset, config: TrainConfig) -> nn.Module:
    """The network to train: an attribute network on ``model.controlnet`` or the prompt-level baseline."""
    if model.controlnet is None:
        raise ValueError("training needs the base model's edge ControlNet (model.controlnet)")
    hidden = config.hidden_dim or (64 if getattr(model, "is_toy", False) else 256)
    if config.baseline != "none":
        from style_attr.baseline import PromptLevelBaseline

        if config.baseline == "prompt-text":
            raise NotImplementedError("baseline='prompt-text' edits captions for real models; use 'prompt-level'")
        return PromptLevelBaseline.create(model.controlnet, dataset.spec, seed=config.seed)
    net = AttributeControlNet.attach(model.controlnet, dataset.spec, name=config.name,
                                     tokens_per_param=config.tokens_per_param, hidden_dim=hidden, seed=config.seed)
    net.freeze_base()
    return net


def train_attribute_net(config: TrainConfig, *, model: Any = None, dataset: StyleDataset | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """Train an attribute network (or the prompt-level baseline) and save it to ``config.output_dir``.

    ``model``: a ready FlowModel with its ControlNet (default: loaded from ``config.model``/``config.controlnet``).
    Returns a summary (final losses, steps, wall time, output path).
    """
    from flowcore.io import atomic_write
    from style_attr.models import load_base

    start_time = time.perf_counter()
    accelerator = _accelerator(config)
    dataset = dataset or StyleDataset(config.data)
    if model is None:
        model = load_base(config.model, controlnet=config.controlnet, device=accelerator.device,
                          random_init=config.random_init, preset=config.preset)
    model.denoiser.requires_grad_(False)
    if config.gradient_checkpointing:
        # the denoiser only: the ControlNet's λ-sites read the token slot, which is empty again when a checkpointed
        # block recomputes during backward
        model.denoiser.enable_gradient_checkpointing()
    conditioner = build_conditioner(model, dataset, config)
    conditioner.to(accelerator.device)
    objective = AttributeObjective(model, conditioner, config)
    params = [p for p in conditioner.parameters() if p.requires_grad]
    lr = config.lr if config.lr is not None else _default_lr(model)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    warmup = max(1, config.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / warmup))
    out = Path(config.output_dir)
    start_step = 0
    if config.resume:
        ckpt = _latest_checkpoint(out)
        if ckpt is not None:
            state = torch.load(ckpt / STATE_NAME, map_location="cpu", weights_only=False)
            conditioner.load_state_dict(state["conditioner"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_step = int(state["step"])
    objective, optimizer = accelerator.prepare(objective, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} does not split over {world} processes")
    local = config.batch_size // world
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []
    if main and config.resume and (out / TRAIN_LOG).is_file():
        log_lines = [ln for ln in (out / TRAIN_LOG).read_text().splitlines()
                     if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
    # a resumed run that has no step left (saving a stopped run at its checkpoint) reports the logged losses
    last: dict[str, float] = {k: v for k, v in json.loads(log_lines[-1]).items()
                              if k.startswith("loss")} if log_lines else {}
    steps = range(start_step, config.steps)
    if progress and main:
        from flowcore.cli import progress as bar

        steps = bar(steps, desc="training", unit="step", initial=start_step, total=config.steps)
    for step in steps:
        objective.train()
        totals = {"loss": 0.0, "loss_base": 0.0, "loss_reg": 0.0}
        for micro in range(config.grad_accum):
            gidx = batch_indices(len(dataset), config.seed, step, micro, config.batch_size)
            positions = list(range(rank * local, (rank + 1) * local))
            batch = dataset.batch(gidx[positions[0]:positions[-1] + 1])
            with accelerator.accumulate(objective), accelerator.autocast():
                terms = objective(batch, step * config.grad_accum + micro, positions)
                accelerator.backward(terms.total)
                if accelerator.sync_gradients:
                    optimizer.step()
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in terms.to_dict().items():
                totals[k] += v / config.grad_accum
        last = totals
        done = step + 1
        if main and (done % config.log_every == 0 or done == config.steps):
            log_lines.append(json.dumps({"step": done, **totals, "lr": scheduler.get_last_lr()[0],
                                         "elapsed_s": round(time.perf_counter() - start_time, 3)}))
            atomic_write(out / TRAIN_LOG, "\n".join(log_lines) + "\n")
        if config.save_every and done % config.save_every == 0 and done < config.steps:
            accelerator.wait_for_everyone()
            if main:
                _save_checkpoint(out / f"checkpoint-{done}", conditioner, optimizer, scheduler, done, config, dataset)
    accelerator.wait_for_everyone()
    summary = {"steps": config.steps, "final": last, "output_dir": str(out), "processes": world,
               "wall_s": round(time.perf_counter() - start_time, 3), "lr": lr}
    if main:
        _save_final(out, conditioner, config, dataset, model)
        from flowcore.io import write_json

        write_json(out / "train_summary.json", {**summary, "config": asdict(config)})
    accelerator.wait_for_everyone()  # no rank exits while rank 0 still writes (an early exit can abort gloo)
    return summary


def _training_summary(config: TrainConfig, dataset: StyleDataset) -> dict[str, Any]:
    return {"beta": config.beta, "steps": config.steps, "regulariser": {"weighting": config.reg_weighting,
            "input": config.reg_input, "steps": config.reg_steps,
            "anchor_reference": config.anchor_reference}, "lr": config.lr, "batch_size": config.batch_size,
            "grad_accum": config.grad_accum, "resolution": dataset.manifest.get("resolution"),
            "prompt_dropout": config.prompt_dropout, "dataset_manifest_sha256": dataset.manifest_sha256,
            "seed": config.seed, "baseline": config.baseline}


def _save_checkpoint(path: Path, conditioner: nn.Module, optimizer: Any, scheduler: Any, step: int,
                     config: TrainConfig, dataset: StyleDataset) -> None:
    from flowcore.io import atomic_write

    path.mkdir(parents=True, exist_ok=True)
    opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
    state = {"conditioner": conditioner.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step}
    atomic_write(path / STATE_NAME, lambda tmp: torch.save(state, tmp))
    if isinstance(conditioner, AttributeControlNet):
        conditioner.training_summary = {**_training_summary(config, dataset), "steps_done": step}
        conditioner.save_pretrained(path)


def _save_final(out: Path, conditioner: nn.Module, config: TrainConfig, dataset: StyleDataset, model: Any) -> None:
    if isinstance(conditioner, AttributeControlNet):
        conditioner.training_summary = _training_summary(config, dataset)
        include_base = getattr(model, "model_id", "") == "toy-sd3"
        conditioner.save_pretrained(out, include_base=include_base, dtype=getattr(torch, config.save_dtype))
    else:
        conditioner.training_summary = _training_summary(config, dataset)  # type: ignore[assignment]
        conditioner.save_pretrained(out)  # type: ignore[operator]


# --- the toy-sd3 edge ControlNet ------------------------------------------------------------------------------------------
@dataclass
class ControlNetTrainConfig:
    """``style-attr train-controlnet`` (§6 step 1): 3000 steps, bs 32, lr 1e-4, prompt dropout 0.5."""

    output_dir: str
    model: str = "toy-sd3"
    data: str | None = None
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-4
    prompt_dropout: float = 0.5
    num_layers: int | None = None
    seed: int = 0
    device: str = "auto"
    random_init: bool = False
    preset: str = "full"
    log_every: int = 10
    train_scenes: int = 4096
    extra: dict[str, Any] = field(default_factory=dict)


def _toy_edge_batch(indices: np.ndarray, seed: int) -> tuple[Tensor, Tensor, list[str]]:
    from flowcore.toy import edge_map, render, sample_scene

    scenes = [sample_scene(seed, int(i), "train") for i in indices]
    images = render(scenes, 32)
    return images, edge_map(images), [s.caption("full") for s in scenes]


def train_controlnet(config: ControlNetTrainConfig, *, model: Any = None) -> dict[str, Any]:
    """Train an SD3 edge ControlNet (all its weights) on ``edge_map`` controls with the flow loss; only the main
    process writes ``output_dir`` (a diffusers ``SD3ControlNetModel`` folder plus ``train_log.jsonl``)."""
    from accelerate import Accelerator

    from flowcore.cli import resolve_device
    from flowcore.io import atomic_write, write_json
    from style_attr.models import load_base, sd3_controlnet_for

    start = time.perf_counter()
    device = resolve_device(config.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    if model is None:
        model = load_base(config.model, device=accelerator.device, random_init=config.random_init,
                          preset=config.preset, need_controlnet=False)
    if model.family != "rf":
        raise ValueError("train-controlnet builds SD3 ControlNets (toy-sd3, SD3.5-medium); toy-unet uses toyworld's")
    model.denoiser.requires_grad_(False)
    with seeded_init(config.seed):
        controlnet = sd3_controlnet_for(model.denoiser, config.num_layers).to(accelerator.device)
    controlnet.train()
    model.controlnet = controlnet

    class _Objective(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.controlnet = controlnet

        def forward(self, images: Tensor, edges: Tensor, captions: list[str], step: int,  # type: ignore[override]
                    positions: list[int]) -> Tensor:
            y = model.encode_image(images.to(model.device)).float()
            draw = draw_noise(model, tuple(y.shape), positions, seed=config.seed, step=step,
                              prompt_dropout=config.prompt_dropout, reg_steps=28)
            col = (-1, *([1] * (y.ndim - 1)))
            noise = draw.noise.to(model.device)
            z = draw.a.to(model.device).view(col) * y + draw.s.to(model.device).view(col) * noise
            prompts = ["" if d else c for c, d in zip(captions, draw.drop.tolist())]
            cond = model.encode_prompt(prompts).to(model.device)
            out = model.predict(z, draw.timestep.to(model.device), cond,
                                control=ControlInput(image=edges.to(model.device), controlnet=self.controlnet))
            return torch.mean((out.float() - (noise - y)) ** 2)

    objective = _Objective()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=config.lr, weight_decay=0.01)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} does not split over {world} processes")
    local = config.batch_size // world
    out = Path(config.output_dir)
    lines: list[str] = []
    loss_value = math.nan
    for step in range(config.steps):
        gidx = batch_indices(config.train_scenes, config.seed, step, 0, config.batch_size)
        positions = list(range(rank * local, (rank + 1) * local))
        images, edges, captions = _toy_edge_batch(gidx[positions[0]:positions[-1] + 1], config.seed)
        loss = objective(images, edges, captions, step, positions)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.detach().item()
        if accelerator.is_main_process and ((step + 1) % config.log_every == 0 or step + 1 == config.steps):
            lines.append(json.dumps({"step": step + 1, "loss": loss_value,
                                     "elapsed_s": round(time.perf_counter() - start, 3)}))
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / TRAIN_LOG, "\n".join(lines) + "\n")
    accelerator.wait_for_everyone()
    summary = {"steps": config.steps, "final_loss": loss_value, "output_dir": str(out),
               "wall_s": round(time.perf_counter() - start, 3)}
    if accelerator.is_main_process:
        accelerator.unwrap_model(objective).controlnet.save_pretrained(str(out), safe_serialization=True)
        write_json(out / "train_summary.json", {**summary, "config": asdict(config)})
    accelerator.wait_for_everyone()  # no rank exits while rank 0 still writes (an early exit can abort gloo)
    return summary


def env_world() -> tuple[int, int]:
    """``(rank, world size)`` from the torchrun environment (``(0, 1)`` outside it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
