"""Diffusers pipeline subclasses with ``invert()`` and an editing ``__call__`` (spec §5).

``DirectEditSD3Pipeline(StableDiffusion3Pipeline)``, ``DirectEditFluxPipeline(FluxPipeline)`` and
``DirectEditFluxKontextPipeline(FluxKontextPipeline)`` inherit ``from_pretrained`` and ``from_pipe``; the work is
done by :mod:`directedit.core` through the matching flowcore adapter. Prompts go through the pipeline's own
``encode_prompt`` (or precomputed ``prompt_embeds``); toy pipelines from :func:`load_pipeline` use the toy's
prompt encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import FluxKontextPipeline, FluxPipeline, StableDiffusion3Pipeline

from directedit.cache import InversionCache
from directedit.config import DirectEditConfig, ValueInjection
from directedit.core import EditResult, decode_latents, edit, encode_prompts, invert
from directedit.masks import AttentionMask, UserMask
from directedit.rows import NFECount
from flowcore.adapters import Conditioning, FluxKontextModel, FluxModel, SD3Model
from flowcore.images import check_image, pad_to_multiple, to_pil, to_tensor

__all__ = [
    "DirectEditFluxKontextPipeline",
    "DirectEditFluxPipeline",
    "DirectEditPipelineOutput",
    "DirectEditSD3Pipeline",
    "load_pipeline",
]


@dataclass
class DirectEditPipelineOutput:
    """``images``: the edits (PIL list, ``(n,3,H,W)`` tensor, numpy or latents per ``output_type``);
    ``reconstructions``: the source-branch outputs in the same format; ``masks``: the blend mask (or ``None``);
    ``nfe``: calls and rows; ``result``: the full :class:`~directedit.EditResult`."""

    images: Any
    reconstructions: Any
    masks: Any
    nfe: NFECount
    result: EditResult | None = field(default=None, repr=False)


def _format(images: list[torch.Tensor] | None, latents: torch.Tensor | None, output_type: str) -> Any:
    if output_type == "latent":
        return latents
    if images is None:
        return None
    batch = torch.stack(images)
    if output_type == "pil":
        return to_pil(batch)
    if output_type == "pt":
        return batch
    if output_type == "np":
        return batch.permute(0, 2, 3, 1).numpy().astype(np.float32)
    raise ValueError(f"output_type must be 'pil', 'pt', 'np' or 'latent', got {output_type!r}")


class _DirectEditMixin:
    """Shared implementation; the subclasses only pick the adapter class."""

    _adapter_class: Any = SD3Model
    _flow_model: Any = None

    def flow_model(self) -> Any:
        """The flowcore adapter over this pipeline's components (toy pipelines carry their own)."""
        if self._flow_model is not None:
            return self._flow_model
        return self._adapter_class.from_pipe(self)

    def _conditioning(self, model: Any, prompts: list[str] | None, embeds: Any, pooled: Any,
                      what: str) -> Conditioning:
        if embeds is not None:
            text_ids = None
            if isinstance(model, FluxModel):
                text_ids = torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=embeds.dtype)
            return Conditioning(embeds.to(model.device), None if pooled is None else pooled.to(model.device),
                                text_ids=text_ids, prompts=None if prompts is None else tuple(prompts))
        if prompts is None:
            raise ValueError(f"give {what} (a prompt string) or its precomputed embeddings")
        return encode_prompts(model, prompts)

    def _uncond(self, model: Any, n: int, embeds: Any, pooled: Any) -> Conditioning | None:
        if model.guidance_kind != "cfg" or embeds is None:
            return None
        rows = Conditioning(embeds.to(model.device), None if pooled is None else pooled.to(model.device),
                            prompts=("",) * embeds.shape[0])
        return rows if len(rows) == n else rows[[0] * n]

    def _image(self, model: Any, image: Any) -> tuple[torch.Tensor, Any]:
        img = check_image(to_tensor(image), name="image")
        padded, pad = pad_to_multiple(img, model.pad_multiple, mode="white")
        return padded, pad

    @torch.no_grad()
    def invert(self, image: Any, source_prompt: str | None = None, *, num_inference_steps: int = 30,
               source_guidance_scale: float = 1.0, prompt_embeds: Any = None, pooled_prompt_embeds: Any = None,
               negative_prompt_embeds: Any = None, negative_pooled_prompt_embeds: Any = None,
               sigma_grid: Any = "scheduler", skip_steps: int = 0, source_branch: str = "batched",
               attn_ratio: float | None = None, attn_steps: int | None = None, blocks: Any = "default",
               include_attn2: bool = False, rows: str = "cond", fold_unit_guidance: bool = False,
               mask_words: list[str] | None = None, target_prompt: str | None = None,
               reference_image: Any = None) -> InversionCache:
        """Invert ``image`` (PIL / path / tensor in [0, 1]) under ``source_prompt`` and keep the trajectory.

        ``source_branch="cached"`` records the source Values for the given injection settings; ``mask_words`` or
        ``target_prompt`` record the attention map for ``mask_image="attention"``.
        """
        model = self.flow_model()
        padded, _ = self._image(model, image)
        injection = ValueInjection(ratio=attn_ratio, steps=attn_steps, blocks=blocks, include_attn2=include_attn2,
                                   rows=rows)  # type: ignore[arg-type]
        config = DirectEditConfig(num_steps=num_inference_steps, source_guidance=source_guidance_scale,
                                  injection=injection, source_branch=source_branch,  # type: ignore[arg-type]
                                  skip_steps=skip_steps, sigma_grid=sigma_grid, fold_unit_guidance=fold_unit_guidance)
        src = self._conditioning(model, None if source_prompt is None else [source_prompt], prompt_embeds,
                                 pooled_prompt_embeds, "source_prompt")
        uncond = self._uncond(model, 1, negative_prompt_embeds, negative_pooled_prompt_embeds)
        probe = None
        if mask_words is not None or target_prompt is not None:
            probe = AttentionMask(mask_words, source_prompt=source_prompt, target_prompt=target_prompt)
        reference = self._reference(model, padded, reference_image)
        z0 = model.encode_image(padded.to(model.device))
        cache = invert(model, z0, src, config=config, source_uncond=uncond, mask_probe=probe, reference=reference,
                       image_size=(padded.shape[-2], padded.shape[-1]),
                       original_size=(int(to_tensor(image).shape[-2]), int(to_tensor(image).shape[-1])))
        return cache

    def _reference(self, model: Any, padded: torch.Tensor, reference_image: Any) -> Any:
        if not isinstance(model, FluxKontextModel):
            if reference_image is not None:
                raise ValueError("reference_image= is for FLUX.1 Kontext pipelines only")
            return None
        ref = padded if reference_image is None else self._image(model, reference_image)[0]
        return model.encode_image(ref.to(model.device))

    @torch.no_grad()
    def _edit_call(self, prompt: str | list[str] | None = None, *, inversion: InversionCache | None = None,
                   image: Any = None, source_prompt: str | None = None, guidance_scale: Any = 2.0,
                   source_guidance_scale: float = 1.0, num_inference_steps: int = 30, attn_ratio: float | None = None,
                   attn_steps: int | None = None, blocks: Any = "default", include_attn2: bool = False,
                   rows: str = "cond", mask_image: Any = None, invert_mask: bool = False,
                   mask_dilation: int | None = None, source_branch: str = "batched", snap_source: bool = True,
                   skip_steps: int = 0, sigma_grid: Any = "scheduler", fold_unit_guidance: bool = False,
                   prompt_embeds: Any = None, pooled_prompt_embeds: Any = None, negative_prompt_embeds: Any = None,
                   negative_pooled_prompt_embeds: Any = None, source_prompt_embeds: Any = None,
                   source_pooled_prompt_embeds: Any = None, reference_image: Any = None, output_type: str = "pil",
                   return_dict: bool = True) -> Any:
        model = self.flow_model()
        targets = None if prompt is None else ([prompt] if isinstance(prompt, str) else list(prompt))
        if inversion is None:
            if image is None:
                raise ValueError("give inversion= (from pipe.invert) or image= to edit")
            probe_words = mask_image == "attention"
            inversion = self.invert(
                image, source_prompt, num_inference_steps=num_inference_steps,
                source_guidance_scale=source_guidance_scale, prompt_embeds=source_prompt_embeds,
                pooled_prompt_embeds=source_pooled_prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, sigma_grid=sigma_grid,
                skip_steps=skip_steps, source_branch=source_branch, attn_ratio=attn_ratio, attn_steps=attn_steps,
                blocks=blocks, include_attn2=include_attn2, rows=rows, fold_unit_guidance=fold_unit_guidance,
                target_prompt=targets[0] if probe_words and targets else None, reference_image=reference_image)
        else:
            inversion.check(model, num_steps=num_inference_steps, source_prompt=source_prompt)
        injection = ValueInjection(ratio=attn_ratio, steps=attn_steps, blocks=blocks, include_attn2=include_attn2,
                                   rows=rows)  # type: ignore[arg-type]
        config = inversion.config.replace(target_guidance=guidance_scale, injection=injection,
                                          snap_source=snap_source, source_branch=source_branch,
                                          mask_dilation_px=mask_dilation)
        target = self._conditioning(model, targets, prompt_embeds, pooled_prompt_embeds, "prompt")
        uncond = self._uncond(model, len(target), negative_prompt_embeds, negative_pooled_prompt_embeds)
        mask: Any = None
        if isinstance(mask_image, str) and mask_image == "attention":
            mask = "attention"
        elif mask_image is not None:
            mask = UserMask(mask_image, invert=invert_mask)
        result = edit(model, inversion, target, config=config, mask=mask, target_uncond=uncond)
        if output_type != "latent":
            pad = None
            if inversion.original_size is not None:
                h, w = inversion.original_size
                pad = pad_to_multiple(torch.zeros(1, 1, h, w), model.pad_multiple)[1]
            result.images = decode_latents(model, result.edited, inversion, pad)
            if result.reconstruction is not None:
                result.reconstruction_image = decode_latents(model, result.reconstruction, inversion, pad)
        images = _format(result.images, result.edited, output_type)
        recs = _format(result.reconstruction_image, result.reconstruction, output_type)
        masks = result.mask
        if not return_dict:
            return images, recs, masks, result.nfe
        return DirectEditPipelineOutput(images=images, reconstructions=recs, masks=masks, nfe=result.nfe,
                                        result=result)


