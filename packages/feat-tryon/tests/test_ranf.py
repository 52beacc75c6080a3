"""Spec §7 tests 17–25: the RANF loop (exact keep re-injection, DDIM steps, gating, calls, seeds)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from feat_helpers import DummyAdapter, LinearPhi, fake_prompt_encoder, person_batch, sdxl_adapter, sdxl_models

import feat_tryon.core as core
from feat_tryon.config import FEATConfig
from feat_tryon.core import run_feat
from feat_tryon.masks import region_masks
from feat_tryon.ranf import CallStats, ranf_sample, start_index
from flowcore.adapters import ControlInput
from flowcore.guidance import cfg, guided
from flowcore.sampling import sample, step
from flowcore.testing import CallCounter

B, C, H = 2, 4, 8


def _dummy_masks(size=H):
    mp = torch.zeros(B, 1, size, size)
    mp[..., 2:6, 1:7] = 1
    ms = torch.zeros(B, 1, size, size)
    ms[..., 2:6, 2:5] = 1
    return region_masks(mp, ms, (size, size), dilate_px=0)


def _conds():
    enc = fake_prompt_encoder(width=6, pooled=None)
    return enc(["a red shirt", "a blue shirt"]), enc(["", ""])


def _z_tilde(seed=5):
    return torch.randn(B, C, H, H, generator=torch.Generator().manual_seed(seed))


def test_17_keep_region_is_the_forward_noised_ofr_latent_every_step():
    adapter = DummyAdapter()
    masks = _dummy_masks()
    cond, uncond = _conds()
    z_tilde = _z_tilde()
    n = 6
    config = FEATConfig.preset("feat", num_inference_steps=n)
    seen: list[torch.Tensor] = []
    ranf_sample(adapter, z_tilde, masks, cond, uncond=uncond, config=config,
                generator=torch.Generator().manual_seed(11), callback=lambda i, z: seen.append(z.clone()))
    g = torch.Generator().manual_seed(11)
    randn_tensor((B, C, H, H), generator=g)  # ξ₀
    sched = adapter.schedule(n, height=H, width=H)
    ddim = DDIMScheduler.from_config(adapter.scheduler.config)
    ddim.set_timesteps(n)
    keep = masks.keep.bool().expand(B, C, H, H)
    assert len(seen) == n
    for i, z in enumerate(seen):
        j = i + 1
        if j == n:
            assert torch.equal(z[keep], z_tilde[keep])
            continue
        xi = randn_tensor((B, C, H, H), generator=g)
        want = sched.a[j] * z_tilde + sched.s[j] * xi
        assert torch.equal(z[keep], want[keep])
        ref = ddim.add_noise(z_tilde, xi, ddim.timesteps[j:j + 1].long())
        torch.testing.assert_close(z[keep], ref[keep], atol=1e-6, rtol=0)


def test_17b_fixed_and_noisy_variants():
    adapter = DummyAdapter()
    masks = _dummy_masks()
    cond, uncond = _conds()
    z_tilde = _z_tilde()
    config = FEATConfig.preset("feat", num_inference_steps=3, reinject_noise="fixed", final_keep="noisy")
    seen: list[torch.Tensor] = []
    ranf_sample(adapter, z_tilde, masks, cond, uncond=uncond, config=config,
                generator=torch.Generator().manual_seed(3), callback=lambda i, z: seen.append(z.clone()))
    xi0 = randn_tensor((B, C, H, H), generator=torch.Generator().manual_seed(3))
    sched = adapter.schedule(3, height=H, width=H)
    keep = masks.keep.bool().expand(B, C, H, H)
    want = sched.a[3] * z_tilde + sched.s[3] * xi0
    assert torch.equal(seen[-1][keep], want[keep])


def _two_pass_expectation(adapter, z, t, cond, uncond, masks, scale=7.5):
    def combined(ctrl):
        rows = torch.full((B,), ctrl, dtype=torch.bool)
        return cfg(adapter.raw(z, t, uncond.embeds, rows), adapter.raw(z, t, cond.embeds, rows), scale)

    eps_s, eps_r = combined(True), combined(False)
    return eps_s, eps_r, torch.where(masks.new.bool().expand_as(z), eps_s, eps_r)


def test_18_and_20_operating_region_is_ddim_on_the_mixed_prediction():
    adapter = DummyAdapter()
    masks = _dummy_masks()
    cond, uncond = _conds()
    z_tilde = _z_tilde()
    n = 4
    config = FEATConfig.preset("feat", num_inference_steps=n)
    control = ControlInput(image=torch.zeros(B, 3, H, H), scale=0.7)
    seen: list[torch.Tensor] = []
    ranf_sample(adapter, z_tilde, masks, cond, uncond=uncond, config=config, control=control,
                generator=torch.Generator().manual_seed(2), callback=lambda i, z: seen.append(z.clone()))
    assert adapter.calls[0]["rows"] == 4 * B and adapter.calls[0]["control_rows"] == 2 * B
    sched = adapter.schedule(n, height=H, width=H)
    xi0 = randn_tensor((B, C, H, H), generator=torch.Generator().manual_seed(2))
    z = sched.a[0] * z_tilde + sched.s[0] * xi0
    ddim = DDIMScheduler.from_config(adapter.scheduler.config)
    ddim.set_timesteps(n)
    op = masks.op.bool().expand(B, C, H, H)
    new = masks.new.bool().expand(B, C, H, H)
    removal = masks.removal.bool().expand(B, C, H, H)
    for i in range(n):
        t = sched.timesteps[i]
        eps_s, eps_r, eps = _two_pass_expectation(adapter, z, t, cond, uncond, masks)
        want = ddim.step(eps, ddim.timesteps[i], z, eta=0.0).prev_sample
        torch.testing.assert_close(seen[i][op], want[op], atol=1e-6, rtol=0)
        # test 20: the mix is exact, region by region
        assert torch.equal(seen[i][new], step(z, eps_s, sched, i, i + 1)[new])
        assert torch.equal(seen[i][removal], step(z, eps_r, sched, i, i + 1)[removal])
        z = seen[i]


def _sdxl_inputs(size=64):
    batch = person_batch(B, size)
    enc = fake_prompt_encoder()
    return batch, enc(["a shirt"] * B), enc([""] * B)


def test_19_full_mask_is_plain_cfg_controlnet_sampling_and_empty_mask_does_nothing():
    adapter = sdxl_adapter(ip=False)
    batch, cond, uncond = _sdxl_inputs()
    ones = torch.ones(B, 1, 64, 64)
    masks = region_masks(ones, ones, (8, 8))
    control = ControlInput(image=torch.rand(B, 3, 64, 64, generator=torch.Generator().manual_seed(0)), scale=0.7)
    config = FEATConfig.preset("feat", num_inference_steps=3, sketch_gating="none", init_from="noise")
    z_tilde = torch.randn(B, 4, 8, 8)
    got = ranf_sample(adapter, z_tilde, masks, cond, uncond=uncond, config=config, control=control,
                      generator=torch.Generator().manual_seed(4))
    noise = adapter.prepare_noise(B, 64, 64, generator=torch.Generator().manual_seed(4))
    sched = adapter.schedule(3, height=64, width=64)
    with torch.no_grad():
        want = sample(guided(adapter, cond, uncond=uncond, scale=7.5, control=control), noise, sched)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)

    # with an IP-Adapter: the CFG negatives get zero image embeddings (flowcore's guided(): the diffusers way)
    adapter = sdxl_adapter()
    embeds = torch.randn(B, 2, 16, generator=torch.Generator().manual_seed(3))
    got = ranf_sample(adapter, z_tilde, masks, cond, uncond=uncond, config=config, control=control,
                      image_embeds=embeds, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = sample(guided(adapter, cond, uncond=uncond, scale=7.5, control=control, image_embeds=embeds), noise,
                      sched)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)

    zeros = torch.zeros(1, 1, 64, 64)
    with CallCounter(adapter.denoiser) as unet_calls:
        out = run_feat(adapter, batch["person"][:1], zeros, design=batch["design"][:1], sketch_mask=zeros,
                       config=FEATConfig.preset("feat", num_inference_steps=3))
    assert unet_calls.calls == 0
    with torch.no_grad():
        want_img = adapter.decode_image(adapter.encode_image(batch["person"][:1]))
    assert torch.equal(out.images, want_img)


def test_20b_batched_and_unbatched_passes_agree():
    adapter = sdxl_adapter()
    batch, _, _ = _sdxl_inputs()
    outs = []
    for batched in (True, False):
        config = FEATConfig.preset("feat", num_inference_steps=2, batch_passes=batched)
        outs.append(run_feat(adapter, batch["person"], batch["garment_mask"], design=batch["design"],
                             sketch_mask=batch["sketch_mask"], prompt="a shirt", config=config,
                             generator=torch.Generator().manual_seed(0)).images)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


def test_21_residual_mask_gates_every_residual_and_matches_the_extremes():
    adapter = sdxl_adapter(ip=False)
    batch, cond, uncond = _sdxl_inputs()
    control = ControlInput(image=torch.rand(B, 3, 64, 64, generator=torch.Generator().manual_seed(0)), scale=0.7)
    z_tilde = torch.randn(B, 4, 8, 8)
    captured: list[dict] = []

    def grab(module, args, kwargs):
        captured.append({"down": kwargs.get("down_block_additional_residuals"),
                         "mid": kwargs.get("mid_block_additional_residual")})

    masks = region_masks(batch["garment_mask"], batch["sketch_mask"], (8, 8))
    config = FEATConfig.preset("feat", num_inference_steps=1, sketch_gating="residual_mask")
    hook = adapter.denoiser.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        ranf_sample(adapter, z_tilde, masks, cond, uncond=uncond, config=config, control=control,
                    generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    gate = masks.new.repeat(2, 1, 1, 1)
    for res in [*captured[0]["down"], captured[0]["mid"]]:
        pooled = torch.nn.functional.interpolate(gate, size=res.shape[-2:], mode="area")
        outside = (pooled == 0).expand_as(res)
        assert bool(outside.any()) or res.shape[-1] < 4
        assert torch.equal(res[outside], torch.zeros_like(res[outside]))

    def run(masks, gating, ctrl):
        cfg_ = FEATConfig.preset("feat", num_inference_steps=2, sketch_gating=gating)
        return ranf_sample(adapter, z_tilde, masks, cond, uncond=uncond, config=cfg_, control=ctrl,
                           generator=torch.Generator().manual_seed(1))

    ones = torch.ones(B, 1, 64, 64)
    all_new = region_masks(ones, ones, (8, 8))
    assert torch.equal(run(all_new, "residual_mask", control), run(all_new, "none", control))
    no_new = region_masks(ones, torch.zeros_like(ones), (8, 8))
    assert torch.equal(run(no_new, "residual_mask", control), run(no_new, "none", None))


def _count_run(adapter, config, batch, garment=None, sketch=None):
    with CallCounter(adapter.denoiser) as unet, CallCounter(adapter.controlnet) as cnet:
        out = run_feat(adapter, batch["person"], batch["garment_mask"] if garment is None else garment,
                       design=batch["design"], sketch_mask=batch["sketch_mask"] if sketch is None else sketch,
                       prompt="a shirt", config=config, generator=torch.Generator().manual_seed(0))
    return out, unet, cnet


def test_22_calls_per_step_and_sidecar_counts():
    phi = LinearPhi()
    adapter = sdxl_adapter(phi=phi)
    batch, _, _ = _sdxl_inputs()
    encodes: list[int] = []
    original = adapter.encode_image
    adapter.encode_image = lambda images: (encodes.append(images.shape[0]), original(images))[1]
    core._WHITE_CACHE.clear()
    steps = 2

    def per_step(counter):
        return counter.calls / steps, counter.rows / steps / B

    out, unet, cnet = _count_run(adapter, FEATConfig.preset("feat", num_inference_steps=steps), batch)
    assert per_step(unet) == (1, 4) and cnet.rows / steps / B == 2
    assert encodes == [2 * B, 1] and phi.calls == 1 and phi.images == 2 * B
    calls = out.info["calls"]
    assert (calls["unet_calls"], calls["unet_samples"], calls["controlnet_samples"]) == (unet.calls, unet.rows,
                                                                                        cnet.rows)
    assert calls["vae_encode_images"] == 2 * B + 1 and calls["encoder_images"] == 2 * B
    encodes.clear()
    out, unet, cnet = _count_run(adapter, FEATConfig.preset("feat", num_inference_steps=steps), batch)
    assert encodes == [2 * B] and out.info["calls"]["vae_encode_images"] == 2 * B  # white is cached
    out, unet, cnet = _count_run(adapter, FEATConfig.preset("feat_residual_mask", num_inference_steps=steps), batch)
    assert per_step(unet) == (1, 2) and cnet.rows / steps / B == 2
    out, unet, cnet = _count_run(adapter, FEATConfig.preset("feat", num_inference_steps=steps, guidance_scale=1.0),
                                 batch)
    assert per_step(unet) == (1, 2) and cnet.rows / steps / B == 1
    out, unet, cnet = _count_run(adapter, FEATConfig.preset("feat", num_inference_steps=steps, batch_passes=False),
                                 batch)
    assert per_step(unet) == (2, 4)
    accessory = torch.zeros_like(batch["garment_mask"])
    out, unet, cnet = _count_run(adapter, FEATConfig.preset("feat", num_inference_steps=steps), batch,
                                 garment=accessory)
    assert per_step(unet) == (1, 2) and all(out.info["ofr"]["noop"])


def test_23_sdxl_schedule_numbers():
    sched = sdxl_adapter().schedule(50, height=1024, width=1024)
    assert int(sched.timesteps[0]) == 981 and int(sched.timesteps[-1]) == 1
    assert abs(float(sched.a[0]) - 0.07600) < 1e-5
    assert abs(float(sched.a[-1]) ** 2 - 0.99915) < 1e-5
    assert float(sched.a[-1]) ** 2 == pytest.approx(float(sdxl_models()["scheduler"].alphas_cumprod[0]), abs=1e-7)


@pytest.mark.parametrize("strength", [1.0, 0.8, 0.35, 0.05])
def test_24_init_strength_sets_the_start_and_the_number_of_calls(strength):
    adapter = DummyAdapter()
    cond, uncond = _conds()
    n = 10
    stats = CallStats()
    config = FEATConfig.preset("feat", num_inference_steps=n, init_strength=strength)
    ranf_sample(adapter, _z_tilde(), _dummy_masks(), cond, uncond=uncond, config=config, stats=stats,
                generator=torch.Generator().manual_seed(0))
    k0 = start_index(n, strength)
    expected_steps = {1.0: 10, 0.8: 8, 0.35: 4, 0.05: 1}[strength]  # round half up, at least one step
    assert k0 == n - expected_steps
    assert len(adapter.calls) == expected_steps == stats.steps
    sched = adapter.schedule(n, height=H, width=H)
    assert adapter.calls[0]["t"] == float(sched.timesteps[k0])


def test_25_same_seed_same_result_other_seed_differs():
    adapter = sdxl_adapter()
    batch, _, _ = _sdxl_inputs()
    config = FEATConfig.preset("feat", num_inference_steps=2)

    def go(seed):
        return run_feat(adapter, batch["person"], batch["garment_mask"], design=batch["design"],
                        sketch_mask=batch["sketch_mask"], prompt="a shirt", config=config,
                        generator=torch.Generator().manual_seed(seed)).images

    a, b, c = go(7), go(7), go(8)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("mode", ["hard", "feather"])
def test_paste_back_restores_the_person_outside_the_operating_area(mode):
    adapter = sdxl_adapter()
    batch, _, _ = _sdxl_inputs()
    config = FEATConfig.preset("feat", num_inference_steps=1, paste_back=mode)
    out = run_feat(adapter, batch["person"], batch["garment_mask"], design=batch["design"],
                   sketch_mask=batch["sketch_mask"], config=config, generator=torch.Generator().manual_seed(0))
    off = run_feat(adapter, batch["person"], batch["garment_mask"], design=batch["design"],
                   sketch_mask=batch["sketch_mask"], config=FEATConfig.preset("feat", num_inference_steps=1),
                   generator=torch.Generator().manual_seed(0))
    inside = out.masks.operating.bool().expand_as(out.images)
    assert torch.equal(out.images[inside], off.images[inside])
    far = ~torch.nn.functional.max_pool2d(out.masks.operating, 9, 1, 4).bool().expand_as(out.images)
    torch.testing.assert_close(out.images[far], batch["person"][far], atol=1e-6, rtol=0)
    assert not torch.allclose(off.images[far], batch["person"][far], atol=1e-3)  # the tiny VAE is lossy
