"""Training of the toy models (toyworld.md §8.5, §8.6): recipes as data and one ``accelerate`` trainer.

``python -m flowcore.toy train --model NAME --output-dir DIR [--seed 0] [--device auto|cpu|cuda] [--resume auto]
[--time-budget 170m] [--steps N] [--preset full|ci] [--batch-size N] [--fit-budget] ...``

- Recipes (``RECIPES``) are frozen dataclasses with a ``version`` and a ``sha256`` of their fields.
- Shared settings: AdamW (β 0.9/0.99, wd 0.01), linear warm-up, cosine decay to 0.1·lr, clip 1.0, EMA
  (decay 0.9995, warm-up power 0.75), fp32. The EMA weights are what ships (``flowcore.toy.export``).
- Checkpoints: ``accelerator.save_state`` every ``checkpoint_every`` steps, on SIGTERM/SIGINT and when the time
  budget runs out, into ``DIR/checkpoints/step-NNNNNNN`` (written under a temporary name, then renamed); the two
  newest are kept; ``--resume auto`` continues from the newest. On CPU with a fixed thread count a resumed run
  is bit-identical to an uninterrupted one.
- ``--fit-budget`` (GPU runs): the cosine schedule follows wall-clock progress through the time budget, so it
  completes however fast the device turns out to be; ``--steps`` then only caps the run.
- The run folder holds ``run.json`` (recipe, command, sources), ``log.jsonl`` (one line per step: loss, lr,
  s/step) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcore.toy.models import (
    ip_adapter_parameters,
    load_ip_adapter_into,
    make_controlnet,
    make_flux,
    make_image_encoder,
    make_ip_adapter_state_dict,
    make_sd3,
    make_text_encoder,
    make_unet,
    seeded_init,
)

__all__ = [
    "RECIPES",
    "Recipe",
    "TrainOptions",
    "get_recipe",
    "load_run_module",
    "main",
    "parse_duration",
    "recipe_names",
    "train",
]

DEFAULT_RUNS_DIR = Path(os.environ.get("FLOWCORE_RUNS_DIR", "~/.cache/flowcore-runs")).expanduser()
CLIP_ENV = "FLOWCORE_TOY_CLIP"


# ==============================================================================================================
# recipes (§8.5)
# ==============================================================================================================
@dataclass(frozen=True)
class Recipe:
    """One training phase. ``batch`` is the image (T2I) batch; ``edit_batch`` Kontext's edit batch."""

    name: str
    version: int
    preset: str
    objective: str  # clip | flow | kontext | distill | vp | controlnet | ip_adapter
    bundle: str  # the toy whose weights this phase writes
    part: str  # the weights subfolder it writes (text_encoder+image_encoder, transformer, unet, ...)
    steps: int
    batch: int
    lr: float
    edit_batch: int = 0
    warmup: int = 500
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    final_lr_fraction: float = 0.1
    ema_decay: float = 0.9995
    ema_power: float = 0.75
    mix: tuple[tuple[str, float], ...] = (("scene", 1.0),)
    caption_mode: str = "mix"  # §8.5: 70% full, 20% partial, 10% empty
    edit_batch_prob: float = 0.6
    size_mix: tuple[tuple[int, float], ...] = ((32, 1.0),)
    instruction_drop_prob: float = 0.1
    guidance_range: tuple[float, float] = (1.0, 5.0)
    empty_prompt_prob: float = 0.5
    control_mix: tuple[tuple[str, float], ...] = (("full", 0.5), ("one", 0.3), ("blank", 0.2))
    ip_drop_mix: tuple[tuple[str, float], ...] = (("text", 0.05), ("image", 0.05), ("both", 0.05), ("none", 0.85))
    unk_prob: float = 0.02
    mlm_prob: float = 0.15
    mlm_weight: float = 0.5
    temperature_init: float = 0.07
    max_logit_scale: float = 100.0
    checkpoint_every: int = 500
    base: str | None = None  # the recipe this one was derived from by overrides (batch/steps)
    offset_noise: float = 0.0  # VP objectives: std of a per-(sample, channel) constant added to ε (0: the spec's loss)

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}" + ("" if self.preset == "full" else f"+{self.preset}")

    @property
    def id_stride(self) -> int:
        return max(self.batch, self.edit_batch)

    def to_dict(self) -> dict[str, Any]:
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        if not data["offset_noise"]:  # added later: recipes without it keep their recorded sha256
            del data["offset_noise"]
        return data

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def with_overrides(self, *, batch: int | None = None, steps: int | None = None) -> Recipe:
        """Another batch keeps lr and the number of samples (steps and warm-up scale by ``batch/new``)."""
        recipe = self
        if batch is not None and batch != self.batch:
            if batch < 1:
                raise ValueError(f"--batch-size must be >= 1, got {batch}")
            ratio = self.batch / batch
            recipe = dataclasses.replace(
                recipe, batch=batch, edit_batch=max(1, round(self.edit_batch * batch / self.batch)) if self.edit_batch else 0,
                steps=max(1, math.ceil(self.steps * ratio)), warmup=max(1, math.ceil(self.warmup * ratio)),
                checkpoint_every=self.checkpoint_every, base=self.base or self.tag,
            )
        if steps is not None and steps != recipe.steps:
            if steps < 1:
                raise ValueError(f"--steps must be >= 1, got {steps}")
            recipe = dataclasses.replace(recipe, steps=steps, base=recipe.base or self.tag)
        return recipe


# Offset noise for the toy-unet recipes (a deviation from toyworld.md §8.5's plain ε loss). SD1.5's betas end at
# ᾱ_999 = 0.0047, so x_T still holds 0.069·x0: on a 32×32 toy whose background fills most pixels, a latent channel's
# mean over its 256 positions carries the background colour with SNR ≈ 1 (noise-mean std 1/16). Trained on that, the
# UNet took each of its 12 channels' colour from the noise instead of the prompt: wrong backgrounds at CFG 7.5 and a
# 2×2 colour pattern (the 4 sub-pixel channels of one colour disagree). A per-(sample, channel) offset in ε, 0.1 as in
# Guttenberg's offset noise, buries that cue so colour has to come from the caption.
VP_OFFSET_NOISE = 0.1

