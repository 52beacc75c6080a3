"""The toy models (toyworld.md §7, §8): toy-clip's two towers, the pixel VAE and the stock diffusers denoisers.

Everything a diffusion toy needs is built here from configs kept as data (``MODEL_CONFIGS``), so the recipes
(``flowcore.toy.trainer``), the bundles (``flowcore.toy.bundle``) and the tests read one source of truth:

- ``ToyTextEncoder``: 64×128 embedding, 32 learned positions, 3 pre-LN layers, final LN; outputs the sequence
  ``(B,32,128)`` (the "T5" input) and a pooled ``(B,128)`` projection of ``[EOS]`` (the "CLIP" input).
- ``ToyImageEncoder``: 4 conv stages → ``image_embeds (B,128)`` and ``tokens (B,16,128)``.
- ``ToyPixelVAE``: the VAE interface without weights (identity at factor 1, ``pixel_unshuffle`` at factor 2).
- ``make_sd3`` / ``make_flux`` / ``make_unet`` / ``make_controlnet`` / ``make_ip_adapter_state_dict``: the stock
  ``SD3Transformer2DModel``, ``FluxTransformer2DModel``, ``UNet2DConditionModel``, ``ControlNetModel`` and an
  IP-Adapter in the original key layout (``image_proj.*``, ``ip_adapter.N.*``).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from flowcore.seeding import seeded_init
from flowcore.toy.constants import EOS_ID, MAX_TOKENS, PAD_ID, VOCAB_SIZE

__all__ = [
    "MODEL_CONFIGS",
    "PRESETS",
    "ToyImageEncoder",
    "ToyImageEncoderOutput",
    "ToyPixelVAE",
    "ToyTextEncoder",
    "ToyTextEncoderOutput",
    "count_parameters",
    "ip_adapter_parameters",
    "ip_adapter_state_dict_from_unet",
    "load_ip_adapter_into",
    "make_controlnet",
    "make_flux",
    "make_image_encoder",
    "make_ip_adapter_state_dict",
    "make_sd3",
    "make_text_encoder",
    "make_unet",
    "model_config",
    "quiet_diffusers",
    "seeded_init",
    "split_ip_adapter_state_dict",
]

PRESETS = ("full", "ci")

# --- configs as data (§7, §8.1–8.4); "ci" = tiny variants for fast tests and rehearsals ----------------------
# Every conditioning width stays 128 in both presets so that any toy-clip text encoder fits any denoiser.
MODEL_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "text_encoder": dict(
            vocab_size=VOCAB_SIZE, max_length=MAX_TOKENS, width=128, num_layers=3, num_heads=4, mlp_dim=512,
            projection_dim=128,
        ),
        "image_encoder": dict(
            image_size=32, in_channels=3, channels=(32, 64, 128, 128), strides=(1, 2, 2, 2), norm_groups=8,
            embed_dim=128,
        ),
        "sd3": dict(
            sample_size=32, patch_size=2, in_channels=3, out_channels=3, num_layers=4, attention_head_dim=32,
            num_attention_heads=4, joint_attention_dim=128, caption_projection_dim=128, pooled_projection_dim=128,
            pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
        ),
        "flux": dict(
            patch_size=1, in_channels=12, num_layers=2, num_single_layers=4, attention_head_dim=32,
            num_attention_heads=4, joint_attention_dim=128, pooled_projection_dim=128, guidance_embeds=True,
            axes_dims_rope=(8, 12, 12),
        ),
        "unet": dict(
            sample_size=16, in_channels=12, out_channels=12, block_out_channels=(32, 64, 128), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=128,
            attention_head_dim=4, norm_num_groups=16,
        ),
        "controlnet": dict(conditioning_embedding_out_channels=(16, 32), conditioning_channels=3),
        "ip_adapter": dict(image_embed_dim=128, cross_attention_dim=128, num_image_text_embeds=4),
    },
    "ci": {
        "text_encoder": dict(
            vocab_size=VOCAB_SIZE, max_length=MAX_TOKENS, width=128, num_layers=1, num_heads=4, mlp_dim=256,
            projection_dim=128,
        ),
        "image_encoder": dict(
            image_size=32, in_channels=3, channels=(8, 16, 16, 128), strides=(1, 2, 2, 2), norm_groups=4,
            embed_dim=128,
        ),
        "sd3": dict(
            sample_size=32, patch_size=4, in_channels=3, out_channels=3, num_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=128, caption_projection_dim=32, pooled_projection_dim=128,
            pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm",
        ),
        "flux": dict(
            patch_size=1, in_channels=12, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=128, pooled_projection_dim=128, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ),
        "unet": dict(
            sample_size=16, in_channels=12, out_channels=12, block_out_channels=(16, 32, 32), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=128,
            attention_head_dim=2, norm_num_groups=8,
        ),
        "controlnet": dict(conditioning_embedding_out_channels=(8, 16), conditioning_channels=3),
        "ip_adapter": dict(image_embed_dim=128, cross_attention_dim=128, num_image_text_embeds=4),
    },
}


def model_config(part: str, preset: str = "full") -> dict[str, Any]:
    """A deep copy of the config of ``part`` (``text_encoder``, ``sd3``, ``flux``, ``unet``, ...) in ``preset``."""
    if preset not in MODEL_CONFIGS:
        raise ValueError(f"unknown preset {preset!r}; use one of {list(MODEL_CONFIGS)}")
    configs = MODEL_CONFIGS[preset]
    if part not in configs:
        raise ValueError(f"unknown model part {part!r}; use one of {list(configs)}")
    return copy.deepcopy(configs[part])


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' logger (e.g. its warning on ``ModelMixin.to(dtype)``) inside the block."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --- text tower (§7) ----------------------------------------------------------------------------------------
@dataclass
class ToyTextEncoderOutput(BaseOutput):
    """``last_hidden_state`` (B,32,128): the sequence ("T5") features; ``text_embeds`` (B,128): the pooled
    ("CLIP") projection of the ``[EOS]`` position."""

    last_hidden_state: Tensor
    text_embeds: Tensor


class _EncoderLayer(nn.Module):
    """Pre-LN bidirectional transformer layer with a key-padding mask (pad queries are still computed)."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, width))

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """x: (B,S,C); key_mask: (B,1,1,S) bool, True where a key may be attended to."""
        b, s, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.num_heads, c // self.num_heads).unbind(2)
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask
        )
        x = x + self.out(attn.transpose(1, 2).reshape(b, s, c))
        return x + self.mlp(self.norm2(x))