class DirectEditSD3Pipeline(_DirectEditMixin, StableDiffusion3Pipeline):
    """SD3 / SD3.5 with DirectEdit: true CFG in the batch-4 layout, injection in the joint ``attn`` blocks."""

    _adapter_class = SD3Model

    def __call__(self, prompt: str | list[str] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """Edit: ``pipe(inversion=inv | image=img, source_prompt=..., prompt=..., guidance_scale=2.0,
        attn_ratio=0.3, mask_image=None, source_branch="batched", output_type="pil")``; see the README."""
        return self._edit_call(prompt, **kwargs)


class DirectEditFluxPipeline(_DirectEditMixin, FluxPipeline):
    """FLUX.1 with DirectEdit: embedded guidance per row, injection in the single-stream blocks."""

    _adapter_class = FluxModel

    def __call__(self, prompt: str | list[str] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """Edit (``guidance_scale`` is the embedded target guidance); arguments as for the SD3 pipeline."""
        return self._edit_call(prompt, **kwargs)


class DirectEditFluxKontextPipeline(_DirectEditMixin, FluxKontextPipeline):
    """FLUX.1 Kontext with DirectEdit: the reference tokens (default: the edited image) are constant conditioning."""

    _adapter_class = FluxKontextModel

    def __call__(self, prompt: str | list[str] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """Edit; ``image`` is the image to edit, ``reference_image=`` overrides the reference."""
        kwargs.setdefault("source_prompt", "")
        return self._edit_call(prompt, **kwargs)


_BY_CLASS = {"StableDiffusion3Pipeline": DirectEditSD3Pipeline, "FluxPipeline": DirectEditFluxPipeline,
             "FluxKontextPipeline": DirectEditFluxKontextPipeline}
_TOYS = {"toy-sd3": DirectEditSD3Pipeline, "toy-flux": DirectEditFluxPipeline,
         "toy-kontext": DirectEditFluxKontextPipeline}


def load_pipeline(id_or_path: str, *, torch_dtype: torch.dtype | None = None, device: str | None = None,
                  random_init: bool = False, **kwargs: Any) -> Any:
    """A DirectEdit pipeline for a hub id, a local folder (dispatch on ``model_index.json``) or a toy name.

    Toys (``toy-sd3``, ``toy-flux``, ``toy-kontext``) come from ``flowcore.toy.load(name).pipeline()``
    (``random_init=True``: ``flowcore.toy.build`` with random weights, for plumbing checks only).
    """
    if id_or_path in _TOYS:
        from directedit._toy import toy_bundle

        bundle = toy_bundle(id_or_path, random_init=random_init, device=device or "cpu",
                            dtype=torch_dtype or torch.float32)
        pipe = _TOYS[id_or_path](**bundle.pipeline().components)  # from_pipe rejects the toy component types
        pipe._flow_model = bundle.adapter()
        pipe.set_progress_bar_config(disable=True)
        return pipe
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(id_or_path)
    name = config.get("_class_name")
    cls = _BY_CLASS.get(name)
    if cls is None:
        raise ValueError(f"{id_or_path} is a {name}; DirectEdit pipelines exist for {sorted(_BY_CLASS)}")
    pipe = cls.from_pretrained(id_or_path, torch_dtype=torch_dtype, **kwargs)
    if device is not None:
        pipe.to(device)
    return pipe

