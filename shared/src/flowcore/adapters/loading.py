"""Build adapters from toy names, hub ids, local paths, pipelines and toy bundles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from flowcore.adapters.base import Conditioning, FlowModel
from flowcore.adapters.families import FluxKontextModel, FluxModel, QwenImageEditModel, SD3Model, UNetModel

__all__ = ["ModelNotFoundError", "adapter_class_for", "adapter_from_pipe", "adapter_from_toy", "load_model"]

# pipeline class name (model_index.json "_class_name") -> adapter
_PIPELINES: dict[str, type[FlowModel]] = {
    "StableDiffusion3Pipeline": SD3Model,
    "StableDiffusion3Img2ImgPipeline": SD3Model,
    "StableDiffusion3ControlNetPipeline": SD3Model,
    "FluxPipeline": FluxModel,
    "FluxImg2ImgPipeline": FluxModel,
    "FluxKontextPipeline": FluxKontextModel,
    "QwenImageEditPipeline": QwenImageEditModel,
    "QwenImageEditPlusPipeline": QwenImageEditModel,
    "StableDiffusionPipeline": UNetModel,
    "StableDiffusionImg2ImgPipeline": UNetModel,
    "StableDiffusionControlNetPipeline": UNetModel,
    "StableDiffusionXLPipeline": UNetModel,
    "StableDiffusionXLImg2ImgPipeline": UNetModel,
    "StableDiffusionXLControlNetPipeline": UNetModel,
}


class ModelNotFoundError(FileNotFoundError):
    """A model id that is neither a toy name, a local folder, nor in the local Hugging Face cache."""


def adapter_class_for(pipeline_class_name: str) -> type[FlowModel]:
    try:
        return _PIPELINES[pipeline_class_name]
    except KeyError:
        raise ValueError(f"no flowcore adapter for {pipeline_class_name}; supported: {sorted(_PIPELINES)}") from None


def adapter_from_pipe(pipe: Any) -> FlowModel:
    """The adapter matching a loaded diffusers pipeline (dispatch on its class)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in _PIPELINES:
            return _PIPELINES[cls.__name__].from_pipe(pipe)
    raise ValueError(f"no flowcore adapter for {type(pipe).__name__}; supported: {sorted(_PIPELINES)}")


def adapter_from_toy(bundle: Any) -> FlowModel:
    """The adapter of a :class:`flowcore.toy.ToyBundle` (toy-sd3, toy-flux, toy-kontext, toy-unet)."""

    def encode(prompts: list[str], **_: Any) -> Conditioning:
        seq, pooled = bundle.encode_prompt(prompts)
        text_ids = torch.zeros(seq.shape[1], 3, device=seq.device, dtype=seq.dtype) if "flux" in kind else None
        return Conditioning(seq, None if kind == "unet" else pooled, text_ids=text_ids)

    name = bundle.name
    kind = {"toy-sd3": "sd3", "toy-flux": "flux", "toy-kontext": "flux-kontext", "toy-unet": "unet"}.get(name)
    if kind is None:
        raise ValueError(f"{name} has no diffusion adapter (toy models with one: toy-sd3, toy-flux, toy-kontext, "
                         "toy-unet)")
    cls = {"sd3": SD3Model, "flux": FluxModel, "flux-kontext": FluxKontextModel, "unet": UNetModel}[kind]
    image_encoder = getattr(bundle, "encode_ip_image", None) if kind == "unet" else None
    return cls(bundle.denoiser, bundle.vae, bundle.scheduler, prompt_encoder=encode, model_id=name, is_toy=True,
               controlnet=getattr(bundle, "controlnet", None), image_encoder=image_encoder,
               tokenizer=bundle.tokenizer)


def _is_toy(name: str) -> bool:
    return name.startswith("toy-")


def _pipeline_class_name(name_or_path: str) -> str:
    """Read ``_class_name`` from model_index.json of a local folder or the local hub cache (never downloads
    when ``HF_HUB_OFFLINE=1``)."""
    import json

    path = Path(name_or_path)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ModelNotFoundError(f"{path} has no model_index.json: point at a diffusers pipeline folder "
                                     "(saved with save_pretrained)")
        return json.loads(index.read_text())["_class_name"]
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{name_or_path} is not a folder with a diffusers pipeline")
    try:
        from huggingface_hub import hf_hub_download

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        index = hf_hub_download(name_or_path, "model_index.json", local_files_only=offline)
    except Exception as err:  # any hub failure becomes one actionable message
        raise ModelNotFoundError(
            f"model {name_or_path!r} is not a toy name (flowcore.toy.available()), not a local folder, and could "
            f"not be found in the Hugging Face cache ({type(err).__name__}). Download it first "
            f"(`huggingface-cli download {name_or_path}`) or pass a local path."
        ) from err
    return json.loads(Path(index).read_text())["_class_name"]


def load_model(name_or_path: str, *, torch_dtype: torch.dtype | None = None,
               device: torch.device | str | None = None, adapter_class: type[FlowModel] | None = None,
               **components: Any) -> FlowModel:
    """A :class:`FlowModel` for a toy name, a hub id or a local pipeline folder.

    Args:
        name_or_path: ``toy-sd3`` / ``toy-flux`` / ``toy-kontext`` / ``toy-unet``, a hub id or a local path.
        torch_dtype, device: passed to the pipeline (toys load in fp32 on ``device``).
        adapter_class: the adapter to build (default: chosen from model_index.json).
        components: extra pipeline components (e.g. ``controlnet=``), passed to ``from_pretrained``.
    """
    if _is_toy(name_or_path):
        from flowcore import toy

        if name_or_path not in toy.available():
            raise ModelNotFoundError(f"unknown toy model {name_or_path!r}; available: {toy.available()}")
        bundle = toy.load(name_or_path, device=device or "cpu", dtype=torch_dtype or torch.float32,
                          controlnet=bool(components.pop("controlnet", False)),
                          ip_adapter=bool(components.pop("ip_adapter", False)))
        return bundle.adapter()
    cls_name = _pipeline_class_name(name_or_path)
    import diffusers

    pipe_cls = getattr(diffusers, cls_name, None)
    if pipe_cls is None:
        raise ValueError(f"diffusers {diffusers.__version__} has no pipeline class {cls_name}")
    pipe = pipe_cls.from_pretrained(name_or_path, torch_dtype=torch_dtype, **components)
    if device is not None:
        pipe.to(device)
    cls = adapter_class if adapter_class not in (None, FlowModel) else adapter_class_for(cls_name)
    return cls.from_pipe(pipe)  # type: ignore[union-attr]