class ToyTextEncoder(ModelMixin, ConfigMixin):
    """toy-clip's text tower (≈0.62M parameters at the full config).

    ``forward(input_ids (B,S) long, attention_mask (B,S) | None)`` → ``ToyTextEncoderOutput``. The masked-token
    head is tied to the token embedding (``mlm_logits``).
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        max_length: int = MAX_TOKENS,
        width: int = 128,
        num_layers: int = 3,
        num_heads: int = 4,
        mlp_dim: int = 512,
        projection_dim: int = 128,
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} must be divisible by num_heads {num_heads}")
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, width))
        self.layers = nn.ModuleList(_EncoderLayer(width, num_heads, mlp_dim) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(width)
        self.text_projection = nn.Linear(width, projection_dim, bias=False)
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, return_dict: bool = True
    ) -> ToyTextEncoderOutput | tuple[Tensor, Tensor]:
        if input_ids.dim() != 2 or input_ids.shape[1] > self.config.max_length:
            raise ValueError(
                f"input_ids must be (B, S<= {self.config.max_length}), got {tuple(input_ids.shape)}; "
                "tokenize with ToyTokenizer(padding='max_length')"
            )
        if attention_mask is None:
            attention_mask = input_ids != PAD_ID
        valid = attention_mask.bool()
        x = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        key_mask = valid[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask)
        hidden = self.final_norm(x)
        eos_position = (valid.long().sum(1) - 1).clamp(min=0)
        pooled = self.text_projection(hidden[torch.arange(hidden.shape[0], device=hidden.device), eos_position])
        if not return_dict:
            return hidden, pooled
        return ToyTextEncoderOutput(last_hidden_state=hidden, text_embeds=pooled)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """(B,S,C) sequence features → (B,S,vocab) logits through the tied embedding."""
        return hidden @ self.token_embedding.weight.t() + self.mlm_bias

    @property
    def eos_token_id(self) -> int:
        return EOS_ID


# --- image tower (§8.1) -------------------------------------------------------------------------------------
@dataclass
class ToyImageEncoderOutput(BaseOutput):
    """``image_embeds`` (B,128): the pooled projection; ``tokens`` (B,16,128): the last 4×4 feature map."""

    image_embeds: Tensor
    tokens: Tensor


class ToyImageEncoder(ModelMixin, ConfigMixin):
    """toy-clip's image tower (≈0.86M parameters at the full config).

    ``forward(pixel_values (B,3,H,W) in [0,1])``; other sizes are area-resized to ``image_size`` first.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        channels: tuple[int, ...] = (32, 64, 128, 128),
        strides: tuple[int, ...] = (1, 2, 2, 2),
        norm_groups: int = 8,
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width, stride in zip(channels, strides):
            for conv_stride in (stride, 1):
                layers += [
                    nn.Conv2d(previous, width, 3, stride=conv_stride, padding=1),
                    nn.GroupNorm(norm_groups, width),
                    nn.SiLU(),
                ]
                previous = width
        self.features = nn.Sequential(*layers)
        grid = image_size // math.prod(strides)
        self.grid = grid
        self.to_embed = nn.Linear(previous * grid * grid, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.projection = nn.Linear(embed_dim, embed_dim, bias=False)
        self.to_tokens = nn.Identity() if previous == embed_dim else nn.Linear(previous, embed_dim, bias=False)

    def forward(
        self, pixel_values: Tensor, return_dict: bool = True
    ) -> ToyImageEncoderOutput | tuple[Tensor, Tensor]:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.in_channels:
            raise ValueError(f"pixel_values must be (B,3,H,W) in [0,1], got {tuple(pixel_values.shape)}")
        size = self.config.image_size
        if pixel_values.shape[-2:] != (size, size):
            pixel_values = F.interpolate(pixel_values, size=(size, size), mode="area")
        features = self.features(pixel_values * 2 - 1)
        tokens = self.to_tokens(features.flatten(2).transpose(1, 2))
        embeds = self.projection(self.norm(self.to_embed(features.flatten(1))))
        if not return_dict:
            return embeds, tokens
        return ToyImageEncoderOutput(image_embeds=embeds, tokens=tokens)


# --- pixel VAE (§8.1) ---------------------------------------------------------------------------------------
class ToyPixelVAE(ModelMixin, ConfigMixin):
    """The VAE interface without weights: ``factor=1`` identity, ``factor=2`` lossless ``pixel_unshuffle``.

    ``encode(x (B,3,H,W) in [-1,1]).latent_dist`` is a deterministic ``DiagonalGaussianDistribution`` whose
    ``sample()``/``mode()`` are exact; ``decode(z (B,3·f²,H/f,W/f)).sample`` inverts it bit for bit. The dummy
    ``block_out_channels`` (length ``1+log2 f``) makes pipelines derive ``vae_scale_factor = f``.
    """

    @register_to_config
    def __init__(
        self,
        factor: int = 1,
        in_channels: int = 3,
        latent_channels: int | None = None,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        block_out_channels: tuple[int, ...] | None = None,
        force_upcast: bool = False,
    ) -> None:
        super().__init__()
        if factor not in (1, 2):
            raise ValueError(f"ToyPixelVAE supports factor 1 or 2, got {factor}")
        expected_latent = in_channels * factor * factor
        expected_blocks = 1 + int(math.log2(factor))
        if latent_channels is not None and latent_channels != expected_latent:
            raise ValueError(f"latent_channels must be {expected_latent} for factor {factor}")
        if block_out_channels is not None and len(block_out_channels) != expected_blocks:
            raise ValueError(f"block_out_channels must have length {expected_blocks} for factor {factor}")
        self.register_to_config(
            latent_channels=expected_latent,
            block_out_channels=tuple(block_out_channels or (expected_latent,) * expected_blocks),
        )
        # A float buffer so that ``.dtype``/``.device`` work on a module without weights.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _to_latent(self, x: Tensor) -> Tensor:
        return x if self.config.factor == 1 else F.pixel_unshuffle(x, self.config.factor)

    def _to_pixels(self, z: Tensor) -> Tensor:
        return z if self.config.factor == 1 else F.pixel_shuffle(z, self.config.factor)

    def encode(self, x: Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"encode expects (B,{self.config.in_channels},H,W) in [-1,1], got {tuple(x.shape)}")
        mean = self._to_latent(x)
        dist = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], 1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: Tensor, return_dict: bool = True, generator=None) -> DecoderOutput | tuple:
        if z.dim() != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"decode expects (B,{self.config.latent_channels},h,w), got {tuple(z.shape)}")
        pixels = self._to_pixels(z)
        return DecoderOutput(sample=pixels) if return_dict else (pixels,)

    def forward(self, sample: Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)


