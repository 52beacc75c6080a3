"""Diffusers-style pipelines: :class:`FEATPipeline` (SDXL, SD1.5, toy-unet) and :class:`FEATFlowPipeline`
(SD3/SD3.5, FLUX.1, toy-sd3; OFR + RANF, no design image).

Both hold the usual components (so ``.to``, ``save_pretrained`` and CPU offload work) and run
:func:`feat_tryon.core.run_feat` through a flowcore adapter built over the same modules (nothing is copied).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline
from torch import Tensor

from feat_tryon.config import FEATConfig
from feat_tryon.core import FEATOutput, is_plus_adapter, run_feat
from feat_tryon.providers import MaskProvider, get_mask_provider
from feat_tryon.routing import BlockRouting
from flowcore.images import load_mask, to_pil, to_tensor

__all__ = ["DEFAULT_CHECKPOINTS", "FEATFlowPipeline", "FEATPipeline", "is_plus_adapter"]

DEFAULT_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "sdxl": {"base": "stabilityai/stable-diffusion-xl-base-1.0", "controlnet": "diffusers/controlnet-depth-sdxl-1.0",
             "ip_adapter": ("h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.bin")},
    "sd15": {"controlnet": "lllyasviel/control_v11f1p_sd15_depth",
             "ip_adapter": ("h94/IP-Adapter", "models", "ip-adapter_sd15.bin")},
    "sd3": {"base": "stabilityai/stable-diffusion-3.5-large",
            "controlnet": "stabilityai/stable-diffusion-3.5-large-controlnet-depth"},
    "flux": {"base": "black-forest-labs/FLUX.1-dev", "controlnet": "Shakker-Labs/FLUX.1-dev-ControlNet-Depth"},
}


def _images(x: Any, name: str) -> Tensor | None:
    if x is None:
        return None
    try:
        return to_tensor(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot read the {name}: {err}") from err


def _mask(x: Any, size: tuple[int, int], name: str) -> Tensor | None:
    if x is None:
        return None
    if isinstance(x, Tensor) and x.ndim == 4 and x.shape[1] == 1:
        if tuple(x.shape[-2:]) != size:
            raise ValueError(f"the {name} is {x.shape[-1]}×{x.shape[-2]} (W×H) but the person image is "
                             f"{size[1]}×{size[0]}: pass the mask made for this image")
        return x.float()
    return load_mask(x, size)


def _format(images: Tensor, output_type: str) -> Any:
    if output_type == "pt":
        return images
    if output_type == "np":
        return images.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "pil":
        return to_pil(images)
    raise ValueError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")


class _FEATCallMixin:
    """The shared ``__call__`` of both pipelines."""

    _ip_scale_override: float | None = None

    def adapter(self) -> Any:  # pragma: no cover - both pipelines override it
        raise NotImplementedError

    def default_config(self) -> FEATConfig:
        return FEATConfig.preset("feat")

    def _run(self, person: Any, garment_mask: Any, sketch: Any, design: Any, prompt: Any, *, sketch_mask: Any,
             negative_prompt: str, control_image: Any, mask_provider: Any, mask_category: str,
             config: FEATConfig | None, preset: str, generator: torch.Generator | None, output_type: str,
             callback_on_step_end: Any, routing: BlockRouting | None, overrides: dict[str, Any]) -> FEATOutput:
        intermediates = bool(overrides.pop("save_intermediates", False))
        adapter = self.adapter()
        person_t = _images(person, "person image")
        if person_t is None:
            raise ValueError("a person image is required")
        size = tuple(person_t.shape[-2:])
        garment = _mask(garment_mask, size, "garment mask")  # type: ignore[arg-type]
        if garment is None and mask_provider is not None:
            provider: MaskProvider = get_mask_provider(mask_provider)
            garment = provider(person_t, mask_category)
        sketch_t = _images(sketch, "sketch")
        if sketch_t is not None and tuple(sketch_t.shape[-2:]) != size:
            raise ValueError(f"the sketch is {sketch_t.shape[-1]}×{sketch_t.shape[-2]} (W×H) but the person image is "
                             f"{size[1]}×{size[0]}")
        smask = _mask(sketch_mask, size, "sketch mask")  # type: ignore[arg-type]
        if config is None:
            base = self.default_config() if preset == "feat" else FEATConfig.preset(preset)
            if preset != "feat":
                base = base.with_overrides(num_inference_steps=self.default_config().num_inference_steps,
                                           guidance_scale=self.default_config().guidance_scale)
            config = base
        config = config.with_overrides(**overrides)
        if self._ip_scale_override is not None:
            config = config.with_overrides(ddi={"enabled": False}, image_scale=self._ip_scale_override)
        callback = None
        if callback_on_step_end is not None:
            def callback(i: int, z: Tensor) -> Tensor | None:
                return callback_on_step_end(self, i, z)
        out = run_feat(adapter, person_t, garment, sketch_t, _images(design, "design image"), prompt,
                       sketch_mask=smask, negative_prompt=negative_prompt,
                       control_image=_images(control_image, "control image"), config=config, routing=routing,
                       generator=generator, callback=callback,
                       intermediates=intermediates)
        out.images = _format(out.images, output_type)
        return out


class FEATPipeline(_FEATCallMixin, DiffusionPipeline):
    """FEAT on SDXL / SD1.5 / toy-unet: UNet + IP-Adapter (global embedding) + ControlNet.

    Build with :meth:`from_pretrained`, :meth:`from_pipe` (a ``StableDiffusionXLControlNetPipeline`` or
    ``StableDiffusionControlNetPipeline``) or :meth:`from_toy`. Call with the person image, the garment mask,
    an optional sketch (or sketch mask), an optional design image and a prompt; see :meth:`__call__`.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _optional_components: ClassVar[list[str]] = ["text_encoder_2", "tokenizer_2", "controlnet", "image_encoder", "feature_extractor"]

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any,
                 controlnet: Any = None, image_encoder: Any = None, feature_extractor: Any = None,
                 text_encoder_2: Any = None, tokenizer_2: Any = None, force_zeros_for_empty_prompt: bool = True):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, controlnet=controlnet, image_encoder=image_encoder,
                              feature_extractor=feature_extractor, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self._ip_scale_override = None
        self._adapter_cache: tuple[tuple, Any] | None = None
        self.toy_name: str | None = None

    # --- family and adapter -------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        if type(self.text_encoder).__name__ == "ToyTextEncoder":
            return "toy-unet"
        return "sdxl" if getattr(self.unet.config, "addition_embed_type", None) == "text_time" else "sd15"

    def _stock_view(self) -> Any:
        import diffusers

        common = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                      scheduler=self.scheduler, image_encoder=self.image_encoder,
                      feature_extractor=self.feature_extractor)
        if self.family == "sdxl":
            common.update(text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                          force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt)
            if self.controlnet is not None:
                return diffusers.StableDiffusionXLControlNetPipeline(controlnet=self.controlnet, **common)
            return diffusers.StableDiffusionXLPipeline(**common)
        common.update(safety_checker=None, requires_safety_checker=False)
        if self.controlnet is not None:
            return diffusers.StableDiffusionControlNetPipeline(controlnet=self.controlnet, **common)
        return diffusers.StableDiffusionPipeline(**common)

    def adapter(self) -> Any:
        """The flowcore ``UNetModel`` over this pipeline's modules (cached while the modules are the same)."""
        key = tuple(id(m) for m in (self.unet, self.vae, self.text_encoder, self.controlnet, self.image_encoder,
                                    self.scheduler))
        if self._adapter_cache is not None and self._adapter_cache[0] == key:
            return self._adapter_cache[1]
        if self.family == "toy-unet":
            from flowcore.toy import ToyBundle

            bundle = ToyBundle("toy-unet", self.unet, self.text_encoder, self.tokenizer, self.vae, self.scheduler,
                               controlnet=self.controlnet, image_encoder=self.image_encoder,
                               ip_adapter=self.image_encoder is not None)
            adapter = bundle.adapter()
        else:
            from flowcore.adapters import UNetModel

            view = self._stock_view()
            view.set_progress_bar_config(disable=True)
            adapter = UNetModel.from_pipe(view)
        self._adapter_cache = (key, adapter)
        return adapter

    def set_ip_adapter_scale(self, scale: float | None) -> None:  # type: ignore[override]
        """A uniform routing: the raw design embedding at every site at ``scale`` (``None`` restores DDI)."""
        if isinstance(scale, (dict, list)):
            raise ValueError("FEATPipeline takes one float here; per-block scales: "
                             "BlockRouting.from_diffusers_scale(...) passed as routing=")
        self._ip_scale_override = None if scale is None else float(scale)

    # --- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_toy(cls, name: str = "toy-unet", *, random_init: bool = False, preset: str = "full",
                 device: str | torch.device = "cpu", seed: int = 0) -> FEATPipeline:
        """toy-unet with its edge ControlNet and IP-Adapter, offline (``random_init``: seeded random weights)."""
        from flowcore import toy

        if name != "toy-unet":
            raise ValueError(f"FEATPipeline runs toy-unet; {name} is a flow model: use FEATFlowPipeline.from_toy")
        if random_init:
            bundle = toy.build(name, random_init=True, preset=preset, controlnet=True, ip_adapter=True, seed=seed)
        else:
            bundle = toy.load(name, controlnet=True, ip_adapter=True)
        bundle = bundle.to(device).eval()
        pipe = cls(vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer,
                   unet=bundle.denoiser, scheduler=bundle.scheduler, controlnet=bundle.controlnet,
                   image_encoder=bundle.image_encoder)
        pipe.toy_name = name
        return pipe

    @classmethod
    def from_pipe(cls, pipe: Any, ip_adapter: tuple[str, str, str] | None = None, **kwargs: Any) -> FEATPipeline:
        """Share the modules of a ``StableDiffusionXLControlNetPipeline`` / ``StableDiffusionControlNetPipeline``
        (or their ControlNet-less versions). Needs a non-Plus IP-Adapter, already loaded or given as
        ``ip_adapter=(repo, subfolder, weight_name)``."""
        unet = getattr(pipe, "unet", None)
        if unet is None:
            raise TypeError(f"FEATPipeline.from_pipe needs an SD/SDXL pipeline with a UNet, got {type(pipe).__name__}")
        if getattr(unet, "encoder_hid_proj", None) is None:
            if ip_adapter is None:
                raise ValueError("the pipeline has no IP-Adapter loaded: pass ip_adapter=(repo, subfolder, file) "
                                 "or call pipe.load_ip_adapter first")
            repo, sub, file = ip_adapter
            pipe.load_ip_adapter(repo, subfolder=sub, weight_name=file)
        if is_plus_adapter(unet):
            raise ValueError("FEAT's CSPE needs a global-embedding IP-Adapter (ip-adapter_sdxl / ip-adapter_sd15), "
                             "not a Plus adapter")
        components = {name: getattr(pipe, name, None) for name in
                      ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "controlnet", "image_encoder",
                       "feature_extractor", "text_encoder_2", "tokenizer_2")}
        zeros = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", True))
        return cls(**components, force_zeros_for_empty_prompt=zeros)

    @classmethod
    def from_pretrained(cls, base: str | os.PathLike, *, controlnet: Any = None,  # type: ignore[override]
                        ip_adapter: tuple[str, str, str] | None = None, vae: Any = None,
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> FEATPipeline:
        """Load SDXL / SD1.5 + ControlNet + IP-Adapter (toy names go to :meth:`from_toy`).

        ``controlnet``: a ``ControlNetModel`` or a hub id / path (default per family, spec §3); ``ip_adapter``:
        ``(repo, subfolder, weight_name)`` (default ``h94/IP-Adapter`` for the family).
        """
        import diffusers

        name = str(base)
        if name.startswith("toy-"):
            return cls.from_toy(name, **{k: v for k, v in kwargs.items() if k in ("random_init", "device")})
        from flowcore.adapters.loading import _pipeline_class_name

        cls_name = _pipeline_class_name(name)
        family = "sdxl" if "XL" in cls_name else "sd15"
        defaults = DEFAULT_CHECKPOINTS[family]
        if controlnet is None or isinstance(controlnet, (str, os.PathLike)):
            controlnet = diffusers.ControlNetModel.from_pretrained(controlnet or defaults["controlnet"],
                                                                   torch_dtype=torch_dtype)
        extra = {"vae": vae} if vae is not None else {}
        pipe_cls = diffusers.StableDiffusionXLControlNetPipeline if family == "sdxl" else \
            diffusers.StableDiffusionControlNetPipeline
        pipe = pipe_cls.from_pretrained(name, controlnet=controlnet, torch_dtype=torch_dtype, **extra, **kwargs)
        return cls.from_pipe(pipe, ip_adapter=ip_adapter or defaults["ip_adapter"])

    # --- call ----------------------------------------------------------------------------------------------------
    def default_config(self) -> FEATConfig:
        return FEATConfig.preset("feat")

    @torch.no_grad()
    def __call__(self, person: Any, garment_mask: Any = None, sketch: Any = None, design: Any = None,
                 prompt: Any = "", *, sketch_mask: Any = None, negative_prompt: str = "", control_image: Any = None,
                 mask_provider: Any = None, mask_category: str = "garment", config: FEATConfig | None = None,
                 preset: str = "feat", generator: torch.Generator | None = None, output_type: str = "pil",
                 callback_on_step_end: Any = None, routing: BlockRouting | None = None,
                 **overrides: Any) -> FEATOutput:
        """Dress / edit ``person`` (spec §5).

        Images may be PIL images, paths, numpy arrays or tensors ((B,3,H,W) in [0,1]); masks likewise
        (``flowcore.images.load_mask``). ``garment_mask`` empty or ``None`` (and no ``mask_provider``) adds an
        item; ``sketch`` (or ``sketch_mask``) gives the new silhouette, none = edit in place with the ControlNet
        off; ``design`` is any image. ``preset`` names a spec §5 ablation; ``overrides`` are
        :meth:`FEATConfig.with_overrides` keywords (``num_inference_steps=20``, ``sketch_gating="residual_mask"``
        ...). ``callback_on_step_end(pipe, i, latents)`` may return replacement latents.
        """
        return self._run(person, garment_mask, sketch, design, prompt, sketch_mask=sketch_mask,
                         negative_prompt=negative_prompt, control_image=control_image, mask_provider=mask_provider,
                         mask_category=mask_category, config=config, preset=preset, generator=generator,
                         output_type=output_type, callback_on_step_end=callback_on_step_end, routing=routing,
                         overrides=overrides)


class FEATFlowPipeline(_FEATCallMixin, DiffusionPipeline):
    """OFR + RANF on rectified-flow models (SD3/SD3.5, FLUX.1, toy-sd3); the design is given as text (spec §2.5).

    Defaults (our choice): 28 steps; CFG 3.5 for SD3 (5.0 for toy-sd3), embedded guidance 3.5 for FLUX.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->vae"
    _optional_components: ClassVar[list[str]] = ["text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3", "controlnet"]

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, transformer: Any, scheduler: Any,
                 controlnet: Any = None, text_encoder_2: Any = None, tokenizer_2: Any = None,
                 text_encoder_3: Any = None, tokenizer_3: Any = None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                              scheduler=scheduler, controlnet=controlnet, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
        self._adapter_cache: tuple[tuple, Any] | None = None
        self.toy_name: str | None = None

    @property
    def family(self) -> str:
        if type(self.text_encoder).__name__ == "ToyTextEncoder":
            return "toy-sd3"
        return "flux" if type(self.transformer).__name__ == "FluxTransformer2DModel" else "sd3"

    def adapter(self) -> Any:
        key = tuple(id(m) for m in (self.transformer, self.vae, self.text_encoder, self.controlnet, self.scheduler))
        if self._adapter_cache is not None and self._adapter_cache[0] == key:
            return self._adapter_cache[1]
        import diffusers

        from flowcore.adapters import FluxModel, SD3Model

        family = self.family
        if family == "toy-sd3":
            from flowcore.toy import ToyBundle

            bundle = ToyBundle("toy-sd3", self.transformer, self.text_encoder, self.tokenizer, self.vae,
                               self.scheduler)
            adapter = bundle.adapter()
            adapter.controlnet = self.controlnet
        elif family == "flux":
            if self.controlnet is not None:
                raise NotImplementedError("FLUX ControlNets are not supported by flowcore's FLUX adapter yet "
                                          "(flowcore.adapters.FluxModel); run without controlnet")
            view = diffusers.FluxPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                          transformer=self.transformer, scheduler=self.scheduler,
                                          text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
            view.set_progress_bar_config(disable=True)
            adapter = FluxModel.from_pipe(view)
        else:
            common = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                          transformer=self.transformer, scheduler=self.scheduler, text_encoder_2=self.text_encoder_2,
                          tokenizer_2=self.tokenizer_2, text_encoder_3=self.text_encoder_3,
                          tokenizer_3=self.tokenizer_3)
            if self.controlnet is not None:
                view = diffusers.StableDiffusion3ControlNetPipeline(controlnet=self.controlnet, **common)
            else:
                view = diffusers.StableDiffusion3Pipeline(**common)
            view.set_progress_bar_config(disable=True)
            adapter = SD3Model.from_pipe(view)
        self._adapter_cache = (key, adapter)
        return adapter

    def default_config(self) -> FEATConfig:
        guidance = {"toy-sd3": 5.0, "sd3": 3.5, "flux": 3.5}[self.family]
        return FEATConfig.preset("feat", num_inference_steps=28, guidance_scale=guidance,
                                 control_image_mode="auto")

    @classmethod
    def from_toy(cls, name: str = "toy-sd3", *, random_init: bool = False, preset: str = "full",
                 device: str | torch.device = "cpu", seed: int = 0) -> FEATFlowPipeline:
        from flowcore import toy

        if name != "toy-sd3":
            raise ValueError(f"FEATFlowPipeline runs toy-sd3 among the toys, got {name!r}")
        bundle = toy.build(name, random_init=True, preset=preset, seed=seed) if random_init else toy.load(name)
        bundle = bundle.to(device).eval()
        pipe = cls(vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer,
                   transformer=bundle.denoiser, scheduler=bundle.scheduler)
        pipe.toy_name = name
        return pipe

    @classmethod
    def from_pipe(cls, pipe: Any, **kwargs: Any) -> FEATFlowPipeline:  # type: ignore[override]
        """Share the modules of an SD3 / FLUX pipeline (with or without its ControlNet)."""
        transformer = getattr(pipe, "transformer", None)
        if transformer is None:
            raise TypeError(f"FEATFlowPipeline.from_pipe needs an SD3 or FLUX pipeline, got {type(pipe).__name__}")
        names = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler", "controlnet", "text_encoder_2",
                 "tokenizer_2", "text_encoder_3", "tokenizer_3")
        return cls(**{n: getattr(pipe, n, None) for n in names})

    @classmethod
    def from_pretrained(cls, base: str | os.PathLike, *, torch_dtype: torch.dtype | None = None,  # type: ignore
                        **kwargs: Any) -> FEATFlowPipeline:
        import diffusers

        name = str(base)
        if name.startswith("toy-"):
            return cls.from_toy(name, **{k: v for k, v in kwargs.items() if k in ("random_init", "device")})
        from flowcore.adapters.loading import _pipeline_class_name

        cls_name = _pipeline_class_name(name)
        pipe = getattr(diffusers, cls_name).from_pretrained(name, torch_dtype=torch_dtype, **kwargs)
        return cls.from_pipe(pipe)

    @torch.no_grad()
    def __call__(self, person: Any, garment_mask: Any = None, sketch: Any = None, prompt: Any = "", *,
                 sketch_mask: Any = None, negative_prompt: str = "", control_image: Any = None,
                 mask_provider: Any = None, mask_category: str = "garment", config: FEATConfig | None = None,
                 preset: str = "feat", generator: torch.Generator | None = None, output_type: str = "pil",
                 callback_on_step_end: Any = None, **overrides: Any) -> FEATOutput:
        """Like :meth:`FEATPipeline.__call__` without ``design`` (describe the design in ``prompt``)."""
        return self._run(person, garment_mask, sketch, None, prompt, sketch_mask=sketch_mask,
                         negative_prompt=negative_prompt, control_image=control_image, mask_provider=mask_provider,
                         mask_category=mask_category, config=config, preset=preset, generator=generator,
                         output_type=output_type, callback_on_step_end=callback_on_step_end, routing=None,
                         overrides=overrides)
