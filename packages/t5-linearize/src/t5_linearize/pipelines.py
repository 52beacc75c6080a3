"""Pipelines that generate with a linearized transformer (spec §5 "Pipelines").

Stock diffusers pipelines already work with a linearized transformer (the layout is built inside the model). These
thin subclasses add loading (``from_pretrained(base, t5_transformer=...)``, ``from_pipe``), the ``ttt_backend``
call argument, a record of the backend used (``pipe.last_run``), and ``save_pretrained`` folders that plain
``DiffusionPipeline.from_pretrained`` reloads (``model_index.json`` names the stock pipeline class; the transformer
entry is ``["t5_linearize", "T5SD3Transformer2DModel"]``). Importing this module needs ``transformers``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxKontextPipeline, FluxPipeline, StableDiffusion3Pipeline
from torch import nn

from t5_linearize.models import (
    T5FluxTransformer2DModel,
    T5SD3Transformer2DModel,
    check_same_base,
    is_linearized,
)

__all__ = ["T5FluxKontextPipeline", "T5FluxPipeline", "T5StableDiffusion3Pipeline", "pipeline_for_model"]


class _T5PipelineMixin:
    _t5_class: type
    _stock_name: str

    @classmethod
    def _resolve_transformer(cls, t5_transformer: Any, torch_dtype: torch.dtype | None) -> nn.Module:
        if isinstance(t5_transformer, nn.Module):
            if not is_linearized(t5_transformer):
                raise TypeError("t5_transformer must be a linearized transformer (see t5_linearize.linearize)")
            model = t5_transformer
        else:
            model = cls._t5_class.from_pretrained(t5_transformer, torch_dtype=torch_dtype)
        if not isinstance(model, cls._t5_class):
            raise TypeError(f"{cls.__name__} needs a {cls._t5_class.__name__}, got {type(model).__name__}")
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, t5_transformer: Any = None,
                        **kwargs: Any):
        """Load the base pipeline (toy name, hub id or local folder) with ``t5_transformer`` (a folder written by
        ``save_pretrained``/``convert``/``finetune``, or a module) as its transformer. Without ``t5_transformer``
        the folder's own transformer is used (a saved T5 pipeline)."""
        name = str(pretrained_model_name_or_path)
        torch_dtype = kwargs.get("torch_dtype")
        model = None if t5_transformer is None else cls._resolve_transformer(t5_transformer, torch_dtype)
        if name.startswith("toy-"):
            from t5_linearize import toy

            bundle = toy.load_bundle(name, dtype=torch_dtype or torch.float32)
            pipe = cls(**bundle.pipeline().components)
            if model is not None:
                check_same_base(model, bundle.denoiser, f"the transformer of {name}")
                pipe.register_modules(transformer=model)
        else:
            if model is not None:
                stored = _stored_base_config(pretrained_model_name_or_path, kwargs)
                if stored is not None:
                    check_same_base(model, stored, f"the transformer of {name}")
                kwargs["transformer"] = model
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)  # type: ignore[misc]
        if not is_linearized(pipe.transformer):
            raise ValueError(f"{name} has an unconverted transformer: pass t5_transformer=DIR (a linearized "
                             "transformer) or convert it with `t5-linearize convert`")
        return pipe

    @classmethod
    def from_pipe(cls, pipeline: Any, t5_transformer: Any = None, **kwargs: Any):
        """A T5 pipeline sharing ``pipeline``'s components, with ``t5_transformer`` as its transformer."""
        if t5_transformer is not None:
            model = cls._resolve_transformer(t5_transformer, kwargs.get("torch_dtype"))
            if getattr(pipeline, "transformer", None) is not None and not is_linearized(pipeline.transformer):
                check_same_base(model, pipeline.transformer, "the pipeline's transformer")
            kwargs["transformer"] = model
        return super().from_pipe(pipeline, **kwargs)  # type: ignore[misc]

    def __call__(self, *args: Any, ttt_backend: str | None = None, **kwargs: Any):
        """The stock call; ``ttt_backend`` ("auto", "torch", "triton") overrides the config's backend for this
        call. ``self.last_run`` then holds the TTT config and the backend flowkernels actually used."""
        if ttt_backend is not None:
            jak = dict(kwargs.get("joint_attention_kwargs") or {})
            jak["ttt_backend"] = ttt_backend
            kwargs["joint_attention_kwargs"] = jak
        import flowkernels

        out = super().__call__(*args, **kwargs)  # type: ignore[misc]
        config = getattr(self.transformer, "linearize_config", None)  # type: ignore[attr-defined]
        self.last_run = {"ttt_config": None if config is None else config.to_dict(),
                         "backend_requested": ttt_backend or (config.backend if config else None),
                         "backend_used": flowkernels.last_backend()}
        return out

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``; ``model_index.json`` then names the stock pipeline class, so plain
        ``DiffusionPipeline.from_pretrained`` reloads the folder (the transformer entry points at t5_linearize)."""
        super().save_pretrained(save_directory, **kwargs)  # type: ignore[misc]
        from flowcore.io import write_json

        index = Path(save_directory) / "model_index.json"
        data = json.loads(index.read_text())
        data["_class_name"] = self._stock_name
        write_json(index, data)


def _stored_base_config(base: str | os.PathLike, kwargs: dict) -> dict[str, Any] | None:
    """The base pipeline's own transformer config (without loading its weights), or None when unavailable."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    for cls in (SD3Transformer2DModel, FluxTransformer2DModel):
        try:
            config = cls.load_config(base, subfolder="transformer", **hub)
        except (OSError, ValueError):
            return None
        if config.get("_class_name") in (cls.__name__, f"T5{cls.__name__}"):
            return {k: v for k, v in config.items() if not k.startswith("_")}
    return None


class T5StableDiffusion3Pipeline(_T5PipelineMixin, StableDiffusion3Pipeline):
    """``StableDiffusion3Pipeline`` with a ``T5SD3Transformer2DModel``."""

    _t5_class = T5SD3Transformer2DModel
    _stock_name = "StableDiffusion3Pipeline"


class T5FluxPipeline(_T5PipelineMixin, FluxPipeline):
    """``FluxPipeline`` with a ``T5FluxTransformer2DModel``."""

    _t5_class = T5FluxTransformer2DModel
    _stock_name = "FluxPipeline"


class T5FluxKontextPipeline(_T5PipelineMixin, FluxKontextPipeline):
    """``FluxKontextPipeline`` with a ``T5FluxTransformer2DModel`` (the reference image gets its own grid)."""

    _t5_class = T5FluxTransformer2DModel
    _stock_name = "FluxKontextPipeline"


def pipeline_for_model(base: str, transformer: str | os.PathLike, *, torch_dtype: torch.dtype | None = None):
    """The T5 pipeline matching ``base`` (its model_index.json class) with the linearized ``transformer`` folder."""
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(base)
    classes = {"StableDiffusion3Pipeline": T5StableDiffusion3Pipeline, "FluxPipeline": T5FluxPipeline,
               "FluxKontextPipeline": T5FluxKontextPipeline}
    cls = classes.get(index.get("_class_name"))
    if cls is None:
        raise ValueError(f"{base} is a {index.get('_class_name')}; t5-linearize supports {sorted(classes)}")
    return cls.from_pretrained(base, t5_transformer=transformer, torch_dtype=torch_dtype)