# --- builders of the stock diffusers denoisers (§8.2–8.4) ---------------------------------------------------
def make_text_encoder(preset: str = "full") -> ToyTextEncoder:
    return ToyTextEncoder(**model_config("text_encoder", preset))


def make_image_encoder(preset: str = "full") -> ToyImageEncoder:
    return ToyImageEncoder(**model_config("image_encoder", preset))


def make_sd3(preset: str = "full"):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**model_config("sd3", preset))


def make_flux(preset: str = "full"):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**model_config("flux", preset))


def make_unet(preset: str = "full"):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**model_config("unet", preset))


def make_controlnet(unet, preset: str = "full"):
    """``ControlNetModel.from_unet`` (copies the encoder weights of ``unet``; zero-initialised outputs)."""
    from diffusers import ControlNetModel

    if getattr(unet.config, "encoder_hid_dim_type", None) == "ip_image_proj":
        raise ValueError("build the ControlNet from a UNet without an IP-Adapter loaded")
    return ControlNetModel.from_unet(unet, **model_config("controlnet", preset))


def _cross_attention_processor_names(unet) -> list[str]:
    """The UNet's cross-attention processor names in the order of the original IP-Adapter key ids."""
    return [name for name in unet.attn_processors if not name.endswith("attn1.processor")]


