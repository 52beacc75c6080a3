"""Loading the base model and its edge ControlNet C: toy names, hub ids and local paths.

- ``toy-unet``: toyworld's edge ControlNet (``flowcore.toy.load("toy-unet", controlnet=True)``).
- ``toy-sd3``: the ControlNet that ``style-attr train-controlnet --model toy-sd3`` trains (``--controlnet DIR``,
  default the committed asset ``style_attr/assets/toy/toy-sd3-controlnet``).
- real models: a diffusers pipeline folder or hub id plus ``--controlnet`` (a ``ControlNetModel`` or
  ``SD3ControlNetModel`` folder or hub id).

``random_init=True`` builds the toys with random weights (tests, CI smoke runs): toy-sd3 then gets a fresh
``SD3ControlNetModel.from_transformer`` copy with ``L − 1`` layers.
"""

from __future__ import annotations

import copy
import importlib.resources
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowcore.seeding import seeded_init

__all__ = ["ASSET_NAMES", "DEFAULT_CFG", "DEFAULT_STEPS", "asset_path", "load_base", "sd3_controlnet_for"]

TOY_MODELS = ("toy-unet", "toy-sd3")
DEFAULT_CFG = {"toy-unet": 7.5, "toy-sd3": 5.0, "sd15": 7.5, "sd3": 7.0}
DEFAULT_STEPS = {"toy-unet": 50, "toy-sd3": 28, "sd15": 50, "sd3": 28}
ASSET_NAMES = {"toy-sd3-controlnet": "toy-sd3-controlnet", "toy-unet-outline": "toy-unet-outline",
               "toy-sd3-outline": "toy-sd3-outline", "toy-unet-outline-baseline": "toy-unet-outline-baseline",
               "toy-sd3-outline-baseline": "toy-sd3-outline-baseline"}


def asset_path(name: str) -> Path:
    """Where a committed toy asset lives (``style_attr/assets/toy/<name>``); it may not exist yet."""
    root = importlib.resources.files("style_attr").joinpath("assets", "toy")
    return Path(str(root)) / name


class MissingAssetError(FileNotFoundError):
    """A style-attr toy asset (trained ControlNet or attribute network) is not committed yet."""


def sd3_controlnet_for(transformer: nn.Module, num_layers: int | None = None) -> nn.Module:
    """``SD3ControlNetModel.from_transformer`` on a deep copy (it mutates the config it reads), with at most
    ``L − 1`` layers (the last transformer block is ``context_pre_only``) and no extra conditioning channels."""
    from diffusers import SD3ControlNetModel

    depth = int(transformer.config.num_layers)
    layers = max(1, depth - 1) if num_layers is None else min(num_layers, max(1, depth - 1))
    if depth > 1:
        return SD3ControlNetModel.from_transformer(copy.deepcopy(transformer), num_layers=layers,
                                                   num_extra_conditioning_channels=0)
    # a one-block transformer's only block is context_pre_only: copy the embeddings, keep fresh blocks
    controlnet = SD3ControlNetModel.from_transformer(copy.deepcopy(transformer), num_layers=1,
                                                     num_extra_conditioning_channels=0,
                                                     load_weights_from_transformer=False)
    for name in ("pos_embed", "time_text_embed", "context_embedder"):
        getattr(controlnet, name).load_state_dict(getattr(transformer, name).state_dict())
    return controlnet


def _family_key(model: Any) -> str:
    if model.is_toy:
        return model.model_id
    return "sd3" if model.family == "rf" else "sd15"


def default_cfg(model: Any) -> float:
    return DEFAULT_CFG.get(_family_key(model), 7.5 if model.family == "vp" else 5.0)


def default_steps(model: Any) -> int:
    return DEFAULT_STEPS.get(_family_key(model), 50 if model.family == "vp" else 28)