_SCENES_MANNEQUINS_DESIGNS = (("scene", 0.6), ("mannequin", 0.3), ("design", 0.1))
_KONTEXT_SIZES = ((32, 0.8), (16, 0.15), (8, 0.05))


def _full_recipes() -> dict[str, Recipe]:
    return {r.name: r for r in (
        Recipe("toy-clip", 1, "full", "clip", "toy-clip", "text_encoder+image_encoder", 5000, 256, 1e-3,
               mix=(("scene", 0.6), ("mannequin", 0.25), ("design", 0.15)), caption_mode="kept"),
        Recipe("toy-sd3", 1, "full", "flow", "toy-sd3", "transformer", 20000, 32, 3e-4),
        Recipe("toy-kontext-a", 1, "full", "kontext", "toy-kontext", "transformer", 14000, 32, 3e-4,
               edit_batch=24, size_mix=_KONTEXT_SIZES),
        Recipe("toy-kontext-b", 1, "full", "distill", "toy-kontext", "transformer", 2000, 24, 5e-5,
               edit_batch=24, size_mix=_KONTEXT_SIZES),
        # version 2: offset noise (see VPObjective._noisy); version 1 was the spec's plain ε loss
        Recipe("toy-unet", 2, "full", "vp", "toy-unet", "unet", 20000, 32, 2e-4, mix=_SCENES_MANNEQUINS_DESIGNS,
               offset_noise=VP_OFFSET_NOISE),
        Recipe("toy-unet-controlnet", 2, "full", "controlnet", "toy-unet", "controlnet", 6000, 32, 1e-4,
               mix=(("scene", 0.6), ("mannequin", 0.4)), offset_noise=VP_OFFSET_NOISE),
        Recipe("toy-unet-ip-adapter", 2, "full", "ip_adapter", "toy-unet", "ip_adapter", 6000, 32, 1e-4,
               mix=(("scene", 0.5), ("mannequin", 0.3), ("design", 0.2)), offset_noise=VP_OFFSET_NOISE),
    )}


def _ci(recipe: Recipe) -> Recipe:
    """The tiny CI variant: same objective and data, tiny models (``MODEL_CONFIGS["ci"]``), short schedule."""
    return dataclasses.replace(
        recipe, preset="ci", steps=60, batch=8, edit_batch=6 if recipe.edit_batch else 0, warmup=5,
        lr=max(recipe.lr, 1e-3), checkpoint_every=20,
    )


RECIPES: dict[str, dict[str, Recipe]] = {"full": _full_recipes()}
RECIPES["ci"] = {name: _ci(r) for name, r in RECIPES["full"].items()}


def recipe_names() -> list[str]:
    return list(RECIPES["full"])


def get_recipe(name: str, preset: str = "full") -> Recipe:
    if preset not in RECIPES:
        raise ValueError(f"unknown preset {preset!r}; use one of {list(RECIPES)}")
    if name not in RECIPES[preset]:
        raise ValueError(f"unknown training recipe {name!r}; use one of {recipe_names()}")
    return RECIPES[preset][name]


# ==============================================================================================================
# frozen parts from elsewhere (toy-clip towers, the Kontext teacher, the trained UNet)
# ==============================================================================================================
def _from_weights(path: Path, part: str, cls):
    """``cls.from_pretrained`` of ``part`` from a weights folder (``path/part``) or a weights root."""
    for candidate in (path / part, *(path / folder / part for folder in ("toy-clip", "toy-kontext", "toy-unet",
                                                                       "toy-sd3"))):
        if (candidate / "config.json").is_file():
            return cls.from_pretrained(candidate, torch_dtype=torch.float32, local_files_only=True)
    return None


def load_towers(source: str, preset: str, seed: int, with_image: bool) -> tuple[nn.Module, nn.Module | None, str]:
    """toy-clip's text (and image) tower: ``random``, ``auto`` ($FLOWCORE_TOY_CLIP, else the packaged
    weights; ``ci`` falls back to random), a toy-clip run folder, or a folder with ``text_encoder/``."""
    from flowcore.toy.models import ToyImageEncoder, ToyTextEncoder

    if source == "auto":
        source = os.environ.get(CLIP_ENV, "") or "packaged"
    if source == "packaged":
        try:
            from flowcore.toy.bundle import load

            clip = load("toy-clip")
            return clip.text_encoder, clip.image_encoder if with_image else None, "packaged toy-clip"
        except FileNotFoundError as exc:
            if preset != "ci":
                raise FileNotFoundError(
                    f"the diffusion toys read a trained toy-clip text encoder, and none was found ({exc}). "
                    "Train toy-clip first, or pass --clip-from PATH (a toy-clip run folder or weights folder)."
                ) from exc
            source = "random"
    if source == "random":
        with seeded_init(seed + 1):
            text = make_text_encoder(preset)
        image = None
        if with_image:
            with seeded_init(seed + 2):
                image = make_image_encoder(preset)
        return text, image, "random"
    path = Path(source).expanduser()
    if (path / "run.json").is_file():
        module, _ = load_run_module(path)
        return module.text_encoder, module.image_encoder if with_image else None, f"run {path}"
    text = _from_weights(path, "text_encoder", ToyTextEncoder)
    image = _from_weights(path, "image_encoder", ToyImageEncoder) if with_image else None
    if text is None or (with_image and image is None):
        raise FileNotFoundError(f"--clip-from {path}: neither a toy-clip run folder (run.json) nor a weights "
                                "folder with text_encoder/ (and image_encoder/)")
    return text, image, f"weights {path}"


