"""Toy bundles: build, load, verify and run the embedded toy models (toyworld.md §8.7, §10.2).

- ``build(name, random_init=True)``: the architecture of a toy with seeded random weights (plumbing tests, and the
  starting point of training; ``random_init=False`` takes the frozen towers from the packaged toy-clip).
- ``load(name)``: the shipped fp16 weights (``weights/<name>/``, importlib.resources or ``FLOWCORE_TOY_WEIGHTS``),
  sha256-verified once per process against ``weights/MANIFEST.json`` and loaded as fp32, offline.
- ``ToyBundle``: the parts plus ``encode_prompt``, ``encode_ip_image``, ``pipeline()`` (the stock diffusers
  pipeline), ``adapter()`` and ``generate``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowcore.toy.models import (
    ToyImageEncoder,
    ToyPixelVAE,
    ToyTextEncoder,
    load_ip_adapter_into,
    make_controlnet,
    make_flux,
    make_image_encoder,
    make_ip_adapter_state_dict,
    make_sd3,
    make_text_encoder,
    make_unet,
    quiet_diffusers,
    seeded_init,
)
from flowcore.toy.tokenizer import ToyTokenizer

__all__ = [
    "MODEL_NAMES",
    "ToyBundle",
    "ToyWeightsCorrupted",
    "ToyWeightsMissing",
    "available",
    "build",
    "clip_image_similarity",
    "clip_score",
    "load",
    "make_scheduler",
    "manifest",
    "verify",
    "weights_root",
]

MODEL_NAMES: tuple[str, ...] = ("toy-clip", "toy-sd3", "toy-kontext", "toy-flux", "toy-unet")
# toy-flux is toy-kontext's weights used without a reference image (§8.3).
WEIGHTS_FOLDER: dict[str, str] = {name: name for name in MODEL_NAMES} | {"toy-flux": "toy-kontext"}
SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "toy-clip": ("text_encoder", "image_encoder", "tokenizer"),
    "toy-sd3": ("transformer", "scheduler"),
    "toy-kontext": ("transformer", "scheduler"),
    "toy-unet": ("unet", "scheduler", "controlnet", "ip_adapter"),
}
DEFAULTS: dict[str, dict[str, float]] = {
    "toy-sd3": {"steps": 28, "guidance": 5.0},
    "toy-flux": {"steps": 28, "guidance": 3.5},
    "toy-kontext": {"steps": 28, "guidance": 2.5},
    "toy-unet": {"steps": 50, "guidance": 7.5},
}
MANIFEST_NAME = "MANIFEST.json"
WEIGHTS_ENV = "FLOWCORE_TOY_WEIGHTS"
IP_ADAPTER_WEIGHT_NAME = "ip_adapter.safetensors"
SIZE = 32


class ToyWeightsMissing(FileNotFoundError):
    """The shipped weights of a toy model are not where ``load`` looks; the message names the training command."""


class ToyWeightsCorrupted(RuntimeError):
    """A weight file's sha256 does not match ``MANIFEST.json``."""


def _check_name(name: str) -> str:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown toy model {name!r}; use one of {list(MODEL_NAMES)}")
    return name