def load_base(name: str, *, controlnet: str | os.PathLike | nn.Module | None = None, device: str | torch.device =
              "cpu", dtype: torch.dtype = torch.float32, random_init: bool = False, preset: str = "full",
              need_controlnet: bool = True) -> Any:
    """A FlowModel with its edge ControlNet (``model.controlnet``).

    Raises ``flowcore.toy.ToyWeightsMissing`` when toy weights are missing and :class:`MissingAssetError` when the
    toy-sd3 ControlNet asset is missing (both name the command that produces them).
    """
    if name in ("toy-unet", "toy-sd3"):
        return _load_toy(name, controlnet, device, dtype, random_init, preset, need_controlnet)
    if name.startswith("toy-"):
        raise ValueError(f"style-attr supports the toys toy-unet and toy-sd3, not {name!r}")
    from flowcore.adapters import load_model

    model = load_model(name, torch_dtype=dtype, device=device)
    if isinstance(controlnet, nn.Module):
        model.controlnet = controlnet.to(device)
    elif controlnet is not None:
        model.controlnet = _load_controlnet(str(controlnet), model, device, dtype)
    elif model.controlnet is None and need_controlnet:
        raise ValueError(f"{name} has no ControlNet: pass --controlnet (e.g. lllyasviel/control_v11p_sd15_canny or "
                         "InstantX/SD3-Controlnet-Canny)")
    return model


def _load_controlnet(spec: str, model: Any, device: Any, dtype: torch.dtype) -> nn.Module:
    import diffusers

    cls = diffusers.SD3ControlNetModel if model.family == "rf" else diffusers.ControlNetModel
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        net = cls.from_pretrained(spec, torch_dtype=dtype, local_files_only=offline or Path(spec).exists())
    except OSError as err:
        raise FileNotFoundError(f"could not load the ControlNet {spec!r} ({err}); download it first or pass a "
                                "local folder") from err
    return net.to(device)


def _load_toy(name: str, controlnet: Any, device: Any, dtype: torch.dtype, random_init: bool, preset: str,
              need_controlnet: bool) -> Any:
    from flowcore import toy

    is_unet = name == "toy-unet"
    if random_init:
        bundle = toy.build(name, random_init=True, preset=preset, controlnet=is_unet and need_controlnet)
    else:
        bundle = toy.load(name, device="cpu", dtype=torch.float32, controlnet=is_unet and need_controlnet)
    model = bundle.adapter()
    if isinstance(controlnet, nn.Module):
        model.controlnet = controlnet
    elif controlnet is not None:
        model.controlnet = _load_controlnet(str(controlnet), model, "cpu", torch.float32)
    elif not is_unet and need_controlnet:
        if random_init:
            with seeded_init(3):
                model.controlnet = sd3_controlnet_for(model.denoiser)
        else:
            path = asset_path("toy-sd3-controlnet")
            if not (path / "config.json").is_file():
                raise MissingAssetError(
                    f"the toy-sd3 edge ControlNet is not committed yet ({path}). Train it once toy weights exist: "
                    "style-attr train-controlnet --model toy-sd3 --output-dir runs/toy-sd3-controlnet, then copy it to "
                    f"{path} (or pass --controlnet runs/toy-sd3-controlnet)")
            model.controlnet = _load_controlnet(str(path), model, "cpu", torch.float32)
    if random_init and model.controlnet is not None:
        wake_zero_outputs(model.controlnet, seed=4)
    for module in (model.denoiser, model.controlnet):
        if module is not None:
            module.requires_grad_(False)
            module.to(device=device)
            if next(module.parameters()).dtype != dtype:
                module.to(dtype=dtype)
            module.eval()
    model.vae.to(device=device)
    for part in (getattr(bundle, "text_encoder", None), getattr(bundle, "image_encoder", None)):
        if part is not None:
            part.to(device=device)
    return model


def wake_zero_outputs(controlnet: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Random-init testing only: give a fresh ControlNet's zero-initialised output layers small random weights, so
    its residuals (and an attribute network on it) act before any training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_blocks", "pos_embed_input"):
            module = getattr(controlnet, name, None)
            for layer in (module.modules() if module is not None else []):
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)
    return controlnet