def load_denoiser(source: str, part: str, preset: str = "full") -> tuple[nn.Module, str]:
    """A trained transformer/UNet (EMA) from a run folder, a weights folder, ``packaged``, or ``random`` (a
    seeded fresh one: plumbing tests only)."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    cls = UNet2DConditionModel if part == "unet" else FluxTransformer2DModel
    if source == "random":
        with seeded_init(0):
            return (make_unet(preset) if part == "unet" else make_flux(preset)), "random"
    if source in ("auto", "packaged"):
        from flowcore.toy.bundle import load

        bundle = load("toy-unet" if part == "unet" else "toy-kontext")
        return bundle.denoiser.requires_grad_(True), f"packaged {bundle.name}"
    path = Path(source).expanduser()
    if (path / "run.json").is_file():
        module, recipe = load_run_module(path)
        return module, f"run {path} ({recipe.tag})"
    model = _from_weights(path, part, cls)
    if model is None:
        raise FileNotFoundError(f"{path}: neither a run folder (run.json) nor a weights folder with {part}/")
    return model, f"weights {path}"


def warm_start(module: nn.Module, source: str, recipe: Recipe) -> str:
    """Load trained weights of the part ``recipe`` trains into ``module`` (continued training): a weights folder
    (the shipped layout, e.g. ``weights/toy-sd3``), a weights root, a run folder, or ``packaged``."""
    from flowcore.toy.bundle import weights_root

    if recipe.objective in ("clip", "distill"):
        raise ValueError(f"--warm-start is not defined for {recipe.name} (toy-clip restarts; phase B uses "
                         "--init-from)")
    path = weights_root() / recipe.bundle if source == "packaged" else Path(source).expanduser()
    if (path / "run.json").is_file():
        trained, _ = load_run_module(path)
        state = trained.state_dict()
    elif recipe.objective == "ip_adapter":
        from safetensors.torch import load_file


        file = path / "ip_adapter" / "ip_adapter.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"--warm-start {path}: no ip_adapter/ip_adapter.safetensors")
        load_ip_adapter_into(module, {k: v.float() for k, v in load_file(str(file)).items()})
        for param in ip_adapter_parameters(module):
            param.requires_grad_(True)
        return f"warm start {file}"
    else:
        folder = path / recipe.part
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--warm-start {path}: no {recipe.part}/config.json (a weights folder such as "
                                    f"shared/src/flowcore/toy/weights/{recipe.bundle})")
        cls = type(module)
        state = cls.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True).state_dict()
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "ip" not in k]:
        raise ValueError(f"--warm-start {path}: weights do not match {recipe.name} (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    return f"warm start {path}"


# ==============================================================================================================
# objectives: what is trained, what is frozen, and the loss
# ==============================================================================================================
class ToyClipModule(nn.Module):
    """Both toy-clip towers and the learnable temperature; ``forward(batch)`` is the training loss."""

    def __init__(self, text_encoder: nn.Module, image_encoder: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / recipe.temperature_init)))
        self.max_log_scale = math.log(recipe.max_logit_scale)
        self.mlm_weight = recipe.mlm_weight

    def forward(self, pixels: Tensor, input_ids: Tensor, mlm_input_ids: Tensor, mlm_labels: Tensor) -> Tensor:
        image = F.normalize(self.image_encoder(pixels).image_embeds, dim=-1)
        text = F.normalize(self.text_encoder(input_ids).text_embeds, dim=-1)
        logits = self.logit_scale.clamp(max=self.max_log_scale).exp() * image @ text.t()
        # identical captions (frequent for partial captions and swatches) are all positives of each other
        same = (input_ids[:, None, :] == input_ids[None, :, :]).all(-1).float()
        targets = same / same.sum(1, keepdim=True)
        contrastive = 0.5 * (
            -(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.t().log_softmax(1)).sum(1).mean()
        )
        hidden = self.text_encoder(mlm_input_ids).last_hidden_state
        logits_mlm = self.text_encoder.mlm_logits(hidden)
        picked = mlm_labels != -100
        mlm = F.cross_entropy(logits_mlm[picked], mlm_labels[picked], reduction="sum") / picked.sum().clamp(min=1)
        return contrastive + self.mlm_weight * mlm


class Objective:
    """Builds the trainable module (``self.module``) and the frozen parts; ``loss(model, batch)``."""

    needs_image_tower = False

    def __init__(self, recipe: Recipe, opts: TrainOptions | None, device: torch.device) -> None:
        self.recipe, self.device = recipe, device
        self.sources: dict[str, str] = {}
        self.text_encoder: nn.Module | None = None
        self.image_encoder: nn.Module | None = None
        self.module = self.build(opts)
        if opts is not None and opts.warm_start:
            self.sources["init"] = warm_start(self.module, opts.warm_start, recipe)

    # architecture + sources; with ``opts=None`` everything is random (export rebuilds the architecture only)
    def build(self, opts: TrainOptions | None) -> nn.Module:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    # helpers -------------------------------------------------------------------------------------------------
    def _towers(self, opts: TrainOptions | None) -> None:
        source = "random" if opts is None else opts.clip_from
        seed = 0 if opts is None else opts.seed
        text, image, self.sources["clip"] = load_towers(source, self.recipe.preset, seed, self.needs_image_tower)
        self.text_encoder = text.to(self.device).requires_grad_(False).eval()
        self.image_encoder = None if image is None else image.to(self.device).requires_grad_(False).eval()

    @torch.no_grad()
    def encode_text(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        assert self.text_encoder is not None
        out = self.text_encoder(input_ids)
        return out.last_hidden_state, out.text_embeds

    def seed(self, opts: TrainOptions | None) -> int:
        return 0 if opts is None else opts.seed


class ClipObjective(Objective):
    def build(self, opts):
        seed = self.seed(opts)
        with seeded_init(seed + 1):
            text = make_text_encoder(self.recipe.preset)
        with seeded_init(seed + 2):
            image = make_image_encoder(self.recipe.preset)
        self.sources["init"] = "random"
        return ToyClipModule(text, image, self.recipe).to(self.device)

    def loss(self, model, batch):
        return model(batch["pixels"], batch["input_ids"], batch["mlm_input_ids"], batch["mlm_labels"])


def _noise(like: Tensor, batch: dict[str, Tensor]) -> Tensor:
    return torch.randn(like.shape, generator=batch["generator"], device=like.device, dtype=like.dtype)


class FlowObjective(Objective):
    """toy-sd3: ``x_t = (1−σ)x0 + σε``, σ = sigmoid(n), loss ``‖v̂ − (ε − x0)‖²``; timestep = 1000σ."""

    def build(self, opts):
        self._towers(opts)
        with seeded_init(self.seed(opts)):
            model = make_sd3(self.recipe.preset)
        self.sources["init"] = "random"
        return model.to(self.device)

    def loss(self, model, batch):
        x0 = batch["pixels"] * 2 - 1
        eps = _noise(x0, batch)
        sigma = torch.sigmoid(batch["n"]).to(x0.dtype)
        xt = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * eps
        seq, pooled = self.encode_text(batch["input_ids"])
        v = model(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=seq, pooled_projections=pooled,
                  return_dict=False)[0]
        return F.mse_loss(v, eps - x0)


def pack_latents(latents: Tensor) -> Tensor:
    """(B,C,H,W) → (B, H/2·W/2, 4C): FLUX's 2×2 token packing (as ``FluxPipeline._pack_latents``)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(h: int, w: int, first: float, device: torch.device) -> Tensor:
    """(h·w, 3) FLUX position ids ``(first, row, col)``; Kontext uses first = 1 for the reference."""
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 0] = first
    ids[..., 1] = torch.arange(h, device=device)[:, None]
    ids[..., 2] = torch.arange(w, device=device)[None, :]
    return ids.reshape(h * w, 3)