def make_scheduler(name: str):
    """The sampling scheduler of a toy (§8.2–8.4); ``None`` for toy-clip."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    _check_name(name)
    if name == "toy-sd3":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    if name in ("toy-kontext", "toy-flux"):
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_image_seq_len=256,
            max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
        )
    if name == "toy-unet":
        return DDIMScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
            timestep_spacing="leading",
        )
    return None


def vae_factor(name: str) -> int:
    return 2 if name == "toy-unet" else 1


def make_vae(name: str) -> ToyPixelVAE:
    return ToyPixelVAE(factor=vae_factor(name))


# --------------------------------------------------------------------------------------------------------------
@dataclass
class ToyBundle:
    """The parts of one toy model. ``denoiser`` is the transformer or UNet (``None`` for toy-clip)."""

    name: str
    denoiser: nn.Module | None
    text_encoder: ToyTextEncoder
    tokenizer: ToyTokenizer
    vae: ToyPixelVAE | None
    scheduler: Any
    controlnet: nn.Module | None = None
    image_encoder: ToyImageEncoder | None = None
    ip_adapter: bool = False
    preset: str = "full"
    weights_dir: Path | None = None
    manifest_sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    # --- placement -------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        parts = {
            "denoiser": self.denoiser, "text_encoder": self.text_encoder, "vae": self.vae,
            "controlnet": self.controlnet, "image_encoder": self.image_encoder,
        }
        return {key: module for key, module in parts.items() if module is not None}

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.text_encoder.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ToyBundle:
        with quiet_diffusers():
            for module in self.modules().values():
                module.to(device=device, dtype=dtype)
        return self

    def eval(self) -> ToyBundle:
        for module in self.modules().values():
            module.eval()
        return self

    # --- conditioning ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, texts: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """Texts → ``(sequence (B,32,128), pooled (B,128))`` on the bundle's device and dtype.

        The CFG negative is ``encode_prompt([""] * B)``, the encoding of the empty text, never zeros.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = self.tokenizer(texts, padding="max_length", return_tensors="pt")
        out = self.text_encoder(
            tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
        )
        return out.last_hidden_state, out.text_embeds

    @torch.no_grad()
    def encode_ip_image(self, images: Tensor) -> Tensor:
        """Images ``(B,3,H,W)`` in [0,1] → IP-Adapter ``image_embeds (B,1,128)`` (toy-clip's image tower)."""
        if self.image_encoder is None:
            raise ValueError(f"{self.name} has no image encoder; load it with ip_adapter=True")
        images = images.to(device=self.device, dtype=self.dtype)
        return self.image_encoder(images).image_embeds[:, None]

    # --- pipelines ------------------------------------------------------------------------------------------
    def pipeline(self):
        """The stock diffusers pipeline over these parts (drive it with ``prompt_embeds``)."""
        import diffusers

        if self.name == "toy-clip":
            raise ValueError("toy-clip is an encoder pair, not a generative model; it has no pipeline")
        assert self.denoiser is not None and self.vae is not None
        text = {"text_encoder": self.text_encoder, "tokenizer": self.tokenizer}
        if self.name == "toy-sd3":
            return diffusers.StableDiffusion3Pipeline(
                transformer=self.denoiser, scheduler=self.scheduler, vae=self.vae, **text,
                text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
            )
        if self.name in ("toy-flux", "toy-kontext"):
            cls = diffusers.FluxKontextPipeline if self.name == "toy-kontext" else diffusers.FluxPipeline
            return cls(
                transformer=self.denoiser, scheduler=self.scheduler, vae=self.vae, **text,
                text_encoder_2=None, tokenizer_2=None,
            )
        common = dict(
            vae=self.vae, unet=self.denoiser, scheduler=self.scheduler, safety_checker=None,
            feature_extractor=None, image_encoder=None, requires_safety_checker=False, **text,
        )
        if self.controlnet is not None:
            return diffusers.StableDiffusionControlNetPipeline(controlnet=self.controlnet, **common)
        return diffusers.StableDiffusionPipeline(**common)

    def adapter(self):
        """The ``flowcore.adapters.FlowModel`` over this bundle."""
        from flowcore.adapters import adapter_from_toy

        return adapter_from_toy(self)

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str],
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        image: Tensor | None = None,
        *,
        ip_image: Tensor | None = None,
        controlnet_scale: float = 1.0,
        ip_adapter_scale: float = 1.0,
        size: int = SIZE,
    ) -> Tensor:
        """Sample images ``(B,3,size,size)`` in [0,1] with the stock pipeline and the §8 defaults.

        ``image``: the reference (toy-kontext, required) or the control image (toy-unet with a ControlNet),
        ``(B,3,H,W)`` in [0,1]. ``ip_image``: the IP-Adapter image prompt (toy-unet loaded with ``ip_adapter``).
        ``guidance``: CFG scale (toy-sd3, toy-unet) or the embedded guidance (toy-flux, toy-kontext). The
        initial noise comes from a CPU generator seeded with ``seed``, so it does not depend on the device.
        """
        if self.name == "toy-clip":
            raise ValueError("toy-clip cannot generate images")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        defaults = DEFAULTS[self.name]
        steps = int(steps or defaults["steps"])
        guidance = float(defaults["guidance"] if guidance is None else guidance)
        embeds, pooled = self.encode_prompt(prompts)
        negative, negative_pooled = self.encode_prompt([""] * len(prompts))
        generator = torch.Generator("cpu").manual_seed(int(seed))
        pipe = self.pipeline()
        pipe.set_progress_bar_config(disable=True)
        call: dict[str, Any] = dict(
            num_inference_steps=steps, generator=generator, output_type="pt", height=size, width=size,
            prompt_embeds=embeds,
        )
        if self.name == "toy-sd3":
            call.update(
                guidance_scale=guidance, pooled_prompt_embeds=pooled, negative_prompt_embeds=negative,
                negative_pooled_prompt_embeds=negative_pooled,
            )
        elif self.name in ("toy-flux", "toy-kontext"):
            call.update(guidance_scale=guidance, pooled_prompt_embeds=pooled)
            if self.name == "toy-kontext":
                if image is None:
                    raise ValueError("toy-kontext edits a reference: pass image=(B,3,H,W) in [0,1]")
                # A 3-channel tensor equals this pipeline's latent width, so it is taken as latents as is:
                # hand over the pixel VAE's latents (2·img − 1) explicitly.
                call.update(image=self._batch(image, len(prompts)) * 2 - 1, max_area=size * size,
                            _auto_resize=False)
        else:
            call.update(guidance_scale=guidance, negative_prompt_embeds=negative)
            if self.controlnet is not None:
                if image is None:
                    raise ValueError("this toy-unet has a ControlNet: pass the control image as image=")
                call.update(image=self._batch(image, len(prompts)), controlnet_conditioning_scale=controlnet_scale)
            if self.ip_adapter:
                if ip_image is None:
                    raise ValueError("this toy-unet has an IP-Adapter: pass the image prompt as ip_image=")
                ip_embeds = self.encode_ip_image(self._batch(ip_image, len(prompts)))
                if guidance > 1:
                    ip_embeds = torch.cat([torch.zeros_like(ip_embeds), ip_embeds])
                pipe.set_ip_adapter_scale(ip_adapter_scale)
                call.update(ip_adapter_image_embeds=[ip_embeds])
        return pipe(**call).images.float().clamp(0, 1)

    def _batch(self, images: Tensor, batch: int) -> Tensor:
        images = images if images.dim() == 4 else images[None]
        if images.shape[0] == 1 and batch > 1:
            images = images.expand(batch, -1, -1, -1)
        if images.shape[0] != batch:
            raise ValueError(f"got {images.shape[0]} images for {batch} prompts")
        return images.to(device=self.device, dtype=self.dtype)


