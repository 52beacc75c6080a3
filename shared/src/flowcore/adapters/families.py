"""Adapters per model family: SD3/SD3.5, FLUX.1, FLUX.1 Kontext, Qwen-Image-Edit and SD1.5/SDXL UNets.

Each ``_predict`` calls the network exactly as the stock diffusers pipeline does (same timestep dtype and
scaling, same ids, same ControlNet and IP-Adapter plumbing), so ``flowcore.sample`` through an adapter
reproduces the pipeline's latents.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flowcore.adapters.base import Conditioning, ControlInput, FlowModel, gate_residual
from flowcore.attention import CallContext
from flowcore.layout import TokenLayout, TokenSegment

__all__ = ["FluxKontextModel", "FluxModel", "QwenImageEditModel", "SD3Model", "UNetModel"]


def _square_grid(n: int, what: str) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{what} has {n} tokens, which is not a square grid: pass grid=(h, w)")
    return side, side


def _run_controlnet_rows(control: ControlInput, n: int, device: torch.device, run: Any) -> Any:
    """Run ``run(rows, scale)`` on the selected rows and scatter the residuals into zero tensors for all rows."""
    rows = control.row_index(n, device)
    scale = control.scale
    per_row_scale = isinstance(scale, Tensor)
    residuals = control.residuals if control.residuals is not None else run(rows, 1.0 if per_row_scale else scale)
    full_batch = rows.numel() == n and bool((rows == torch.arange(n, device=device)).all())

    def place(res: Tensor) -> Tensor:
        if full_batch:
            out = res
        else:
            out = res.new_zeros((n, *res.shape[1:]))
            out[rows] = res
        return gate_residual(out, scale if per_row_scale else 1.0, control.residual_gate)

    if isinstance(residuals, Tensor):
        return place(residuals)
    if isinstance(residuals, (tuple, list)):
        return type(residuals)(_map_nested(place, r) for r in residuals)
    return residuals


def _map_nested(fn: Any, value: Any) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map_nested(fn, v) for v in value)
    return value


def _rows(value: Tensor | None, rows: Tensor) -> Tensor | None:
    if value is None:
        return None
    return value[rows] if value.shape[0] > 1 else value


# --- SD3 / SD3.5 -------------------------------------------------------------------------------------------------------
class SD3Model(FlowModel):
    """``SD3Transformer2DModel`` (SD3, SD3.5; dual attention ``attn2``), true CFG, joint order [image, text]."""

    family = "rf"
    prediction = "flow"
    guidance_kind = "cfg"
    pipeline_class = "StableDiffusion3Pipeline"

    @classmethod
    def from_pipe(cls, pipe: Any) -> SD3Model:
        def encode(prompts: list[str], max_sequence_length: int = 256, **kw: Any) -> Conditioning:
            pe, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                                  device=pipe._execution_device, do_classifier_free_guidance=False,
                                                  max_sequence_length=max_sequence_length, **kw)
            return Conditioning(pe, pooled)

        tok = getattr(pipe, "tokenizer_3", None) or getattr(pipe, "tokenizer", None)
        model = cls(pipe.transformer, pipe.vae, pipe.scheduler, prompt_encoder=encode,
                    model_id=str(getattr(pipe, "name_or_path", "") or ""), pipe=pipe,
                    controlnet=getattr(pipe, "controlnet", None), tokenizer=tok)
        return model

    def _text_offset(self) -> int:
        # SD3 joint text = [CLIP 77 | T5 ...]; word positions are reported in the T5 part when it exists
        return 77 if self.pipe is not None and getattr(self.pipe, "tokenizer_3", None) is not None else 0

    def layout(self, height: int, width: int, *, reference_hw: tuple[int, int] | None = None,
               n_text: int | None = None) -> TokenLayout:
        f = self.vae_scale_factor * self.patch_size
        return TokenLayout.from_sd3((height // f, width // f), 333 if n_text is None else n_text)

    def _control_image(self, image: Tensor, net: Any) -> Tensor:
        """SD3 ControlNets take VAE latents of the control image (the pipeline's ``prepare_image`` + encode; the
        posterior mean here, where the pipeline samples). InstantX-style nets (``force_zeros_for_pooled_projection``)
        were trained without the VAE shift, as the stock pipeline knows."""
        x = (2.0 * image - 1.0).to(self.device, self.vae.dtype)
        scale, shift = self._vae_factors()
        if getattr(net.config, "force_zeros_for_pooled_projection", False):
            shift = 0.0
        return ((self.vae.encode(x).latent_dist.mode() - shift) * scale).to(self.dtype)

    def _predict(self, latents: Tensor, t: Any, cond: Conditioning, *, guidance: Any = None,
                 control: ControlInput | None = None, image_embeds: Tensor | None = None, reference: Any = None,
                 ctx: CallContext | None = None, attention_kwargs: dict | None = None, **_: Any) -> Tensor:
        if reference is not None:
            raise ValueError("SD3 takes no reference tokens")
        n = latents.shape[0]
        x = latents.to(self.dtype)
        cond = cond.to(self.device, self.dtype)
        timestep = torch.as_tensor(t, device=self.device)
        timestep = timestep.expand(n) if timestep.ndim == 0 else timestep
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        layout = TokenLayout.from_sd3((h, w), cond.embeds.shape[1])
        jak = self._attention_kwargs(ctx, layout, (x.shape[-2], x.shape[-1]), attention_kwargs)
        block_res = None
        if control is not None:
            block_res = self._controlnet(x, timestep, cond, control, jak)
        return self.denoiser(hidden_states=x, timestep=timestep, encoder_hidden_states=cond.embeds,
                             pooled_projections=cond.pooled, block_controlnet_hidden_states=block_res,
                             joint_attention_kwargs=jak, return_dict=False)[0]

    def _controlnet(self, x: Tensor, timestep: Tensor, cond: Conditioning, control: ControlInput,
                    jak: dict | None) -> Any:
        net = control.controlnet or self.controlnet
        if net is None and control.residuals is None:
            raise ValueError("control= was given but the model has no ControlNet: load one or pass controlnet=")
        ccond = (control.cond or cond).to(self.device, self.dtype)

        def run(rows: Tensor, scale: float) -> Any:
            image = control.image
            if image is None:
                raise ValueError("ControlInput.image is required to run the ControlNet")
            cimg = self._control_image(image, net)
            cimg = cimg.expand(x.shape[0], *cimg.shape[1:]) if cimg.shape[0] == 1 else cimg
            pooled = ccond.pooled
            if getattr(net.config, "force_zeros_for_pooled_projection", False):
                pooled = torch.zeros_like(pooled)
            ehs = ccond.embeds if getattr(net, "context_embedder", None) is not None else None
            return net(hidden_states=x[rows], timestep=timestep[rows], encoder_hidden_states=_rows(ehs, rows),
                       pooled_projections=_rows(pooled, rows), joint_attention_kwargs=jak,
                       controlnet_cond=cimg[rows], conditioning_scale=scale, return_dict=False,
                       **control.kwargs)[0]

        return _run_controlnet_rows(control, x.shape[0], x.device, run)


# --- FLUX.1 ------------------------------------------------------------------------------------------------------------
class FluxModel(FlowModel):
    """``FluxTransformer2DModel``; packed latents (B, T, 4C); embedded guidance per row; order [text, image]."""

    family = "rf"
    prediction = "flow"
    guidance_kind = "embedded"
    pipeline_class = "FluxPipeline"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not getattr(self.denoiser.config, "guidance_embeds", False):
            self.guidance_kind = "none"

    @classmethod
    def from_pipe(cls, pipe: Any) -> FluxModel:
        def encode(prompts: list[str], max_sequence_length: int = 512, **kw: Any) -> Conditioning:
            pe, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=pipe._execution_device,
                                                      max_sequence_length=max_sequence_length, **kw)
            return Conditioning(pe, pooled, text_ids=text_ids)

        return cls(pipe.transformer, pipe.vae, pipe.scheduler, prompt_encoder=encode,
                   model_id=str(getattr(pipe, "name_or_path", "") or ""), pipe=pipe,
                   tokenizer=getattr(pipe, "tokenizer_2", None) or getattr(pipe, "tokenizer", None))

    @property
    def pad_multiple(self) -> int:
        return self.vae_scale_factor * 2

    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels) // 4

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.pad_multiple, width // self.pad_multiple

    def to_grid(self, latents: Tensor, height: int, width: int) -> Tensor:
        if latents.ndim == 4:
            return latents
        b, n, c = latents.shape
        h, w = self.token_grid(height, width)
        if h * w != n:
            raise ValueError(f"{n} tokens do not fit a {width}x{height} image ({h}x{w} tokens)")
        return latents.view(b, h, w, c // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c // 4, h * 2, w * 2)

    def from_grid(self, latents: Tensor) -> Tensor:
        if latents.ndim == 3:
            return latents
        b, c, h, w = latents.shape
        x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    def _pixel_size(self, latents: Tensor, height: int | None, width: int | None) -> tuple[int, int]:
        if height is not None and width is not None:
            return height, width
        h, w = _square_grid(latents.shape[1], "packed latents")
        return h * self.pad_multiple, w * self.pad_multiple

    @staticmethod
    def image_ids(h: int, w: int, flag: float = 0.0, *, device: Any = None, dtype: Any = None) -> Tensor:
        """(h·w, 3) ids ``(flag, row, col)`` as FluxPipeline builds them."""
        ids = torch.zeros(h, w, 3)
        ids[..., 0] = flag
        ids[..., 1] = ids[..., 1] + torch.arange(h)[:, None]
        ids[..., 2] = ids[..., 2] + torch.arange(w)[None, :]
        return ids.reshape(h * w, 3).to(device=device, dtype=dtype)

    def layout(self, height: int, width: int, *, reference_hw: tuple[int, int] | None = None,
               n_text: int | None = None) -> TokenLayout:
        h, w = self.token_grid(height, width)
        return self._layout(512 if n_text is None else n_text, (h, w), None if reference_hw is None
                            else self.token_grid(*reference_hw))

    @staticmethod
    def _layout(n_text: int, grid: tuple[int, int], ref_grid: tuple[int, int] | None) -> TokenLayout:
        segs = [TokenSegment("text", 0, n_text), TokenSegment("target", n_text, grid[0] * grid[1], grid)]
        if ref_grid is not None:
            segs.append(TokenSegment("reference", segs[-1].stop, ref_grid[0] * ref_grid[1], ref_grid))
        return TokenLayout(tuple(segs))

    def _guidance(self, guidance: Any, n: int) -> Tensor | None:
        if not getattr(self.denoiser.config, "guidance_embeds", False):
            return None
        if guidance is None:
            raise ValueError(f"{self.model_id or 'this FLUX model'} is guidance-distilled: pass guidance= "
                             "(e.g. 3.5 for text-to-image, 2.5 for Kontext edits)")
        g = torch.as_tensor(guidance, dtype=torch.float32, device=self.device)
        return torch.full([1], float(g), device=self.device, dtype=torch.float32).expand(n) if g.ndim == 0 else g

    def _predict(self, latents: Tensor, t: Any, cond: Conditioning, *, guidance: Any = None,
                 control: ControlInput | None = None, image_embeds: Tensor | None = None, reference: Any = None,
                 ctx: CallContext | None = None, attention_kwargs: dict | None = None,
                 grid: tuple[int, int] | None = None, reference_grid: tuple[int, int] | None = None,
                 **_: Any) -> Tensor:
        if control is not None:
            raise NotImplementedError("FLUX ControlNets are not supported by the flowcore adapter yet")
        if latents.ndim != 3:
            raise ValueError(f"FLUX latents are packed tokens (B, T, C); got {tuple(latents.shape)} "
                             "(use model.from_grid)")
        n, n_tok, _ = latents.shape
        x = latents.to(self.dtype)
        cond = cond.to(self.device, self.dtype)
        h, w = grid or _square_grid(n_tok, "latents")
        ids = self.image_ids(h, w, device=self.device, dtype=self.dtype)
        ref_grid = None
        if reference is not None:
            ref = self._reference_tokens(reference, n)
            ref_grid = reference_grid or _square_grid(ref.shape[1], "reference")
            x = torch.cat([x, ref], dim=1)
            ids = torch.cat([ids, self.image_ids(*ref_grid, 1.0, device=self.device, dtype=self.dtype)], dim=0)
        txt_ids = cond.text_ids if cond.text_ids is not None else \
            torch.zeros(cond.embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        layout = self._layout(cond.embeds.shape[1], (h, w), ref_grid)
        jak = self._attention_kwargs(ctx, layout, (h, w), attention_kwargs)
        timestep = self._timesteps(t, n, latents.dtype if latents.dtype == self.dtype else self.dtype)
        out = self.denoiser(hidden_states=x, timestep=timestep / 1000, guidance=self._guidance(guidance, n),
                            pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds,
                            txt_ids=txt_ids.to(self.device), img_ids=ids, joint_attention_kwargs=jak,
                            return_dict=False)[0]
        return out[:, :n_tok]

    def _reference_tokens(self, reference: Any, n: int) -> Tensor:
        if self.__class__ is FluxModel:
            raise ValueError("reference tokens need a Kontext model (FluxKontextModel)")
        ref = reference if reference.ndim == 3 else self.from_grid(reference)
        ref = ref.to(self.device, self.dtype)
        return ref.expand(n, *ref.shape[1:]) if ref.shape[0] == 1 else ref


class FluxKontextModel(FluxModel):
    """FLUX.1 Kontext: the reference image's tokens follow the target (ids flag 1); the output is cropped."""

    pipeline_class = "FluxKontextPipeline"


