"""Pipeline wrappers: the stock diffusers editing pipelines with SpecEdit applied (spec §5).

They subclass the stock pipelines (``from_pretrained`` and ``from_pipe`` keep working and accept
``specedit_config=``), keep every stock argument, encode the prompts once, prime the hook with every true-CFG
branch (so the draft uses the same guidance), call the stock ``__call__`` with the embeddings and return
``SpecEditPipelineOutput(images, specedit)``. ``specedit_config=SpecEditConfig(mask_override="all", n_coarse=0)``
reproduces the parent pipeline bit for bit.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FluxKontextPipeline, QwenImageEditPipeline
from diffusers.utils import BaseOutput

from specedit.config import SpecEditConfig
from specedit.hooks import _hook_of, apply_specedit, prime_specedit, remove_specedit, specedit_summary
from specedit.stats import SpecEditStats

__all__ = [
    "SpecEditFluxKontextPipeline",
    "SpecEditPipelineMixin",
    "SpecEditPipelineOutput",
    "SpecEditQwenImageEditPipeline",
    "SpecEditToyKontextPipeline",
    "enable_specedit",
]


@dataclass
class SpecEditPipelineOutput(BaseOutput):
    """``images`` as the stock pipeline returns them; ``specedit``: one :class:`SpecEditStats` per output image
    (one shared layout per batch, so the entries are the same object)."""

    images: Any
    specedit: list[SpecEditStats] | None = None


class SpecEditPipelineMixin:
    """Adds SpecEdit to a stock pipeline class (put it first in the bases)."""

    @classmethod
    def from_pretrained(cls, *args: Any, specedit_config: SpecEditConfig | None = None, **kwargs: Any):
        pipe = super().from_pretrained(*args, **kwargs)  # type: ignore[misc]
        pipe.set_specedit_config(specedit_config)
        return pipe

    @classmethod
    def from_pipe(cls, pipeline: Any, *, specedit_config: SpecEditConfig | None = None, **kwargs: Any):
        """A SpecEdit pipeline sharing ``pipeline``'s components (the transformer is hooked in place).

        Components are passed explicitly (so toy parts whose classes differ from the type hints are kept) and the
        dtype defaults to the transformer's (diffusers' ``from_pipe`` would otherwise cast to float32)."""
        for name, component in pipeline.components.items():
            kwargs.setdefault(name, component)
        transformer = getattr(pipeline, "transformer", None)
        if transformer is not None and "torch_dtype" not in kwargs and "dtype" not in kwargs:
            kwargs["dtype"] = transformer.dtype
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # from_pipe's dtype cast logs a notice per component
        try:
            pipe = super().from_pipe(pipeline, **kwargs)  # type: ignore[misc]
        finally:
            diffusers_logging.set_verbosity(level)
        pipe._progress_bar_config = dict(getattr(pipeline, "_progress_bar_config", {}) or {})
        pipe.set_specedit_config(specedit_config)
        return pipe

    def set_specedit_config(self, config: SpecEditConfig | None = None) -> None:
        """(Re)apply SpecEdit with ``config`` (default config when None)."""
        try:
            _hook_of(self)
            remove_specedit(self)
        except ValueError:
            pass
        apply_specedit(self, config or SpecEditConfig())

    @property
    def specedit_config(self) -> SpecEditConfig:
        return _hook_of(self).config

    def specedit_summary(self) -> SpecEditStats:
        return specedit_summary(self)

    # ----------------------------------------------------------------------------------------------- call
    def _bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        signature = inspect.signature(super().__call__)  # type: ignore[misc]
        bound = signature.bind_partial(*args, **kwargs)
        return dict(bound.arguments)

    def _prepare(self, kw: dict[str, Any]) -> tuple[dict[str, Any], list[dict], float | None, str]:
        """Encode prompts once; return the stock call's keywords, the CFG branches, the CFG scale and rule."""
        raise NotImplementedError

    def __call__(self, *args: Any, specedit_config: SpecEditConfig | None = None,
                 return_specedit_info: bool = True, **kwargs: Any):
        kw = self._bind(args, kwargs)
        hook = _hook_of(self)
        saved = hook.config
        if specedit_config is not None:
            if specedit_config.coarse_attention == "kv_cache":
                raise NotImplementedError("coarse_attention='kv_cache' is not part of v1")
            hook.config = specedit_config
        try:
            with torch.no_grad():
                call_kw, branches, scale, rule = self._prepare(kw)
            prime_specedit(self.transformer, branches=branches, cfg_scale=scale, cfg_rule=rule)  # type: ignore[attr-defined]
            out = super().__call__(**call_kw)  # type: ignore[misc]
        finally:
            hook.config = saved
            hook.prime = None
        stats = hook.last_stats
        images = out.images if hasattr(out, "images") else out[0]
        count = len(images) if isinstance(images, (list, tuple)) or hasattr(images, "shape") else 1
        info = [stats] * count if (return_specedit_info and stats is not None) else None
        if not call_kw.get("return_dict", True):
            return (images, info) if return_specedit_info else (images,)
        return SpecEditPipelineOutput(images=images, specedit=info)