# --------------------------------------------------------------------------------------------------------------
def available() -> list[str]:
    """The toy model names (weights may still be missing; see ``manifest()``)."""
    return list(MODEL_NAMES)


def _random_towers(preset: str, seed: int, with_image: bool) -> tuple[ToyTextEncoder, ToyImageEncoder | None]:
    with seeded_init(seed + 1):
        text_encoder = make_text_encoder(preset)
    image_encoder = None
    if with_image:
        with seeded_init(seed + 2):
            image_encoder = make_image_encoder(preset)
    return text_encoder, image_encoder


def build(
    name: str,
    random_init: bool = True,
    *,
    preset: str = "full",
    seed: int = 0,
    controlnet: bool = False,
    ip_adapter: bool = False,
    clip: ToyBundle | None = None,
) -> ToyBundle:
    """The architecture of toy ``name`` with seeded random weights (the global RNG is left untouched).

    ``random_init=False`` takes the frozen text (and image) tower from ``clip`` or the packaged toy-clip, as
    training does; the trainable parts are always fresh. ``controlnet``/``ip_adapter`` add those parts to
    toy-unet; ``preset="ci"`` gives the tiny test configs.
    """
    _check_name(name)
    if (controlnet or ip_adapter) and name != "toy-unet":
        raise ValueError("controlnet and ip_adapter exist only for toy-unet")
    with_image = name == "toy-clip" or ip_adapter
    if random_init:
        text_encoder, image_encoder = _random_towers(preset, seed, with_image)
    else:
        clip = clip or load("toy-clip")
        text_encoder, image_encoder = clip.text_encoder, clip.image_encoder if with_image else None
    text_encoder.requires_grad_(name == "toy-clip")
    tokenizer = ToyTokenizer()
    if name == "toy-clip":
        return ToyBundle(name, None, text_encoder, tokenizer, None, None, image_encoder=image_encoder,
                         preset=preset, info={"source": "random" if random_init else "toy-clip"})
    with seeded_init(seed):
        if name == "toy-sd3":
            denoiser = make_sd3(preset)
        elif name in ("toy-kontext", "toy-flux"):
            denoiser = make_flux(preset)
        else:
            denoiser = make_unet(preset)
    control = None
    if controlnet:
        with seeded_init(seed + 3):
            control = make_controlnet(denoiser, preset)
    if ip_adapter:
        with seeded_init(seed + 4):
            state = make_ip_adapter_state_dict(denoiser, preset)
        load_ip_adapter_into(denoiser, state)
    if image_encoder is not None:
        image_encoder.requires_grad_(False)
    return ToyBundle(
        name, denoiser, text_encoder, tokenizer, make_vae(name), make_scheduler(name), controlnet=control,
        image_encoder=image_encoder, ip_adapter=ip_adapter, preset=preset, info={"source": "random"},
    )