class KontextObjective(Objective):
    """toy-kontext phase A: flow loss on the target tokens only, the reference tokens stay clean; the
    transformer gets σ and the guidance as floats, as ``FluxKontextPipeline`` passes them. Phase A feeds a
    random guidance value g ~ U[1,5] that the target ignores, so the phase-A model is guidance-agnostic (it
    works at any embedded guidance even without phase B, and phase B starts from a model that ignores g)."""

    def build(self, opts):
        self._towers(opts)
        with seeded_init(self.seed(opts)):
            model = make_flux(self.recipe.preset)
        self.sources["init"] = "random"
        return model.to(self.device)

    def _inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x0 = batch["pixels"] * 2 - 1
        eps = _noise(x0, batch)
        sigma = torch.sigmoid(batch["n"]).to(x0.dtype)
        xt = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * eps
        h, w = x0.shape[-2] // 2, x0.shape[-1] // 2
        tokens, ids = pack_latents(xt), image_ids(h, w, 0.0, x0.device)
        if "reference" in batch:
            tokens = torch.cat([tokens, pack_latents(batch["reference"] * 2 - 1)], 1)
            ids = torch.cat([ids, image_ids(h, w, 1.0, x0.device)], 0)
        return {"tokens": tokens, "ids": ids, "sigma": sigma, "target": pack_latents(eps - x0), "n_target": h * w}

    def _predict(self, model, inputs, seq, pooled, guidance: Tensor) -> Tensor:
        out = model(
            hidden_states=inputs["tokens"], timestep=inputs["sigma"], guidance=guidance, pooled_projections=pooled,
            encoder_hidden_states=seq, txt_ids=torch.zeros(seq.shape[1], 3, device=seq.device),
            img_ids=inputs["ids"], return_dict=False,
        )[0]
        return out[:, : inputs["n_target"]]

    def loss(self, model, batch):
        inputs = self._inputs(batch)
        seq, pooled = self.encode_text(batch["input_ids"])
        guidance = batch["g"].to(inputs["sigma"].dtype)
        return F.mse_loss(self._predict(model, inputs, seq, pooled, guidance), inputs["target"])


class DistillObjective(KontextObjective):
    """toy-kontext phase B: the student (init = teacher = the phase-A EMA) regresses ``v_u + g(v_c − v_u)`` of the
    frozen teacher at embedded guidance ``g ~ U[1,5]``; ``v_u`` uses the empty text with the same reference."""

    def build(self, opts):
        self._towers(opts)
        if opts is None:
            with seeded_init(0):
                return make_flux(self.recipe.preset).to(self.device)
        teacher, self.sources["teacher"] = load_denoiser(opts.init_from or "packaged", "transformer", self.recipe.preset)
        self.teacher = teacher.to(self.device).requires_grad_(False).eval()
        student = make_flux(self.recipe.preset)
        student.load_state_dict(self.teacher.state_dict())
        self.sources["init"] = "teacher"
        from flowcore.toy.tokenizer import ToyTokenizer

        self.empty_ids = ToyTokenizer()([""], return_tensors="pt")["input_ids"].to(self.device)
        return student.to(self.device).requires_grad_(True)

    def loss(self, model, batch):
        inputs = self._inputs(batch)
        seq, pooled = self.encode_text(batch["input_ids"])
        empty_seq, empty_pooled = self.encode_text(self.empty_ids)
        b = seq.shape[0]
        with torch.no_grad():
            both = {**inputs, "tokens": inputs["tokens"].repeat(2, 1, 1), "sigma": inputs["sigma"].repeat(2)}
            v = self._predict(
                self.teacher, both, torch.cat([seq, empty_seq.expand(b, -1, -1)]),
                torch.cat([pooled, empty_pooled.expand(b, -1)]), torch.ones(2 * b, device=seq.device),
            )
            v_cond, v_uncond = v[:b], v[b:]
            g = batch["g"].to(v.dtype)
            target = v_uncond + g[:, None, None] * (v_cond - v_uncond)
        return F.mse_loss(self._predict(model, inputs, seq, pooled, g), target)


class VPObjective(Objective):
    """toy-unet: ε-prediction with SD1.5's DDPM betas, ``t ~ U{0..999}``; latents = pixel_unshuffle(2·img−1)."""

    def build(self, opts):
        self._towers(opts)
        with seeded_init(self.seed(opts)):
            model = make_unet(self.recipe.preset)
        self.sources["init"] = "random"
        return model.to(self.device)

    def _noisy(self, batch):
        from diffusers import DDPMScheduler

        if not hasattr(self, "_alphas"):
            noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear", prediction_type="epsilon")
            self._alphas = noise_scheduler.alphas_cumprod.to(self.device)
        x0 = F.pixel_unshuffle(batch["pixels"] * 2 - 1, 2)
        eps = _noise(x0, batch)
        if self.recipe.offset_noise:  # drawn after ε, so recipes without it reproduce their old batches bit for bit
            eps = eps + self.recipe.offset_noise * _noise(x0[:, :, :1, :1], batch)
        alpha = self._alphas[batch["t"]].to(x0.dtype)[:, None, None, None]
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps, eps

    def loss(self, model, batch):
        noisy, eps = self._noisy(batch)
        seq, _ = self.encode_text(batch["input_ids"])
        return F.mse_loss(model(noisy, batch["t"], encoder_hidden_states=seq, return_dict=False)[0], eps)