# --- Qwen-Image-Edit ----------------------------------------------------------------------------------------------------
class QwenImageEditModel(FlowModel):
    """``QwenImageTransformer2DModel`` edits: packed latents, [text, target, reference], masked text, true CFG
    with the pipeline's norm rescaling."""

    family = "rf"
    prediction = "flow"
    guidance_kind = "cfg"
    pipeline_class = "QwenImageEditPipeline"

    @classmethod
    def from_pipe(cls, pipe: Any) -> QwenImageEditModel:
        def encode(prompts: list[str], image: Any = None, **kw: Any) -> Conditioning:
            pe, mask = pipe.encode_prompt(prompt=prompts, image=image, device=pipe._execution_device, **kw)
            if mask is None:
                mask = torch.ones(pe.shape[:2], dtype=torch.long, device=pe.device)
            return Conditioning(pe, mask=mask)

        return cls(pipe.transformer, pipe.vae, pipe.scheduler, prompt_encoder=encode,
                   model_id=str(getattr(pipe, "name_or_path", "") or ""), pipe=pipe,
                   tokenizer=getattr(pipe, "tokenizer", None))

    @property
    def pad_multiple(self) -> int:
        return self.vae_scale_factor * 2

    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels) // 4

    to_grid = FluxModel.to_grid
    from_grid = FluxModel.from_grid
    token_grid = FluxModel.token_grid
    _pixel_size = FluxModel._pixel_size

    def _latent_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.vae.config
        c = len(cfg.latents_mean)
        mean = torch.tensor(cfg.latents_mean).view(1, c, 1, 1).to(like.device, like.dtype)
        std = torch.tensor(cfg.latents_std).view(1, c, 1, 1).to(like.device, like.dtype)
        return mean, std

    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        from flowcore.images import check_image

        check_image(images, multiple=self.pad_multiple, name="image")
        x = (2.0 * images - 1.0).to(self.device, self.vae.dtype).unsqueeze(2)
        z = self.vae.encode(x).latent_dist.mode()[:, :, 0].float()
        mean, std = self._latent_stats(z)
        return self.from_grid((z - mean) / std)

    @torch.no_grad()
    def decode_image(self, latents: Tensor, *, height: int | None = None, width: int | None = None) -> Tensor:
        z = self.to_grid(latents, *self._pixel_size(latents, height, width)).float()
        mean, std = self._latent_stats(z)
        x = self.vae.decode((z * std + mean).to(self.vae.dtype).unsqueeze(2), return_dict=False)[0][:, :, 0]
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def prepare_noise(self, batch: int, height: int, width: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        b, c, h, w = self.latent_shape(batch, height, width)
        z = randn_tensor((b, 1, c, h, w), generator=generator, device=self.device, dtype=dtype)
        return self.from_grid(z[:, 0])

    def layout(self, height: int, width: int, *, reference_hw: tuple[int, int] | None = None,
               n_text: int | None = None) -> TokenLayout:
        shapes = [(1, *self.token_grid(height, width))]
        if reference_hw is not None:
            shapes.append((1, *self.token_grid(*reference_hw)))
        return TokenLayout.from_qwen(shapes, 0 if n_text is None else n_text)

    def combine_cfg(self, uncond: Tensor, cond: Tensor, scale: float | Tensor) -> Tensor:
        from flowcore.guidance import cfg

        comb = cfg(uncond, cond, scale)
        return comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))

    def _predict(self, latents: Tensor, t: Any, cond: Conditioning, *, guidance: Any = None,
                 control: ControlInput | None = None, image_embeds: Tensor | None = None, reference: Any = None,
                 ctx: CallContext | None = None, attention_kwargs: dict | None = None,
                 grid: tuple[int, int] | None = None, reference_grid: tuple[int, int] | None = None,
                 **_: Any) -> Tensor:
        if control is not None:
            raise NotImplementedError("Qwen-Image ControlNets are not supported by the flowcore adapter yet")
        n, n_tok, _ = latents.shape
        x = latents.to(self.dtype)
        cond = cond.to(self.device, self.dtype)
        h, w = grid or _square_grid(n_tok, "latents")
        shapes = [(1, h, w)]
        if reference is not None:
            ref = reference if reference.ndim == 3 else self.from_grid(reference)
            ref = ref.to(self.device, self.dtype)
            ref = ref.expand(n, *ref.shape[1:]) if ref.shape[0] == 1 else ref
            shapes.append((1, *(reference_grid or _square_grid(ref.shape[1], "reference"))))
            x = torch.cat([x, ref], dim=1)
        layout = TokenLayout.from_qwen(shapes, cond.embeds.shape[1])
        jak = self._attention_kwargs(ctx, layout, (h, w), attention_kwargs)
        g = None
        if getattr(self.denoiser.config, "guidance_embeds", False):
            g = torch.full([1], float(guidance), device=self.device, dtype=torch.float32).expand(n)
        timestep = self._timesteps(t, n, self.dtype)
        out = self.denoiser(hidden_states=x, timestep=timestep / 1000, guidance=g,
                            encoder_hidden_states_mask=cond.mask, encoder_hidden_states=cond.embeds,
                            img_shapes=[shapes] * n, attention_kwargs=jak, return_dict=False)[0]
        return out[:, :n_tok]