def _attention_module(unet, processor_name: str) -> nn.Module:
    return unet.get_submodule(processor_name.removesuffix(".processor"))


def make_ip_adapter_state_dict(unet, preset: str = "full") -> dict[str, Tensor]:
    """A fresh IP-Adapter in the original key layout (``image_proj.*``, ``ip_adapter.{1,3,5,..}.to_{k,v}_ip``).

    The image projection is randomly initialised; ``to_k_ip``/``to_v_ip`` start as copies of the UNet's text
    ``to_k``/``to_v`` at each cross-attention site (as the original IP-Adapter training does).
    """
    from diffusers.models.embeddings import ImageProjection

    config = model_config("ip_adapter", preset)
    projection = ImageProjection(**config)
    state: dict[str, Tensor] = {
        "image_proj.proj.weight": projection.image_embeds.weight.detach().clone(),
        "image_proj.proj.bias": projection.image_embeds.bias.detach().clone(),
        "image_proj.norm.weight": projection.norm.weight.detach().clone(),
        "image_proj.norm.bias": projection.norm.bias.detach().clone(),
    }
    for number, name in enumerate(_cross_attention_processor_names(unet)):
        attention = _attention_module(unet, name)
        key_id = 1 + 2 * number
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = attention.to_k.weight.detach().clone()
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = attention.to_v.weight.detach().clone()
    return state


def ip_adapter_state_dict_from_unet(unet) -> dict[str, Tensor]:
    """Read a loaded IP-Adapter back out of ``unet`` into the original key layout (the inverse of
    ``unet._load_ip_adapter_weights``); raises if no IP-Adapter is loaded."""
    projection_layers = getattr(getattr(unet, "encoder_hid_proj", None), "image_projection_layers", None)
    if not projection_layers:
        raise ValueError("this UNet has no IP-Adapter loaded")
    projection = projection_layers[0]
    state: dict[str, Tensor] = {
        "image_proj.proj.weight": projection.image_embeds.weight.detach().clone(),
        "image_proj.proj.bias": projection.image_embeds.bias.detach().clone(),
        "image_proj.norm.weight": projection.norm.weight.detach().clone(),
        "image_proj.norm.bias": projection.norm.bias.detach().clone(),
    }
    processors = unet.attn_processors
    for number, name in enumerate(_cross_attention_processor_names(unet)):
        processor = processors[name]
        key_id = 1 + 2 * number
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = processor.to_k_ip[0].weight.detach().clone()
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = processor.to_v_ip[0].weight.detach().clone()
    return state


def ip_adapter_parameters(unet) -> list[nn.Parameter]:
    """The IP-Adapter's own parameters inside a UNet that has one loaded (projection first, then k/v per site)."""
    projection_layers = getattr(getattr(unet, "encoder_hid_proj", None), "image_projection_layers", None)
    if not projection_layers:
        raise ValueError("this UNet has no IP-Adapter loaded")
    params = list(projection_layers.parameters())
    processors = unet.attn_processors
    for name in _cross_attention_processor_names(unet):
        params += list(processors[name].parameters())
    return params


def load_ip_adapter_into(unet, state: dict[str, Tensor]) -> None:
    """Load an IP-Adapter (original flat key layout) into ``unet`` with diffusers' own loader."""
    with quiet_diffusers():
        unet._load_ip_adapter_weights([split_ip_adapter_state_dict(state)], low_cpu_mem_usage=False)


def split_ip_adapter_state_dict(flat: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``{"image_proj.x": t, "ip_adapter.1.y": t}`` → ``{"image_proj": {"x": t}, "ip_adapter": {"1.y": t}}``."""
    nested: dict[str, dict[str, Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head not in nested:
            raise ValueError(f"unexpected IP-Adapter key {key!r}; expected image_proj.* or ip_adapter.*")
        nested[head][rest] = value
    return nested
