"""toy-unet's ε-prediction on 32 clean test scenes (conditional): rms(ε̂ − ε), the slope of ε̂ on ε, the rmse of
the implied x̂0 and its high-frequency energy at several timesteps, then the same energy in samples from noise; the
undertraining diagnostic quoted in shared/README.md.

    python shared/scripts/toy_unet_eps.py      # packaged weights; FLOWCORE_TOY_WEIGHTS=DIR to compare another set

``|dy|`` is the mean absolute difference of vertically adjacent pixels of the decoded image in [0, 1]: ≈ 0.01 for a
clean toy scene (flat colours), larger when a 2×2-periodic pattern from the space-to-depth latent is left over.

``mean gain`` asks whether the UNet reads colour from the noise: at the first DDIM timestep it adds δ to one latent
channel of pure noise, everywhere, and reports how far the channel's mean in x̂0 moves, per δ. A model that treats
the shift as noise moves x̂0 by ≈ 0; one that takes it as the picture's colour by up to 1/√ᾱ_t (13 at t = 981).
SD1.5's betas leave ᾱ_999 = 0.0047, so x_T keeps 0.069·x0 and, on a 32×32 toy, each channel's mean over its 256
positions shows the background colour at SNR ≈ 1; "samples from zero-mean noise" repeats the samples with every
channel's mean removed from the noise: a model that reads means draws grey backgrounds there.
"""

from __future__ import annotations

import torch

from flowcore import toy
from flowcore.adapters import adapter_from_toy
from flowcore.guidance import guided
from flowcore.prediction import to_x0_eps
from flowcore.sampling import sample
from flowcore.toy.judge import read_scene
from flowcore.toy.scene import sample_scene


def vertical_roughness(images: torch.Tensor) -> float:
    """Mean |I[y+1] − I[y]| of (B, C, H, W) images in [0, 1]."""
    return (images[..., 1:, :] - images[..., :-1, :]).abs().mean().item()


def mean_gain(x0_hat_at, noise: torch.Tensor, delta: float = 0.1) -> list[float]:
    """Per latent channel and δ ∈ {+delta, −delta}: the move of x̂0's channel mean per δ added to that channel of
    ``noise`` (B, C, h, w). ``x0_hat_at(x)`` is x̂0 at the first sampling timestep."""
    base = x0_hat_at(noise)
    gains = []
    for d in (delta, -delta):
        for channel in range(noise.shape[1]):
            shifted = noise.clone()
            shifted[:, channel] += d
            gains.append(float((x0_hat_at(shifted)[:, channel].mean() - base[:, channel].mean()) / d))
    return gains


@torch.no_grad()
def main(n: int = 32, timesteps: tuple[int, ...] = (999, 900, 700, 500, 200, 50), sample_steps: int = 50) -> None:
    bundle = toy.load("toy-unet")
    model = adapter_from_toy(bundle)  # one load: the raw denoiser for ε̂ at fixed t, the adapter for I/O and sampling
    scenes = [sample_scene(0, i, "test") for i in range(n)]
    x0 = model.encode_image(torch.stack([s.render() for s in scenes]))
    cond, uncond = model.encode_prompt([s.caption() for s in scenes]), model.encode_prompt([""] * n)

    def decoded_roughness(latents: torch.Tensor) -> float:
        return vertical_roughness(model.decode_image(latents))

    def x0_hat_at(t: int, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂) of the conditional ε-prediction at integer timestep ``t``."""
        abar = bundle.scheduler.alphas_cumprod[t]
        eps_hat = bundle.denoiser(xt, torch.full((n,), t), encoder_hidden_states=cond.embeds).sample
        return to_x0_eps(eps_hat, xt, abar.sqrt(), (1 - abar).sqrt(), kind="eps")[0], eps_hat

    generator = torch.Generator().manual_seed(0)
    print(f"clean scenes: |dy| {decoded_roughness(x0):.3f}")
    for t in timesteps:
        eps = torch.randn(x0.shape, generator=generator)
        abar = bundle.scheduler.alphas_cumprod[t]
        x0_hat, eps_hat = x0_hat_at(t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
        print(f"t={t:4d}  rms(eps_hat - eps) {(eps_hat - eps).pow(2).mean().sqrt():.4f}  "
              f"slope {(eps_hat * eps).sum() / eps.pow(2).sum():.3f}  x0 rmse {(x0_hat - x0).pow(2).mean().sqrt():.3f}  "
              f"x0 |dy| {decoded_roughness(x0_hat):.3f}")

    schedule = model.schedule(sample_steps, height=32, width=32)
    t_first = int(schedule.timesteps[0])
    gains = mean_gain(lambda x: x0_hat_at(t_first, x)[0],
                      model.prepare_noise(n, 32, 32, generator=torch.Generator().manual_seed(1)))
    print(f"mean gain at t={t_first}: {sum(gains) / len(gains):.2f} (0: the shift is read as noise; "
          f"{1 / bundle.scheduler.alphas_cumprod[t_first].sqrt():.1f}: read as colour), "
          f"channels {min(gains):.2f} … {max(gains):.2f}")

    # the same captions sampled from noise (DDIM as gate U1): does the trajectory shed the pattern, and is guidance
    # the cause? (x̂0 roughness is printed along the CFG 7.5 trajectory)
    trajectory: list[str] = []
    state = {"x": torch.empty(0)}  # the latents at the current point, for x̂0 in the callback

    def record_x0(i: int, x_next: torch.Tensor, out: torch.Tensor) -> None:
        if i in (0, sample_steps // 4, sample_steps // 2, sample_steps - 1):
            x0_hat, _ = to_x0_eps(out, state["x"], schedule.a[i], schedule.s[i], kind="eps")
            trajectory.append(f"t={float(schedule.timesteps[i]):.0f} {decoded_roughness(x0_hat):.3f}")
        state["x"] = x_next

    noise = model.prepare_noise(n, 32, 32, generator=torch.Generator().manual_seed(0))
    images = {}
    for cfg in (1.0, 7.5):
        state["x"] = noise
        latents = sample(guided(model, cond, uncond=uncond, scale=cfg), noise, schedule,
                         callback=record_x0 if cfg == 7.5 else None)
        images[cfg] = model.decode_image(latents)
        along = f"; x0_hat |dy| along the trajectory: {', '.join(trajectory)}" if trajectory else ""
        print(f"samples from noise (DDIM {sample_steps}, CFG {cfg}): |dy| {vertical_roughness(images[cfg]):.3f}{along}")
    # CFG 7.5 again from the same noise with every channel's mean removed; the judge reads the backgrounds of both
    zero_mean = noise - noise.mean(dim=(2, 3), keepdim=True)
    images["zero-mean"] = model.decode_image(sample(guided(model, cond, uncond=uncond, scale=7.5), zero_mean, schedule))
    for label, key in (("noise", 7.5), ("zero-mean noise", "zero-mean")):
        right = sum(r.background == s.background.color for r, s in zip(read_scene(images[key]), scenes))
        print(f"samples from {label} (CFG 7.5): background right {right}/{n}, "
              f"|dy| {vertical_roughness(images[key]):.3f}, mean pixel {images[key].mean():.3f}")


if __name__ == "__main__":
    main()
