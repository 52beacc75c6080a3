"""Architecture configs of the real UNets (no weights): routing checks and the full-size GPU benchmark build them
on the meta device or with random weights, so nothing is downloaded."""

from __future__ import annotations

from typing import Any

__all__ = ["SD15_CONTROLNET_EXTRA", "SD15_UNET_CONFIG", "SDXL_UNET_CONFIG", "build_unet"]

SDXL_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
"""``stabilityai/stable-diffusion-xl-base-1.0`` unet/config.json (the architecture fields)."""

SD15_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8, cross_attention_dim=768,
)
"""Stable Diffusion 1.5 unet/config.json (the architecture fields)."""

SD15_CONTROLNET_EXTRA: dict[str, Any] = {}


def build_unet(config: dict[str, Any], *, device: str = "meta", dtype: Any = None) -> Any:
    """``UNet2DConditionModel(**config)`` on ``device`` (``meta``: shapes only, no memory)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(**config)
    return unet if dtype is None else unet.to(dtype)