class SpecEditFluxKontextPipeline(SpecEditPipelineMixin, FluxKontextPipeline):
    """``FluxKontextPipeline`` with SpecEdit (true CFG combined with the plain rule, as the stock pipeline does)."""

    def _prepare(self, kw: dict[str, Any]) -> tuple[dict[str, Any], list[dict], float | None, str]:
        kw = dict(kw)
        device = self._execution_device
        per_prompt = kw.get("num_images_per_prompt", 1) or 1
        max_len = kw.get("max_sequence_length", 512)
        lora = (kw.get("joint_attention_kwargs") or {}).get("scale")
        if kw.get("prompt_embeds") is None:
            embeds, pooled, text_ids = self.encode_prompt(
                prompt=kw.get("prompt"), prompt_2=kw.get("prompt_2"), device=device,
                num_images_per_prompt=per_prompt, max_sequence_length=max_len, lora_scale=lora)
            kw.update(prompt=None, prompt_2=None, prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                      num_images_per_prompt=1)
        else:
            embeds, pooled = kw["prompt_embeds"], kw.get("pooled_prompt_embeds")
            text_ids = torch.zeros(embeds.shape[1], 3).to(device=device, dtype=embeds.dtype)
        branches = [{"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}]
        scale = float(kw.get("true_cfg_scale", 1.0) or 1.0)
        has_negative = kw.get("negative_prompt") is not None or (
            kw.get("negative_prompt_embeds") is not None and kw.get("negative_pooled_prompt_embeds") is not None)
        if scale > 1 and has_negative:
            if kw.get("negative_prompt_embeds") is None:
                neg, neg_pooled, neg_ids = self.encode_prompt(
                    prompt=kw.get("negative_prompt"), prompt_2=kw.get("negative_prompt_2"), device=device,
                    num_images_per_prompt=per_prompt, max_sequence_length=max_len, lora_scale=lora)
                kw.update(negative_prompt=None, negative_prompt_2=None, negative_prompt_embeds=neg,
                          negative_pooled_prompt_embeds=neg_pooled)
            else:
                neg, neg_pooled = kw["negative_prompt_embeds"], kw["negative_pooled_prompt_embeds"]
                neg_ids = torch.zeros(neg.shape[1], 3).to(device=device, dtype=neg.dtype)
            branches.append({"encoder_hidden_states": neg, "pooled_projections": neg_pooled, "txt_ids": neg_ids})
            return kw, branches, scale, "plain"
        return kw, branches, None, "plain"


class SpecEditQwenImageEditPipeline(SpecEditPipelineMixin, QwenImageEditPipeline):
    """``QwenImageEditPipeline`` with SpecEdit (the draft's true CFG uses the pipeline's norm rescale)."""

    def _prepare(self, kw: dict[str, Any]) -> tuple[dict[str, Any], list[dict], float | None, str]:
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module

        kw = dict(kw)
        device = self._execution_device
        per_prompt = kw.get("num_images_per_prompt", 1) or 1
        max_len = kw.get("max_sequence_length", 512)
        image = kw.get("image")
        prompt_image = None
        if image is not None and not (isinstance(image, torch.Tensor) and image.size(1) == self.latent_channels):
            size = image[0].size if isinstance(image, list) else image.size
            width, height, _ = module.calculate_dimensions(1024 * 1024, size[0] / size[1])
            prompt_image = self.image_processor.resize(image, height, width)

        def encode(prompt: Any, embeds: Any, mask: Any) -> tuple[Any, Any]:
            if embeds is None:
                embeds, mask = self.encode_prompt(image=prompt_image, prompt=prompt, device=device,
                                                  num_images_per_prompt=1, max_sequence_length=max_len)
            return embeds, mask

        def repeat(embeds: Any, mask: Any) -> tuple[Any, Any]:
            batch, seq = embeds.shape[:2]
            rep = embeds.repeat(1, per_prompt, 1).view(batch * per_prompt, seq, -1)
            rep_mask = None if mask is None else mask.repeat(1, per_prompt, 1).view(batch * per_prompt, seq)
            return rep, rep_mask

        embeds, mask = encode(kw.get("prompt"), kw.get("prompt_embeds"), kw.get("prompt_embeds_mask"))
        kw.update(prompt=None, prompt_embeds=embeds, prompt_embeds_mask=mask)
        emb_r, mask_r = repeat(embeds, mask)
        branches = [{"encoder_hidden_states": emb_r, "encoder_hidden_states_mask": mask_r}]
        scale = float(kw.get("true_cfg_scale", 4.0) if kw.get("true_cfg_scale") is not None else 4.0)
        has_negative = kw.get("negative_prompt") is not None or kw.get("negative_prompt_embeds") is not None
        if scale > 1 and has_negative:
            neg, neg_mask = encode(kw.get("negative_prompt"), kw.get("negative_prompt_embeds"),
                                   kw.get("negative_prompt_embeds_mask"))
            kw.update(negative_prompt=None, negative_prompt_embeds=neg, negative_prompt_embeds_mask=neg_mask)
            neg_r, neg_mask_r = repeat(neg, neg_mask)
            branches.append({"encoder_hidden_states": neg_r, "encoder_hidden_states_mask": neg_mask_r})
            return kw, branches, scale, "qwen_rescale"
        return kw, branches, None, "qwen_rescale"


class SpecEditToyKontextPipeline(SpecEditFluxKontextPipeline):
    """toy-kontext with SpecEdit: prompts through ``ToyBundle.encode_prompt``, images in ``[0, 1]`` at 32 px.

    Build it with :meth:`from_toy`. ``image`` may be a ``(B, 3, 32, 32)`` tensor in ``[0, 1]`` (it is handed to the
    stock pipeline as the pixel VAE's latents ``2·img − 1``); calls always use ``max_area=32*32,
    _auto_resize=False``.
    """

    _toy_bundle: Any = None

    @classmethod
    def from_toy(cls, name: str = "toy-kontext", *, bundle: Any = None, random_init: bool = False,
                 specedit_config: SpecEditConfig | None = None) -> SpecEditToyKontextPipeline:
        """From the shipped toy weights (``flowcore.toy.load``; raises ``ToyWeightsMissing``), a given ``bundle``,
        or ``random_init=True`` (tests)."""
        if bundle is None:
            from specedit import toy

            bundle = toy.build_bundle(name) if random_init else toy.load_bundle(name)
        stock = bundle.pipeline()
        stock.set_progress_bar_config(disable=True)
        pipe = cls.from_pipe(stock, specedit_config=specedit_config)
        pipe.set_progress_bar_config(disable=True)
        pipe._toy_bundle = bundle
        return pipe

    def _prepare(self, kw: dict[str, Any]) -> tuple[dict[str, Any], list[dict], float | None, str]:
        kw = dict(kw)
        bundle = self._toy_bundle
        if bundle is None:
            raise ValueError("build SpecEditToyKontextPipeline with from_toy(...) so prompts can be encoded")
        if kw.get("prompt_embeds") is None:
            prompt = kw.pop("prompt", None)
            if prompt is None:
                raise ValueError("pass prompt= (or prompt_embeds= and pooled_prompt_embeds=)")
            embeds, pooled = bundle.encode_prompt(prompt)
            kw.update(prompt=None, prompt_embeds=embeds, pooled_prompt_embeds=pooled)
        if kw.get("negative_prompt") is not None and kw.get("negative_prompt_embeds") is None:
            neg, neg_pooled = bundle.encode_prompt(kw.pop("negative_prompt"))
            kw.update(negative_prompt=None, negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled)
        image = kw.get("image")
        if isinstance(image, torch.Tensor) and image.ndim in (3, 4) and image.shape[-3] == 3:
            image = image if image.ndim == 4 else image[None]
            if image.min() < -1e-6 or image.max() > 1 + 1e-6:
                raise ValueError("toy images must be (B, 3, H, W) in [0, 1]")
            kw["image"] = (image * 2 - 1).to(device=self._execution_device, dtype=self.transformer.dtype)
        kw.setdefault("height", 32)
        kw.setdefault("width", 32)
        kw["max_area"] = kw["height"] * kw["width"]
        kw["_auto_resize"] = False
        kw.setdefault("guidance_scale", 2.5)
        return super()._prepare(kw)


_WRAPPERS = {"FluxKontextPipeline": SpecEditFluxKontextPipeline, "QwenImageEditPipeline": SpecEditQwenImageEditPipeline}


def enable_specedit(pipe: Any, config: SpecEditConfig | None = None) -> SpecEditPipelineMixin:
    """One line: the SpecEdit version of a stock Kontext / Qwen-Image-Edit pipeline (components shared)."""
    if isinstance(pipe, SpecEditPipelineMixin):
        pipe.set_specedit_config(config)
        return pipe
    for cls in type(pipe).__mro__:
        wrapper = _WRAPPERS.get(cls.__name__)
        if wrapper is not None:
            return wrapper.from_pipe(pipe, specedit_config=config)
    raise TypeError(f"enable_specedit supports {sorted(_WRAPPERS)}, got {type(pipe).__name__}; for other call "
                    "conventions use apply_specedit on the transformer")
