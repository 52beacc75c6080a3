"""Tiny random models for tests and CPU benchmarks (no transformers, no downloads).

``tiny_unet_model`` (SD1.5-shaped UNet, ``block_out_channels=(32, 64)``, cross width 32, DDIM with SD's betas) and
``tiny_sd3_model`` (SD3, 2 layers, 2×16 heads, FlowMatch Euler shift 3) come with a tiny ControlNet whose zero
convolutions are randomised (so control acts) and a deterministic fake prompt encoder (a seeded random embedding
per prompt string). ``random_edges`` gives edge maps; ``attach_random`` an attribute network with random ``W_o``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowcore.adapters import Conditioning
from style_attr.filters import AttributeSpec
from style_attr.network import AttributeControlNet, randomize_attribute_layers

__all__ = ["attach_random", "fake_prompt_encoder", "random_edges", "tiny_sd3_model", "tiny_unet_model"]


def fake_prompt_encoder(width: int, pooled_width: int | None = None, length: int = 8):
    """``prompts -> Conditioning``: each prompt string maps to its own seeded N(0, 1) embedding ``(length, width)``
    (and pooled ``(pooled_width,)``); the same string always gives the same rows."""

    def encode(prompts: list[str], **_: Any) -> Conditioning:
        embeds, pooled = [], []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little")
            g = torch.Generator().manual_seed(seed)
            embeds.append(torch.randn(length, width, generator=g))
            if pooled_width:
                pooled.append(torch.randn(pooled_width, generator=g))
        return Conditioning(torch.stack(embeds), torch.stack(pooled) if pooled_width else None)

    return encode


def tiny_unet_model(seed: int = 0, **unet_cfg: Any):
    """A ``flowcore`` UNetModel over a tiny SD1.5-shaped UNet + ControlNet (64×64 px images, 8×8 latents)."""
    from diffusers import DDIMScheduler

    from flowcore.adapters import UNetModel
    from flowcore.testing import tiny_controlnet, tiny_unet, tiny_vae

    cfg = {"block_out_channels": (32, 64), "attention_head_dim": (2, 4), **unet_cfg}
    unet = tiny_unet("sd15", seed=seed, **cfg)
    controlnet = tiny_controlnet(unet, seed=seed + 1)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    return UNetModel(unet, tiny_vae("sd", seed=seed), scheduler, prompt_encoder=fake_prompt_encoder(32),
                     model_id="tiny-sd15", controlnet=controlnet)


def tiny_sd3_model(seed: int = 0, controlnet_layers: int = 1, **sd3_cfg: Any):
    """A ``flowcore`` SD3Model over a tiny SD3 (2 layers, 2×16 heads) + an SD3 ControlNet (64×64 px images)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flowcore.adapters import SD3Model
    from flowcore.testing import tiny_controlnet, tiny_sd3, tiny_vae

    transformer = tiny_sd3(seed=seed, **sd3_cfg)
    controlnet = tiny_controlnet(transformer, seed=seed + 1, num_layers=controlnet_layers)
    return SD3Model(transformer, tiny_vae("sd3", seed=seed), FlowMatchEulerDiscreteScheduler(shift=3.0),
                    prompt_encoder=fake_prompt_encoder(64, 64), model_id="tiny-sd3", controlnet=controlnet)


def random_edges(batch: int = 1, size: int = 64, seed: int = 0) -> Tensor:
    """Sparse random white-on-black edge maps ``(B, 3, size, size)`` in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    edges = (torch.rand(batch, 1, size, size, generator=g) > 0.85).float()
    return edges.expand(-1, 3, -1, -1).contiguous()


def attach_random(controlnet: torch.nn.Module, family: str = "outline", params: Sequence[str] | None = None, *,
                  name: str = "attr", seed: int = 0, gain: float = 1.0, hidden_dim: int = 32,
                  tokens_per_param: int = 4) -> AttributeControlNet:
    """An attribute network with random ``W_o``/``b_o`` (acts like a trained one) on ``controlnet``."""
    spec = AttributeSpec.for_family(family, tuple(params) if params else None)
    net = AttributeControlNet.attach(controlnet, spec, name=name, hidden_dim=hidden_dim,
                                     tokens_per_param=tokens_per_param, seed=seed)
    return randomize_attribute_layers(net, seed=seed + 100, gain=gain)
