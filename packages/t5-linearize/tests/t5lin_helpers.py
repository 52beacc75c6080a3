"""Helpers of the t5-linearize tests: the spec §7 tiny configs and random inputs (imported by the tests;
``conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch

# spec §7: SD3 sample 32, patch 2, in 4, 2 layers, 4×32 heads, joint 64, caption 128, pooled 64, RMS q/k norm,
# dual attention in layer 0; FLUX in 16, 1 double + 1 single, 4×32 heads, rope (8, 12, 12).
SD3_CONFIG = dict(sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=4,
                  attention_head_dim=32, joint_attention_dim=64, caption_projection_dim=128, pooled_projection_dim=64,
                  qk_norm="rms_norm", dual_attention_layers=(0,))
FLUX_CONFIG = dict(in_channels=16, num_layers=1, num_single_layers=1, num_attention_heads=4, attention_head_dim=32,
                   axes_dims_rope=(8, 12, 12))


def make_sd3(seed: int = 0, **overrides):
    from flowcore.testing import tiny_sd3

    return tiny_sd3(seed=seed, **{**SD3_CONFIG, **overrides})


def make_flux(seed: int = 0, **overrides):
    from flowcore.testing import tiny_flux

    return tiny_flux(seed=seed, **{**FLUX_CONFIG, **overrides})


def sd3_inputs(batch: int = 2, latent: tuple[int, int] = (8, 8), n_text: int = 7, seed: int = 0):
    """Keyword inputs of the tiny SD3 transformer (latent (h, w) → (h/2)·(w/2) image tokens)."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, *latent, generator=g),
        encoder_hidden_states=torch.randn(batch, n_text, 64, generator=g),
        pooled_projections=torch.randn(batch, 64, generator=g),
        timestep=torch.tensor([500.0, 250.0][:batch] + [100.0] * max(0, batch - 2)),
        return_dict=False,
    )


def flux_inputs(batch: int = 1, grid: tuple[int, int] = (4, 6), n_text: int = 5, reference: tuple[int, int] | None = None,
                seed: int = 0):
    """Keyword inputs of the tiny FLUX transformer (target grid, optional Kontext reference grid)."""
    from flowcore.adapters import FluxModel

    g = torch.Generator().manual_seed(seed)
    ids = FluxModel.image_ids(*grid)
    n_img = grid[0] * grid[1]
    if reference is not None:
        ids = torch.cat([ids, FluxModel.image_ids(*reference, 1.0)])
        n_img += reference[0] * reference[1]
    return dict(
        hidden_states=torch.randn(batch, n_img, 16, generator=g),
        encoder_hidden_states=torch.randn(batch, n_text, 64, generator=g),
        pooled_projections=torch.randn(batch, 32, generator=g),
        timestep=torch.full((batch,), 0.5),
        guidance=torch.full((batch,), 3.5),
        txt_ids=torch.zeros(n_text, 3),
        img_ids=ids,
        return_dict=False,
    )


def qkv(batch: int, n: int, heads: int = 2, dim: int = 8, seed: int = 0, dtype=torch.float64, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, n, heads, dim, generator=g, dtype=dtype) * scale for _ in range(3))


def tiny_adapter(transformer):
    """A flowcore SD3/FLUX adapter around a bare transformer (tiny VAE, SD3/FLUX scheduler, no text encoder):
    enough for training on precomputed latents and conditioning."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from flowcore.adapters import FluxModel, SD3Model
    from flowcore.testing import tiny_vae

    def no_text(prompts, **_):
        raise RuntimeError("this test adapter has no text encoder")

    if isinstance(transformer, SD3Transformer2DModel):
        return SD3Model(transformer, tiny_vae("sd3"), FlowMatchEulerDiscreteScheduler(shift=3.0),
                        prompt_encoder=no_text, model_id="tiny-sd3")
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    return FluxModel(transformer, tiny_vae("flux"), scheduler, prompt_encoder=no_text, model_id="tiny-flux")


class LayoutSpy:
    """Records the layout each TTT processor's attend sees (wraps ``attend`` on the instances)."""

    def __init__(self, model):
        self.seen: dict = {}
        for name, proc in model.ttt_processors().items():
            original = proc.attend

            def attend(q, k, v, ctx, name=name, original=original, proc=proc):
                self.seen[name] = proc._layout(ctx, q.shape[1])
                return original(q, k, v, ctx)

            proc.attend = attend
