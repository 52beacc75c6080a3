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


@torch.no_grad()
def main(n: int = 32, timesteps: tuple[int, ...] = (999, 900, 700, 500, 200, 50), sample_steps: int = 50) -> None:
    bundle = toy.load("toy-unet")
    model = adapter_from_toy(bundle)  # one load: the raw denoiser for ε̂ at fixed t, the adapter for I/O and sampling
    scenes = [sample_scene(0, i, "test") for i in range(n)]
    x0 = model.encode_image(torch.stack([s.render() for s in scenes]))
    cond, uncond = model.encode_prompt([s.caption() for s in scenes]), model.encode_prompt([""] * n)

    def decoded_roughness(latents: torch.Tensor) -> float:
        return vertical_roughness(model.decode_image(latents))

    generator = torch.Generator().manual_seed(0)
    print(f"clean scenes: |dy| {decoded_roughness(x0):.3f}")
    for t in timesteps:
        eps = torch.randn(x0.shape, generator=generator)
        abar = bundle.scheduler.alphas_cumprod[t]
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        eps_hat = bundle.denoiser(xt, torch.full((n,), t), encoder_hidden_states=cond.embeds).sample
        x0_hat, _ = to_x0_eps(eps_hat, xt, abar.sqrt(), (1 - abar).sqrt(), kind="eps")
        print(f"t={t:4d}  rms(eps_hat - eps) {(eps_hat - eps).pow(2).mean().sqrt():.4f}  "
              f"slope {(eps_hat * eps).sum() / eps.pow(2).sum():.3f}  x0 rmse {(x0_hat - x0).pow(2).mean().sqrt():.3f}  "
              f"x0 |dy| {decoded_roughness(x0_hat):.3f}")
    # the same captions sampled from noise (DDIM as gate U1): does the trajectory shed the pattern, and is guidance
    # the cause? (x̂0 roughness is printed along the CFG 7.5 trajectory)
    schedule = model.schedule(sample_steps, height=32, width=32)
    trajectory: list[str] = []
    state = {"x": torch.empty(0)}  # the latents at the current point, for x̂0 in the callback

    def record_x0(i: int, x_next: torch.Tensor, out: torch.Tensor) -> None:
        if i in (0, sample_steps // 4, sample_steps // 2, sample_steps - 1):
            x0_hat, _ = to_x0_eps(out, state["x"], schedule.a[i], schedule.s[i], kind="eps")
            trajectory.append(f"t={float(schedule.timesteps[i]):.0f} {decoded_roughness(x0_hat):.3f}")
        state["x"] = x_next

    t_first = int(schedule.timesteps[0])
    abar = bundle.scheduler.alphas_cumprod[t_first]
    noise = model.prepare_noise(n, 32, 32, generator=torch.Generator().manual_seed(1))
    gains = []
    for delta in (0.1, -0.1):
        for channel in range(noise.shape[1]):
            shifted = noise.clone()
            shifted[:, channel] += delta
            means = []
            for x in (noise, shifted):
                eps_hat = bundle.denoiser(x, torch.full((n,), t_first), encoder_hidden_states=cond.embeds).sample
                x0_hat, _ = to_x0_eps(eps_hat, x, abar.sqrt(), (1 - abar).sqrt(), kind="eps")
                means.append(x0_hat[:, channel].mean())
            gains.append(float((means[1] - means[0]) / delta))
    print(f"mean gain at t={t_first}: {sum(gains) / len(gains):.2f} (0: the shift is read as noise; "
          f"{1 / abar.sqrt():.1f}: read as colour), channels {min(gains):.2f} … {max(gains):.2f}")
    for cfg in (1.0, 7.5):
        noise = model.prepare_noise(n, 32, 32, generator=torch.Generator().manual_seed(0))
        state["x"] = noise
        latents = sample(guided(model, cond, uncond=uncond, scale=cfg), noise, schedule,
                         callback=record_x0 if cfg == 7.5 else None)
        along = f"; x0_hat |dy| along the trajectory: {', '.join(trajectory)}" if trajectory else ""
        print(f"samples from noise (DDIM {sample_steps}, CFG {cfg}): |dy| {decoded_roughness(latents):.3f}{along}")
    # the same at CFG 7.5 from noise without channel means, with the judge's background reading against the caption
    for label, start in (("noise", noise), ("zero-mean noise", noise - noise.mean(dim=(2, 3), keepdim=True))):
        images = model.decode_image(sample(guided(model, cond, uncond=uncond, scale=7.5), start, schedule))
        right = sum(r.background == s.background.color for r, s in zip(read_scene(images), scenes))
        print(f"samples from {label} (CFG 7.5): background right {right}/{n}, |dy| {vertical_roughness(images):.3f}, "
              f"mean pixel {images.mean():.3f}")


if __name__ == "__main__":
    main()
