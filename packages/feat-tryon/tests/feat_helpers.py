"""Tiny models and fake encoders for the feat-tryon tests (no transformers, no downloads).

The SDXL-like UNet follows the spec §7 overrides: ``block_out_channels=(32, 64)``, ``layers_per_block=2``,
``transformer_layers_per_block=(1, 2)``, cross-attention width 64, ``text_time`` with 8-wide time embeddings.
Prompts are encoded by a seeded lookup (the empty prompt gives zeros, like SDXL's negatives) and the image encoder
φ is a fixed linear map, so CSPE's linearity can be checked exactly.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from flowcore.adapters import Conditioning, FluxModel, SD3Model, UNetModel

SDXL_UNET = dict(block_out_channels=(32, 64), layers_per_block=2, transformer_layers_per_block=(1, 2),
                 cross_attention_dim=64, addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
IP_DIM = 16
TEXT_LEN = 8


def _prompt_seed(prompt: str) -> int:
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)


def fake_prompt_encoder(width: int = 64, pooled: int | None = 32, length: int = TEXT_LEN,
                        text_ids: bool = False):
    def encode(prompts: list[str], **_: Any) -> Conditioning:
        embeds, pools = [], []
        for p in prompts:
            g = torch.Generator().manual_seed(_prompt_seed(p))
            scale = 0.0 if p == "" else 1.0
            embeds.append(scale * torch.randn(length, width, generator=g))
            if pooled:
                pools.append(scale * torch.randn(pooled, generator=g))
        ids = torch.zeros(length, 3) if text_ids else None
        return Conditioning(torch.stack(embeds), torch.stack(pools) if pooled else None, text_ids=ids)

    return encode


class LinearPhi:
    """A linear image encoder φ: area-resize to 8×8, flatten, a fixed random matrix → (N, 1, dim); counts images."""

    def __init__(self, dim: int = IP_DIM, seed: int = 3):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(3 * 64, dim, generator=g) / 8
        self.calls = 0
        self.images = 0

    def __call__(self, images: Tensor) -> Tensor:
        self.calls += 1
        self.images += images.shape[0]
        x = F.adaptive_avg_pool2d(images.float(), 8).flatten(1)
        return (x @ self.weight.to(x.dtype))[:, None]


@functools.lru_cache(maxsize=1)
def sdxl_models() -> dict[str, Any]:
    """Tiny SDXL-like UNet with an IP-Adapter, its twin without one, a ControlNet, a VAE and the SDXL DDIM."""
    from diffusers import DDIMScheduler

    from flowcore.testing import tiny_controlnet, tiny_ip_adapter, tiny_unet, tiny_vae

    plain = tiny_unet("sdxl", **SDXL_UNET)
    controlnet = tiny_controlnet(plain)
    with_ip = copy.deepcopy(plain)
    with_ip._load_ip_adapter_weights([tiny_ip_adapter(with_ip, image_embed_dim=IP_DIM, seed=1)])
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    return {"unet": with_ip, "plain_unet": plain, "controlnet": controlnet, "vae": tiny_vae("sdxl"),
            "scheduler": scheduler}


def sdxl_adapter(*, ip: bool = True, controlnet: bool = True, phi: LinearPhi | None = None) -> UNetModel:
    m = sdxl_models()
    return UNetModel(m["unet"] if ip else m["plain_unet"], m["vae"], m["scheduler"],
                     prompt_encoder=fake_prompt_encoder(), model_id="tiny-sdxl",
                     controlnet=m["controlnet"] if controlnet else None, image_encoder=phi or LinearPhi())


@functools.lru_cache(maxsize=1)
def sd3_models() -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flowcore.testing import tiny_controlnet, tiny_sd3, tiny_vae

    transformer = tiny_sd3()
    return {"transformer": transformer, "controlnet": tiny_controlnet(transformer), "vae": tiny_vae("sd3"),
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)}


def sd3_adapter(controlnet: bool = True) -> SD3Model:
    m = sd3_models()
    return SD3Model(m["transformer"], m["vae"], m["scheduler"], prompt_encoder=fake_prompt_encoder(64, 64),
                    model_id="tiny-sd3", controlnet=m["controlnet"] if controlnet else None)


@functools.lru_cache(maxsize=1)
def flux_models() -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flowcore.testing import tiny_flux, tiny_vae

    return {"transformer": tiny_flux(), "vae": tiny_vae("flux"),
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                         max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)}


def flux_adapter() -> FluxModel:
    m = flux_models()
    return FluxModel(m["transformer"], m["vae"], m["scheduler"],
                     prompt_encoder=fake_prompt_encoder(64, 32, text_ids=True), model_id="tiny-flux")


def person_batch(b: int = 1, size: int = 64, seed: int = 0) -> dict[str, Tensor]:
    """A synthetic person (3,H,W): grey background, a red 'garment' box aligned to the 8-px latent grid, a
    sketch mask that is smaller (shrinking) so every region is non-empty."""
    g = torch.Generator().manual_seed(seed)
    person = 0.5 + 0.1 * torch.rand(b, 3, size, size, generator=g)
    garment = torch.zeros(b, 1, size, size)
    garment[..., 16:48, 16:48] = 1
    person = torch.where(garment > 0, torch.tensor([0.85, 0.1, 0.1]).view(1, 3, 1, 1), person)
    sketch = torch.zeros(b, 1, size, size)
    sketch[..., 16:40, 24:40] = 1
    design = torch.rand(b, 3, 40, 24, generator=g)
    return {"person": person, "garment_mask": garment, "sketch_mask": sketch, "design": design}


class DummyAdapter:
    """A FlowModel stand-in for exact loop tests: VP (DDIM) or rf schedule, identity 'VAE', a prediction that
    depends on x, the conditioning rows and the ControlNet rows, and a record of every call."""

    vae_scale_factor = 1
    patch_size = 1
    controlnet = object()
    is_toy = False

    def __init__(self, family: str = "vp", channels: int = 4):
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        self.family = family
        self.prediction = "eps" if family == "vp" else "flow"
        self.guidance_kind = "cfg"
        self.channels = channels
        self.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                       timestep_spacing="leading") if family == "vp" else \
            FlowMatchEulerDiscreteScheduler(shift=3.0)
        self.calls: list[dict[str, Any]] = []
        self.device = torch.device("cpu")

    def schedule(self, n: int, *, height: int, width: int) -> Any:
        from flowcore.schedules import make_schedule

        return make_schedule(self.scheduler, n)

    def prepare_noise(self, b: int, h: int, w: int, *, generator: torch.Generator | None = None) -> Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor((b, self.channels, h, w), generator=generator, dtype=torch.float32)

    def from_grid(self, z: Tensor) -> Tensor:
        return z

    def to_grid(self, z: Tensor, h: int, w: int) -> Tensor:
        return z

    def combine_cfg(self, u: Tensor, c: Tensor, scale: float) -> Tensor:
        from flowcore.guidance import cfg

        return cfg(u, c, scale)

    def raw(self, x: Tensor, t: Tensor, cond_embeds: Tensor, control_rows: Tensor) -> Tensor:
        """The 'network': smooth in x, shifted by the conditioning and by the ControlNet on selected rows."""
        shift = cond_embeds.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        ctrl = control_rows.float().view(-1, 1, 1, 1) * 0.3
        return 0.2 * torch.tanh(x) + shift + ctrl + 1e-4 * float(t)

    def predict(self, x: Tensor, t: Tensor, cond: Conditioning, *, control: Any = None, image_embeds: Any = None,
                ctx: Any = None, guidance: Any = None, **_: Any) -> Tensor:
        rows = torch.zeros(x.shape[0], dtype=torch.bool)
        if control is not None:
            rows = torch.ones_like(rows) if control.rows is None else control.rows.bool()
        self.calls.append({"rows": x.shape[0], "control_rows": int(rows.sum()), "t": float(t)})
        return self.raw(x, t, cond.embeds, rows)