class ControlNetObjective(VPObjective):
    """Edge ControlNet ``from_unet`` of the trained toy-unet (frozen); same ε loss through the residuals."""

    def build(self, opts):
        self._towers(opts)
        if opts is None:
            unet, self.sources["unet"] = make_unet(self.recipe.preset), "random"
        else:
            unet, self.sources["unet"] = load_denoiser(opts.unet_from or "packaged", "unet", self.recipe.preset)
        with seeded_init(self.seed(opts) + 3):
            controlnet = make_controlnet(unet, self.recipe.preset)
        self.unet = unet.to(self.device).requires_grad_(False).eval()
        return controlnet.to(self.device).requires_grad_(True)

    def loss(self, model, batch):
        noisy, eps = self._noisy(batch)
        seq, _ = self.encode_text(batch["input_ids"])
        down, mid = model(noisy, batch["t"], encoder_hidden_states=seq, controlnet_cond=batch["control"],
                          return_dict=False)
        pred = self.unet(noisy, batch["t"], encoder_hidden_states=seq, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0]
        return F.mse_loss(pred, eps)


class IPAdapterObjective(VPObjective):
    """IP-Adapter on the trained toy-unet: only the image projection and ``to_k_ip``/``to_v_ip`` train; the
    image prompt is the target itself through toy-clip's frozen image tower (zeros when dropped)."""

    needs_image_tower = True

    def build(self, opts):
        self._towers(opts)
        if opts is None:
            unet, self.sources["unet"] = make_unet(self.recipe.preset), "random"
        else:
            unet, self.sources["unet"] = load_denoiser(opts.unet_from or "packaged", "unet", self.recipe.preset)
        unet.requires_grad_(False)
        with seeded_init(self.seed(opts) + 4):
            state = make_ip_adapter_state_dict(unet, self.recipe.preset)
        load_ip_adapter_into(unet, state)
        unet.train()
        for param in ip_adapter_parameters(unet):
            param.requires_grad_(True)
        return unet.to(self.device)

    def trainable_parameters(self):
        return ip_adapter_parameters(self.module)

    def loss(self, model, batch):
        noisy, eps = self._noisy(batch)
        seq, _ = self.encode_text(batch["input_ids"])
        assert self.image_encoder is not None
        with torch.no_grad():
            embeds = self.image_encoder(batch["pixels"]).image_embeds
            embeds = torch.where(batch["drop_image"][:, None], torch.zeros_like(embeds), embeds)
        pred = model(noisy, batch["t"], encoder_hidden_states=seq,
                     added_cond_kwargs={"image_embeds": [embeds[:, None]]}, return_dict=False)[0]
        return F.mse_loss(pred, eps)


OBJECTIVES: dict[str, type[Objective]] = {
    "clip": ClipObjective, "flow": FlowObjective, "kontext": KontextObjective, "distill": DistillObjective,
    "vp": VPObjective, "controlnet": ControlNetObjective, "ip_adapter": IPAdapterObjective,
}


# ==============================================================================================================
# run folders and checkpoints
# ==============================================================================================================
CHECKPOINT_RE = re.compile(r"^step-(\d{7})$")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary ``*.tmp`` folders are ignored)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _write_json(path: Path, obj: Any) -> None:
    from flowcore.io import write_json

    write_json(path, obj)


def load_run_module(run_dir: str | Path, checkpoint: Path | None = None) -> tuple[nn.Module, Recipe]:
    """The trainable module of a run with its EMA weights (from the newest checkpoint), on CPU, in eval mode."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json")
    recipe = Recipe(**_recipe_fields(info["recipe"]))
    checkpoints = [checkpoint] if checkpoint else list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint yet (checkpoints/step-*/meta.json)")
    objective = OBJECTIVES[recipe.objective](recipe, None, torch.device("cpu"))
    params = objective.trainable_parameters()
    ema_state = torch.load(checkpoints[-1] / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=False)
    shadow = ema_state["shadow_params"]
    if len(shadow) != len(params) or any(s.shape != p.shape for s, p in zip(shadow, params)):
        raise RuntimeError(f"{checkpoints[-1]}: the EMA does not match the architecture of {recipe.tag}")
    with torch.no_grad():
        for s, p in zip(shadow, params):
            p.copy_(s)
    return objective.module.eval(), recipe


def _recipe_fields(data: dict[str, Any]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    out = {}
    for key, value in data.items():
        if key not in fields:
            continue
        out[key] = _tupleize(value) if isinstance(value, list) else value
    return out


def _tupleize(value: Any) -> Any:
    return tuple(_tupleize(v) for v in value) if isinstance(value, list) else value


# ==============================================================================================================
# the trainer
# ==============================================================================================================
def parse_duration(text: str | float | None) -> float | None:
    """``"170m"``, ``"2.5h"``, ``"90s"``, ``"600"`` (seconds) → seconds; ``None``/"" → None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
    if not match:
        raise ValueError(f"invalid duration {text!r}; use e.g. 170m, 2.5h, 90s or plain seconds")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclass
class TrainOptions:
    model: str
    output_dir: Path
    seed: int = 0
    device: str = "auto"
    resume: str = "no"  # "auto" | "no" | a checkpoint folder
    time_budget: float | None = None  # seconds
    steps: int | None = None
    preset: str = "full"
    batch_size: int | None = None
    batch_mult: int = 1  # batch = recipe batch × this (ignored when batch_size is given)
    steps_mult: float = 1.0  # steps = (sample-preserving steps) × this (ignored when steps is given)
    fit_budget: bool = False
    clip_from: str = "auto"
    init_from: str | None = None  # toy-kontext-b: the phase-A run (teacher)
    warm_start: str | None = None  # continue from trained weights (a weights folder, a run, or "packaged")
    lr: float | None = None  # override the recipe's peak learning rate (continued training)
    warmup: int | None = None  # override the recipe's warm-up steps
    unet_from: str | None = None  # controlnet / ip-adapter: the toy-unet run
    data_workers: int | None = None
    threads: int = 2
    deadline: float | None = None  # absolute wall-clock end (epoch seconds); tightens time_budget
    stop_after: int | None = None  # stop (and checkpoint) after this global step; tests use it
    checkpoint_every: int | None = None
    log_every: int | None = None
    print_every_s: float = 10.0
    command: str = field(default_factory=lambda: " ".join(["python -m flowcore.toy", *sys.argv[1:]]))