# --------------------------------------------------------------------------------------------------------------
# the shipped weights
# --------------------------------------------------------------------------------------------------------------
def weights_root() -> Path:
    """``$FLOWCORE_TOY_WEIGHTS`` if set, else the package's ``flowcore/toy/weights`` folder."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        return Path(override).expanduser()
    root = importlib.resources.files("flowcore.toy").joinpath("weights")
    if not isinstance(root, Path):
        raise RuntimeError(
            "flowcore.toy's weights are inside an archive; install flowcore unzipped or set "
            f"{WEIGHTS_ENV}=/dir to a folder holding the weights"
        )
    return root


def _read_manifest(root: Path) -> tuple[dict[str, Any], str | None]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return {"format": 1, "models": {}}, None
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ToyWeightsCorrupted(f"{path} is not valid JSON ({exc}); restore it from git or re-export") from exc
    data.setdefault("models", {})
    return data, hashlib.sha256(raw).hexdigest()


def manifest() -> dict[str, Any]:
    """The parsed ``weights/MANIFEST.json`` (``{"format": 1, "models": {}}`` when there is none)."""
    return _read_manifest(weights_root())[0]


def train_hint(folder: str) -> str:
    models = {
        "toy-clip": ["toy-clip"], "toy-sd3": ["toy-sd3"], "toy-kontext": ["toy-kontext-a", "toy-kontext-b"],
        "toy-unet": ["toy-unet", "toy-unet-controlnet", "toy-unet-ip-adapter"],
    }[folder]
    steps = [
        f"python -m flowcore.toy train --model {m} --output-dir runs/{m} --resume auto && "
        f"python -m flowcore.toy export --run runs/{m} --name {folder}"
        for m in models
    ]
    return "; ".join(steps)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_VERIFIED: set[tuple[str, str, str]] = set()
_VERIFY_LOCK = threading.Lock()


def _verify_entry(root: Path, folder: str, entry: dict[str, Any], manifest_sha: str | None) -> None:
    key = (str(root), folder, manifest_sha or "")
    with _VERIFY_LOCK:
        if key in _VERIFIED:
            return
    problems = []
    for relative, record in sorted(entry.get("files", {}).items()):
        path = root / folder / relative
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != record.get("bytes") or sha256_file(path) != record.get("sha256"):
            problems.append(f"{path} does not match its sha256/size in {MANIFEST_NAME}")
    if problems:
        raise ToyWeightsCorrupted(
            f"toy weights '{folder}' failed verification: " + "; ".join(problems) + ". Fix: restore the files "
            f"with `git checkout -- {root / folder}` (or re-run the export), or point {WEIGHTS_ENV} at an intact "
            "copy; load(..., verify=False) skips the check."
        )
    with _VERIFY_LOCK:
        _VERIFIED.add(key)


def _locate(folder: str, verify_files: bool) -> tuple[Path, dict[str, Any], str | None]:
    root = weights_root()
    data, manifest_sha = _read_manifest(root)
    entry = data["models"].get(folder)
    if entry is None or not (root / folder).is_dir():
        raise ToyWeightsMissing(
            f"no shipped weights for '{folder}' in {root} ({MANIFEST_NAME} has no entry or the folder is "
            f"missing). Train and export them: {train_hint(folder)}. Or set {WEIGHTS_ENV}=/dir to a folder "
            "that holds them."
        )
    if verify_files:
        _verify_entry(root, folder, entry, manifest_sha)
    return root / folder, entry, manifest_sha


def verify() -> None:
    """Check every manifest entry's files against their sha256; raises ``ToyWeightsCorrupted`` on a mismatch."""
    root = weights_root()
    data, manifest_sha = _read_manifest(root)
    for folder, entry in data["models"].items():
        _verify_entry(root, folder, entry, manifest_sha)


