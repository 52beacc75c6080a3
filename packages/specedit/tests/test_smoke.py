"""Smallest end-to-end check, runnable with only specedit's declared dependencies (no transformers).

toy-kontext's architecture (tiny CI preset, random weights) is driven by a Kontext-style Euler loop on its own
scheduler: SpecEdit with everything kept fine reproduces the plain loop bit for bit, and the default settings run
all three stages with the colour-pyramid verification.
"""

from __future__ import annotations

import numpy as np
import torch

from flowcore.schedules import calculate_shift
from flowcore.toy.bundle import build
from specedit import SpecEditConfig, apply_specedit, remove_specedit, specedit_summary


def _loop(bundle, steps: int = 6, seed: int = 0) -> torch.Tensor:
    """What FluxKontextPipeline does for toy-kontext at 32 px (16×16 tokens of width 12, equal reference)."""
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    noise = torch.randn(1, 3, 32, 32, generator=g)

    def pack(z):
        return z.view(1, 3, 16, 2, 16, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 256, 12)

    ids = torch.zeros(256, 3)
    ids[:, 1] = torch.arange(256) // 16
    ids[:, 2] = torch.arange(256) % 16
    img_ids = torch.cat([ids, ids + torch.tensor([1.0, 0.0, 0.0])])
    embeds, pooled = bundle.encode_prompt(["make the circle red"])
    sched = bundle.scheduler
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=calculate_shift(256))
    x, ref = pack(noise), pack(source)
    for t in sched.timesteps:
        out = bundle.denoiser(hidden_states=torch.cat([x, ref], 1), timestep=t.expand(1) / 1000,
                              guidance=torch.full((1,), 2.5), pooled_projections=pooled,
                              encoder_hidden_states=embeds, txt_ids=torch.zeros(embeds.shape[1], 3), img_ids=img_ids,
                              return_dict=False)[0][:, :256]
        x = sched.step(out, t, x, return_dict=False)[0]
    return x


@torch.no_grad()
def test_smoke_toy_kontext_exact_and_default():
    bundle = build("toy-kontext", random_init=True, preset="ci")
    plain = _loop(bundle)
    apply_specedit(bundle.denoiser, SpecEditConfig(tau=-1.0, n_coarse=0), vae=bundle.vae, scheduler=bundle.scheduler)
    assert torch.equal(_loop(bundle), plain)
    remove_specedit(bundle.denoiser)
    apply_specedit(bundle.denoiser, SpecEditConfig(), vae=bundle.vae, scheduler=bundle.scheduler)
    out = _loop(bundle)
    stats = specedit_summary(bundle.denoiser)
    assert out.shape == plain.shape and torch.isfinite(out).all()
    assert (stats.n_coarse, stats.n_mixed, stats.n_full) == (2, 3, 1)
    assert stats.feature_extractor == "color_pyramid" and stats.forward_calls_draft == 8
    assert stats.grid == (16, 16) and 0 < stats.rho <= 1 and stats.flop_ratio is not None
