"""toy-unet's ε-prediction on 32 clean test scenes (conditional): rms(ε̂ − ε), the slope of ε̂ on ε and the rmse of
the implied x̂0 at several timesteps; the undertraining diagnostic quoted in shared/README.md.

    python shared/scripts/toy_unet_eps.py      # packaged weights; FLOWCORE_TOY_WEIGHTS=DIR to compare another set
"""

from __future__ import annotations

import torch

from flowcore import toy
from flowcore.toy.scene import sample_scene


@torch.no_grad()
def main(n: int = 32, timesteps: tuple[int, ...] = (999, 900, 700, 500, 200, 50)) -> None:
    bundle = toy.load("toy-unet")
    scenes = [sample_scene(0, i, "test") for i in range(n)]
    pixels = torch.stack([s.render() for s in scenes]) * 2 - 1
    x0 = bundle.vae.encode(pixels).latent_dist.mode() * bundle.vae.config.scaling_factor
    text, _ = bundle.encode_prompt([s.caption() for s in scenes])
    generator = torch.Generator().manual_seed(0)
    for t in timesteps:
        eps = torch.randn(x0.shape, generator=generator)
        abar = bundle.scheduler.alphas_cumprod[t]
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        eps_hat = bundle.denoiser(xt, torch.full((n,), t), encoder_hidden_states=text).sample
        x0_hat = (xt - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
        print(f"t={t:4d}  rms(eps_hat - eps) {(eps_hat - eps).pow(2).mean().sqrt():.4f}  "
              f"slope {(eps_hat * eps).sum() / eps.pow(2).sum():.3f}  x0 rmse {(x0_hat - x0).pow(2).mean().sqrt():.3f}")


if __name__ == "__main__":
    main()