# --- SD1.5 / SDXL UNets ------------------------------------------------------------------------------------------------
class UNetModel(FlowModel):
    """``UNet2DConditionModel`` (SD1.5, SDXL): VP, eps (or v) prediction, CFG, optional ControlNet residuals and
    IP-Adapter image tokens."""

    family = "vp"
    prediction = "eps"
    guidance_kind = "cfg"
    pipeline_class = "StableDiffusionPipeline"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        pred = getattr(self.scheduler.config, "prediction_type", "epsilon")
        self.prediction = "v" if pred == "v_prediction" else "eps"

    @property
    def is_sdxl(self) -> bool:
        return getattr(self.denoiser.config, "addition_embed_type", None) == "text_time"

    @property
    def pad_multiple(self) -> int:
        return self.vae_scale_factor

    @classmethod
    def from_pipe(cls, pipe: Any) -> UNetModel:
        sdxl = getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"
        zeros_for_empty = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))

        def encode(prompts: list[str], **kw: Any) -> Conditioning:
            dev = pipe._execution_device
            if sdxl:
                pe, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=dev,
                                                      num_images_per_prompt=1, do_classifier_free_guidance=False, **kw)
                cond = Conditioning(pe, pooled)
                if zeros_for_empty:  # SDXL pipelines use zero embeddings for empty negatives
                    empty = torch.tensor([p == "" for p in prompts], device=pe.device)
                    cond.embeds = torch.where(empty[:, None, None], torch.zeros_like(pe), pe)
                    cond.pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
                return cond
            pe, _ = pipe.encode_prompt(prompts, dev, 1, False, **kw)
            return Conditioning(pe)

        image_encoder = None
        if getattr(pipe, "image_encoder", None) is not None:
            image_encoder = _clip_image_embedder(pipe)
        return cls(pipe.unet, pipe.vae, pipe.scheduler, prompt_encoder=encode,
                   model_id=str(getattr(pipe, "name_or_path", "") or ""), pipe=pipe,
                   controlnet=getattr(pipe, "controlnet", None), image_encoder=image_encoder,
                   tokenizer=getattr(pipe, "tokenizer", None))

    def layout(self, height: int, width: int, *, reference_hw: tuple[int, int] | None = None,
               n_text: int | None = None) -> TokenLayout:
        f = self.vae_scale_factor
        return TokenLayout.image((height // f, width // f))

    def _added(self, cond: Conditioning, x: Tensor, image_embeds: Tensor | None) -> dict[str, Any] | None:
        added: dict[str, Any] = {}
        if self.is_sdxl:
            h, w = x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor
            time_ids = cond.extra.get("time_ids")
            if time_ids is None:
                time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=cond.embeds.dtype).repeat(x.shape[0], 1)
            added["text_embeds"] = cond.pooled
            added["time_ids"] = time_ids.to(self.device)
        if image_embeds is not None:
            added["image_embeds"] = [image_embeds.to(self.device, self.dtype)]
        elif getattr(self.denoiser, "encoder_hid_proj", None) is not None:
            raise ValueError("the UNet has an IP-Adapter loaded: pass image_embeds= (model.encode_ip_image)")
        return added or None

    def _predict(self, latents: Tensor, t: Any, cond: Conditioning, *, guidance: Any = None,
                 control: ControlInput | None = None, image_embeds: Tensor | None = None, reference: Any = None,
                 ctx: CallContext | None = None, attention_kwargs: dict | None = None, **_: Any) -> Tensor:
        if reference is not None:
            raise ValueError("UNet models take no reference tokens")
        x = latents.to(self.dtype)
        cond = cond.to(self.device, self.dtype)
        timestep = torch.as_tensor(t, device=self.device)
        added = self._added(cond, x, image_embeds)
        cak = self._attention_kwargs(ctx, self.layout(x.shape[-2] * self.vae_scale_factor,
                                                      x.shape[-1] * self.vae_scale_factor),
                                     (x.shape[-2], x.shape[-1]), attention_kwargs)
        down = mid = None
        if control is not None:
            down, mid = self._controlnet(x, timestep, cond, control, added)
        return self.denoiser(x, timestep, encoder_hidden_states=cond.embeds, timestep_cond=None,
                             cross_attention_kwargs=cak, added_cond_kwargs=added,
                             down_block_additional_residuals=down, mid_block_additional_residual=mid,
                             return_dict=False)[0]

    def _controlnet(self, x: Tensor, timestep: Tensor, cond: Conditioning, control: ControlInput,
                    added: dict | None) -> tuple[Any, Any]:
        net = control.controlnet or self.controlnet
        if net is None and control.residuals is None:
            raise ValueError("control= was given but the model has no ControlNet: load one or pass controlnet=")
        ccond = (control.cond or cond).to(self.device, self.dtype)

        def run(rows: Tensor, scale: float) -> Any:
            if control.image is None:
                raise ValueError("ControlInput.image is required to run the ControlNet")
            img = control.image.to(self.device, self.dtype)
            img = img.expand(x.shape[0], *img.shape[1:]) if img.shape[0] == 1 else img
            t = timestep if timestep.ndim == 0 else timestep[rows]
            cadded = None if added is None else {k: v[rows] if isinstance(v, Tensor) else v
                                                  for k, v in added.items() if k != "image_embeds"}
            down, mid = net(x[rows], t, encoder_hidden_states=ccond.embeds[rows], controlnet_cond=img[rows],
                            conditioning_scale=scale, guess_mode=False, added_cond_kwargs=cadded or None,
                            return_dict=False, **control.kwargs)
            return [*down, mid]

        res = _run_controlnet_rows(control, x.shape[0], x.device, run)
        return list(res[:-1]), res[-1]


def _clip_image_embedder(pipe: Any) -> Any:
    """``images -> (B, 1, D)`` image embeds through the pipeline's CLIP vision encoder (global embedding)."""

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        from flowcore.images import to_pil

        pixel = pipe.feature_extractor(to_pil(images), return_tensors="pt").pixel_values
        enc = pipe.image_encoder
        out = enc(pixel.to(enc.device, enc.dtype)).image_embeds
        return out[:, None]

    return embed