class _StopFlag:
    def __init__(self) -> None:
        self.signal: str | None = None

    def __call__(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name


FIT_WARMUP_FRACTION = 0.05  # with --fit-budget the warm-up also ends after 5% of the time budget


def _lr_factor(recipe: Recipe, step: int, progress: float, time_warm: float = 0.0) -> float:
    """Linear warm-up over ``recipe.warmup`` steps (or ``time_warm`` reaching 1), then cosine to
    ``final_lr_fraction`` as ``progress`` goes 0 → 1."""
    warm = min(1.0, max((step + 1) / max(1, recipe.warmup), time_warm))
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return warm * (recipe.final_lr_fraction + (1 - recipe.final_lr_fraction) * cosine)


class Trainer:
    """One training run of one recipe under ``accelerate``; ``run()`` returns the summary dict."""

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts
        self.t_start = time.time()
        base = get_recipe(opts.model, opts.preset)
        recipe = base.with_overrides(batch=opts.batch_size or (base.batch * opts.batch_mult))
        steps = opts.steps or (math.ceil(recipe.steps * opts.steps_mult) if opts.steps_mult != 1 else None)
        self.recipe = recipe.with_overrides(steps=steps)
        if opts.lr is not None or opts.warmup is not None:
            self.recipe = dataclasses.replace(
                self.recipe, lr=self.recipe.lr if opts.lr is None else opts.lr,
                warmup=self.recipe.warmup if opts.warmup is None else opts.warmup,
                base=self.recipe.base or base.tag,
            )
        self.run_dir = Path(opts.output_dir).expanduser().resolve()
        self.stop = _StopFlag()

    # --- setup ---------------------------------------------------------------------------------------------
    def _setup_device(self):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        from flowcore.cli import resolve_device

        device = resolve_device(self.opts.device)
        torch.set_num_threads(self.opts.threads)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.accelerator = Accelerator(
            cpu=device.type == "cpu", mixed_precision="no",
            project_config=ProjectConfiguration(project_dir=str(self.run_dir)),
        )
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index

    def _prepare_run_dir(self) -> Path | None:
        """Check/create the run folder; returns the checkpoint to resume from."""
        run_json = self.run_dir / "run.json"
        checkpoints = list_checkpoints(self.run_dir)
        resume_from = None
        if self.opts.resume not in ("auto", "no"):
            resume_from = Path(self.opts.resume).expanduser()
            if not (resume_from / "meta.json").is_file():
                raise FileNotFoundError(f"--resume {resume_from}: not a complete checkpoint folder")
        elif checkpoints and self.opts.resume != "auto":
            raise FileExistsError(
                f"{self.run_dir} already holds checkpoints; pass --resume auto to continue, or a new --output-dir"
            )
        elif checkpoints:
            resume_from = checkpoints[-1]
        if run_json.is_file():
            previous = read_json(run_json)
            if previous.get("recipe_sha256") != self.recipe.sha256 and resume_from is not None:
                raise ValueError(
                    f"{self.run_dir} was trained with {previous.get('recipe_tag')} (sha256 "
                    f"{previous.get('recipe_sha256', '')[:12]}…), not {self.recipe.tag} ({self.recipe.sha256[:12]}…)"
                    " with these overrides; use a new --output-dir"
                )
        return resume_from

    def _write_run_json(self, objective: Objective, resumed: bool) -> None:
        if not self.is_main:
            return
        run_json = self.run_dir / "run.json"
        info = read_json(run_json) if (resumed and run_json.is_file()) else {}
        info.update({
            "recipe": self.recipe.to_dict(), "recipe_tag": self.recipe.tag, "recipe_sha256": self.recipe.sha256,
            "base_recipe_sha256": get_recipe(self.opts.model, self.opts.preset).sha256,
            "seed": self.opts.seed, "world": self.world, "device": _device_name(self.device),
            "sources": objective.sources, "fit_budget": self.opts.fit_budget,
        })
        info.setdefault("commands", []).append(self.opts.command)
        info.setdefault("train_command", self.opts.command)
        _write_json(run_json, info)

    # --- checkpoints ----------------------------------------------------------------------------------------
    def _save(self, step: int, meta: dict[str, Any]) -> float:
        t0 = time.time()
        folder = self.run_dir / "checkpoints"
        final = folder / f"step-{step:07d}"
        tmp = folder / f"step-{step:07d}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.is_main:
            _write_json(tmp / "meta.json", {**meta, "step": step})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in list_checkpoints(self.run_dir)[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return time.time() - t0

    # --- main loop ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from diffusers.training_utils import EMAModel

        from flowcore.toy.data import Prefetcher, materialize

        self._setup_device()
        resume_from = self._prepare_run_dir()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        recipe = self.recipe
        objective = OBJECTIVES[recipe.objective](recipe, self.opts, self.device)
        params = objective.trainable_parameters()
        optimizer = torch.optim.AdamW(
            params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay,
            **({"fused": True} if self.device.type == "cuda" else {}),
        )
        model, optimizer = self.accelerator.prepare(objective.module, optimizer)
        model.train()
        ema = EMAModel(params, decay=recipe.ema_decay, use_ema_warmup=True, power=recipe.ema_power, foreach=True)
        self.accelerator.register_for_checkpointing(ema)

        step, elapsed_train, fit_total = 0, 0.0, None
        if resume_from is not None:
            self.accelerator.load_state(str(resume_from))
            ema.to(self.device)
            meta = read_json(resume_from / "meta.json")
            step, elapsed_train = int(meta["step"]), float(meta.get("elapsed_train_s", 0.0))
            fit_total = meta.get("fit_total_s")
            if self.is_main:
                _truncate_log(self.run_dir / "log.jsonl", step)
        self._write_run_json(objective, resumed=resume_from is not None)

        budget = self.opts.time_budget
        if self.opts.deadline is not None:
            until_deadline = self.opts.deadline - self.t_start
            budget = until_deadline if budget is None else min(budget, until_deadline)
        reserve = 5.0
        if self.opts.fit_budget:
            if budget is None:
                raise ValueError("--fit-budget needs --time-budget or --deadline")
            fit_total = fit_total or max(1.0, budget - (time.time() - self.t_start) - 2 * reserve)
        total_steps = recipe.steps
        stop_after = self.opts.stop_after
        checkpoint_every = self.opts.checkpoint_every or recipe.checkpoint_every
        workers = self.opts.data_workers if self.opts.data_workers is not None else (
            2 if self.device.type == "cuda" else 0)
        log_every = self.opts.log_every or (50 if self.device.type == "cuda" else 1)
        t_loop = time.time()
        prefetch = Prefetcher(recipe, self.opts.seed, self.rank, self.world, step, workers=workers)
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        logger = _StepLogger(self.run_dir / "log.jsonl", self.is_main, log_every, recipe, total_steps,
                             self.opts.print_every_s, self.world)
        if fit_total:
            logger.time_left = lambda: max(0.0, fit_total - elapsed_train - (time.time() - t_loop))
        status, last_saved, save_cost = "running", step if resume_from else -1, reserve
        try:
            while True:
                progress_time = (elapsed_train + time.time() - t_loop) / fit_total if fit_total else 0.0
                if step >= total_steps or (fit_total and progress_time >= 1.0):
                    status = "finished"
                    break
                if stop_after is not None and step >= stop_after:
                    status = "stopped"
                    break
                if self.stop.signal:
                    status = f"interrupted ({self.stop.signal})"
                    break
                if budget is not None:
                    spent = time.time() - self.t_start
                    if spent + logger.step_estimate() * 2 + save_cost + 1.0 > budget:
                        status = "time budget"
                        break
                t_step = time.perf_counter()
                progress = progress_time if fit_total else (step - recipe.warmup) / max(1, total_steps - recipe.warmup)
                time_warm = progress_time / FIT_WARMUP_FRACTION if fit_total else 0.0
                lr = recipe.lr * _lr_factor(recipe, step, progress, time_warm)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = materialize(prefetch.get(step), self.device)
                loss = objective.loss(model, batch)
                self.accelerator.backward(loss)
                self.accelerator.clip_grad_norm_(params, recipe.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                ema.step(params)
                step += 1
                logger.record(step, loss.detach(), lr, time.perf_counter() - t_step, len(batch["pixels"]))
                if logger.diverged_at is not None:
                    status = f"diverged (non-finite loss at step {logger.diverged_at})"
                    break
                if step % checkpoint_every == 0:
                    logger.flush()
                    if logger.diverged_at is not None:
                        status = f"diverged (non-finite loss at step {logger.diverged_at})"
                        break
                    save_cost = 1.5 * self._save(step, self._meta(step, elapsed_train + time.time() - t_loop,
                                                                   fit_total, "running")) + 1.0
                    last_saved = step
        except Exception:
            # keep what was learnt: checkpoint the last finished step, then let the error surface
            prefetch.close()
            if step != last_saved and logger.diverged_at is None:
                with contextlib.suppress(Exception):
                    logger.flush()
                    self._save(step, self._meta(step, elapsed_train + time.time() - t_loop, fit_total, "crashed"))
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            prefetch.close()
        logger.flush()
        if logger.diverged_at is not None and not status.startswith("diverged"):
            status = f"diverged (non-finite loss at step {logger.diverged_at})"
        elapsed_train += time.time() - t_loop
        if status.startswith("diverged"):
            print(f"[{recipe.name}] {status}: the newest checkpoint (step {last_saved}) is kept as is",
                  file=sys.stderr, flush=True)
        elif last_saved != step:
            self._save(step, self._meta(step, elapsed_train, fit_total, status))
        summary = logger.summary(step, status, time.time() - self.t_start, elapsed_train)
        if self.is_main:
            _write_json(self.run_dir / "summary.json", summary)
            final_meta = self._meta(step, elapsed_train, fit_total, status)
            latest = list_checkpoints(self.run_dir)
            if latest and latest[-1].name == f"step-{step:07d}":
                _write_json(latest[-1] / "meta.json", {**final_meta, "step": step})
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return summary

    def _meta(self, step: int, elapsed_train: float, fit_total: float | None, status: str) -> dict[str, Any]:
        return {
            "step": step, "elapsed_train_s": elapsed_train, "fit_total_s": fit_total, "status": status,
            "finished": status == "finished", "recipe_tag": self.recipe.tag, "recipe_sha256": self.recipe.sha256,
            "samples": step * self.recipe.batch * self.world, "device": _device_name(self.device),
            "world": self.world, "seed": self.opts.seed, "time": time.time(),
        }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint we resume from)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    from flowcore.io import atomic_write

    atomic_write(path, "".join(line + "\n" for line in keep))


class _StepLogger:
    """Per-step JSONL log (loss, lr, s/step), a progress bar on a terminal, a plain line every few seconds
    otherwise. Losses stay on the device and are read in groups of ``every`` (one sync per group on GPU)."""

    def __init__(self, path: Path, active: bool, every: int, recipe: Recipe, total: int, print_every_s: float,
                 world: int) -> None:
        self.path, self.active, self.every, self.recipe, self.total = path, active, every, recipe, total
        self.print_every_s, self.world = print_every_s, world
        self.pending: list[tuple[int, Tensor, float, float, int]] = []
        self.times: list[float] = []
        self.losses: list[float] = []
        self.diverged_at: int | None = None  # first step with a non-finite loss
        self.samples = 0
        self.last_print = time.time()
        self.time_left: Any = None  # set in --fit-budget mode: the ETA is the time left in the schedule
        self.bar = None
        if active and sys.stderr.isatty() and os.environ.get("FLOWCORE_NO_PROGRESS", "") != "1":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=recipe.name, unit="step", dynamic_ncols=True)

    def step_estimate(self) -> float:
        recent = self.times[-20:]
        return sorted(recent)[len(recent) // 2] if recent else 0.0

    def record(self, step: int, loss: Tensor, lr: float, seconds: float, batch: int) -> None:
        self.times.append(seconds)
        self.samples += batch * self.world
        self.pending.append((step, loss, lr, seconds, self.samples))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([p[1] for p in self.pending]).float().cpu().tolist()
        lines = []
        for (step, _, lr, seconds, samples), loss in zip(self.pending, values):
            if not math.isfinite(loss) and self.diverged_at is None:
                self.diverged_at = step
            self.losses.append(loss)
            lines.append(json.dumps({"step": step, "loss": loss if math.isfinite(loss) else str(loss), "lr": lr, "s_per_step": round(seconds, 5),
                                     "samples": samples, "time": round(time.time(), 3)}))
        last_step = self.pending[-1][0]
        self.pending.clear()
        if not self.active:
            return
        with open(self.path, "a") as handle:
            handle.write("\n".join(lines) + "\n")
        spst = self.step_estimate()
        if self.bar is not None:
            self.bar.n = last_step
            self.bar.set_postfix(loss=f"{self.losses[-1]:.4f}", s_step=f"{spst:.3f}")
        elif time.time() - self.last_print >= self.print_every_s:
            self.last_print = time.time()
            eta = self.time_left() if self.time_left else max(0, self.total - last_step) * spst
            print(f"[{self.recipe.name}] step {last_step}/{self.total} loss {self.losses[-1]:.4f} "
                  f"{spst:.3f} s/step ETA {eta / 60:.1f} min", flush=True)

    def summary(self, step: int, status: str, wall: float, train_wall: float) -> dict[str, Any]:
        if self.bar is not None:
            self.bar.close()
        tail = self.losses[-50:]
        times = sorted(self.times[5:] or self.times)
        return {
            "recipe": self.recipe.tag, "status": status, "steps": step, "batch": self.recipe.batch,
            "world": self.world, "samples_seen_this_run": self.samples,
            "samples_total": step * self.recipe.batch * self.world,
            "recipe_samples": self.recipe.steps * self.recipe.batch,
            "final_loss": sum(tail) / len(tail) if tail else None,
            "first_loss": self.losses[0] if self.losses else None,
            "s_per_step": times[len(times) // 2] if times else None, "wall_s": wall, "train_wall_s": train_wall,
        }


# ==============================================================================================================
# API and CLI
# ==============================================================================================================
def train(name: str, output_dir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Train recipe ``name`` into ``output_dir`` (keyword overrides are ``TrainOptions`` fields); returns the
    run summary."""
    opts = TrainOptions(model=name, output_dir=Path(output_dir), **overrides)
    if isinstance(opts.time_budget, str):
        opts.time_budget = parse_duration(opts.time_budget)
    return Trainer(opts).run()


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=recipe_names(), help="the recipe (toyworld.md §8.5)")
    parser.add_argument("--output-dir", default=None,
                        help=f"run folder (default {DEFAULT_RUNS_DIR}/<model>; keep it outside the work tree)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--resume", default="no", help="auto (newest checkpoint), no, or a checkpoint folder")
    parser.add_argument("--time-budget", default=None, help="stop (and checkpoint) after this wall time: 170m, 2h")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    parser.add_argument("--preset", choices=("full", "ci"), default="full", help="ci: tiny models, short run")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the batch (lr kept; steps and warm-up scale to keep the samples)")
    parser.add_argument("--batch-mult", type=int, default=1, help="batch = recipe batch × this (lr kept)")
    parser.add_argument("--steps-mult", type=float, default=1.0,
                        help="steps = the sample-preserving steps × this (a cap under --fit-budget)")
    parser.add_argument("--fit-budget", action="store_true",
                        help="the cosine schedule follows wall-clock progress through --time-budget")
    parser.add_argument("--clip-from", default="auto",
                        help=f"toy-clip towers: auto (${CLIP_ENV} or the packaged weights), random, or a run/"
                             "weights folder")
    parser.add_argument("--init-from", default=None, help="toy-kontext-b: the phase-A run folder (teacher)")
    parser.add_argument("--warm-start", default=None,
                        help="continue training from trained weights: 'packaged', a weights folder (e.g. "
                             "shared/src/flowcore/toy/weights/toy-sd3) or a run folder; optimizer state restarts")
    parser.add_argument("--lr", type=float, default=None, help="override the recipe's peak learning rate")
    parser.add_argument("--warmup", type=int, default=None, help="override the recipe's warm-up steps")
    parser.add_argument("--unet-from", default=None,
                        help="toy-unet-controlnet / -ip-adapter: the toy-unet run or weights folder")
    parser.add_argument("--data-workers", type=int, default=None,
                        help="processes building batches ahead (default 0 on CPU, 2 on CUDA)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (2 = the determinism setting)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="absolute end time (Unix seconds); the run stops and checkpoints before it")
    parser.add_argument("--stop-after", type=int, default=None, help="stop and checkpoint after this global step")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=None, help="steps per log flush (default 1 CPU, 50 GPU)")


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    output = Path(args.output_dir) if args.output_dir else DEFAULT_RUNS_DIR / args.model
    return TrainOptions(
        model=args.model, output_dir=output, seed=args.seed, device=args.device, resume=args.resume,
        time_budget=parse_duration(args.time_budget), steps=args.steps, preset=args.preset,
        batch_size=args.batch_size, batch_mult=args.batch_mult, steps_mult=args.steps_mult,
        fit_budget=args.fit_budget, clip_from=args.clip_from,
        init_from=args.init_from, warm_start=args.warm_start, lr=args.lr, warmup=args.warmup,
        unet_from=args.unet_from, data_workers=args.data_workers, threads=args.threads,
        deadline=args.deadline, stop_after=args.stop_after, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowcore.toy train", description=__doc__.split("\n")[0])
    add_train_args(parser)
    args = parser.parse_args(argv)
    summary = Trainer(options_from_args(args)).run()
    print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