def load(
    name: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
    controlnet: bool = False,
    ip_adapter: bool = False,
) -> ToyBundle:
    """The shipped toy ``name`` (stored fp16, loaded as ``dtype``), offline via ``from_pretrained``.

    toy-flux is toy-kontext's weights without a reference. ``controlnet``/``ip_adapter`` (toy-unet) add the edge
    ControlNet and the IP-Adapter (with toy-clip's image tower as its encoder). Raises ``ToyWeightsMissing``.
    """
    _check_name(name)
    if (controlnet or ip_adapter) and name != "toy-unet":
        raise ValueError("controlnet and ip_adapter exist only for toy-unet")
    folder = WEIGHTS_FOLDER[name]
    path, entry, manifest_sha = _locate(folder, verify)
    kwargs = dict(torch_dtype=dtype, local_files_only=True)
    if name == "toy-clip":
        text_encoder = ToyTextEncoder.from_pretrained(path / "text_encoder", **kwargs)
        image_encoder = ToyImageEncoder.from_pretrained(path / "image_encoder", **kwargs)
        tokenizer = ToyTokenizer.from_pretrained(path / "tokenizer")
        bundle = ToyBundle(name, None, text_encoder, tokenizer, None, None, image_encoder=image_encoder,
                           preset=entry.get("preset", "full"), weights_dir=path, manifest_sha256=manifest_sha,
                           info=dict(entry))
        return bundle.to(device).eval()
    clip = load("toy-clip", dtype=dtype, verify=verify)
    from diffusers import ControlNetModel, FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    denoiser_cls, subfolder = {
        "toy-sd3": (SD3Transformer2DModel, "transformer"),
        "toy-kontext": (FluxTransformer2DModel, "transformer"),
        "toy-flux": (FluxTransformer2DModel, "transformer"),
        "toy-unet": (UNet2DConditionModel, "unet"),
    }[name]
    _require(path / subfolder, name, folder)
    denoiser = denoiser_cls.from_pretrained(path / subfolder, **kwargs)
    scheduler = type(make_scheduler(name)).from_pretrained(path / "scheduler", local_files_only=True)
    control = None
    if controlnet:
        _require(path / "controlnet", "toy-unet (controlnet)", folder)
        control = ControlNetModel.from_pretrained(path / "controlnet", **kwargs)
    if ip_adapter:
        _require(path / "ip_adapter" / IP_ADAPTER_WEIGHT_NAME, "toy-unet (ip_adapter)", folder)
        from safetensors.torch import load_file

        state = {k: v.to(dtype) for k, v in load_file(path / "ip_adapter" / IP_ADAPTER_WEIGHT_NAME).items()}
        load_ip_adapter_into(denoiser, state)
    bundle = ToyBundle(
        name, denoiser, clip.text_encoder, clip.tokenizer, make_vae(name), scheduler, controlnet=control,
        image_encoder=clip.image_encoder if ip_adapter else None, ip_adapter=ip_adapter,
        preset=entry.get("preset", "full"), weights_dir=path, manifest_sha256=manifest_sha, info=dict(entry),
    )
    for module in bundle.modules().values():
        module.requires_grad_(False)
    return bundle.to(device).eval()


def _require(path: Path, what: str, folder: str) -> None:
    if not path.exists():
        raise ToyWeightsMissing(f"{path} is missing for {what}. Train and export it: {train_hint(folder)}")


# --------------------------------------------------------------------------------------------------------------
# toy CLIP scores (secondary to the judge)
# --------------------------------------------------------------------------------------------------------------
_CLIP_CACHE: dict[tuple[str, str], ToyBundle] = {}


def _clip_on(device: torch.device) -> ToyBundle:
    key = (str(weights_root()), str(device))
    if key not in _CLIP_CACHE:
        _CLIP_CACHE[key] = load("toy-clip", device=device)
    return _CLIP_CACHE[key]


@torch.no_grad()
def clip_score(images: Tensor, texts: str | Sequence[str], *, clip: ToyBundle | None = None) -> Tensor:
    """Toy CLIP-T: ``100·max(cos(image_embeds, text pooled), 0)`` per row, ``(B,)``; images ``(B,3,H,W)``."""
    clip = clip or _clip_on(images.device)
    texts = [texts] * images.shape[0] if isinstance(texts, str) else list(texts)
    if len(texts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images and {len(texts)} texts")
    image_embeds = clip.image_encoder(images.to(clip.device, clip.dtype)).image_embeds
    _, text_embeds = clip.encode_prompt(texts)
    return (100 * torch.cosine_similarity(image_embeds, text_embeds, dim=-1)).clamp(min=0).to(images.device)


@torch.no_grad()
def clip_image_similarity(a: Tensor, b: Tensor, *, clip: ToyBundle | None = None) -> Tensor:
    """Toy CLIP-I: cosine similarity of toy-clip image embeddings, ``(B,)``; ``a``, ``b`` ``(B,3,H,W)``."""
    clip = clip or _clip_on(a.device)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"batch sizes differ: {a.shape[0]} vs {b.shape[0]}")
    embed = clip.image_encoder
    ea = embed(a.to(clip.device, clip.dtype)).image_embeds
    eb = embed(b.to(clip.device, clip.dtype)).image_embeds
    return torch.cosine_similarity(ea, eb, dim=-1).to(a.device)
