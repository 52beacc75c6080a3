"""Spec §7 test 26: the flow-model port (tiny SD3 with its ControlNet, tiny FLUX)."""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor
from feat_helpers import flux_adapter, person_batch, sd3_adapter

from feat_tryon.config import FEATConfig
from feat_tryon.core import run_feat
from feat_tryon.masks import region_masks
from feat_tryon.ranf import _native_mask, _residual_gate, ranf_sample
from flowcore.adapters import ControlInput
from flowcore.guidance import guided

B = 2


def _setup(adapter, size=64):
    batch = person_batch(B, size)
    enc = adapter.prompt_encoder
    cond, uncond = enc(["a shirt"] * B), enc([""] * B)
    grid = size // adapter.vae_scale_factor
    masks = region_masks(batch["garment_mask"], batch["sketch_mask"], (grid, grid))
    return batch, cond, uncond, masks


def _check_keep(adapter, seen, z_tilde, masks, seed, n):
    g = torch.Generator().manual_seed(seed)
    first = adapter.prepare_noise(B, 64, 64, generator=g)
    sched = adapter.schedule(n, height=64, width=64)
    keep = ~_native_mask(adapter, masks.op, first)
    for i, z in enumerate(seen):
        j = i + 1
        if j == n:
            assert torch.equal(z[keep], z_tilde[keep])
            continue
        xi = randn_tensor(z.shape, generator=g)
        sigma = sched.sigmas[j]
        want = (1 - sigma) * z_tilde + sigma * xi
        torch.testing.assert_close(z[keep], want[keep], atol=1e-6, rtol=0)


def test_26_sd3_keep_euler_and_token_gate():
    adapter = sd3_adapter()
    _batch, cond, uncond, masks = _setup(adapter)
    z_tilde = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    control = ControlInput(image=torch.rand(B, 3, 64, 64), scale=0.7)
    n = 3
    seen: list[torch.Tensor] = []
    config = FEATConfig.preset("feat", num_inference_steps=n, guidance_scale=3.5, sketch_gating="none")
    ranf_sample(adapter, z_tilde, masks, cond, uncond=uncond, config=config, control=control,
                generator=torch.Generator().manual_seed(5), callback=lambda i, z: seen.append(z.clone()))
    _check_keep(adapter, seen, z_tilde, masks, 5, n)
    sched = adapter.schedule(n, height=64, width=64)
    z0 = adapter.prepare_noise(B, 64, 64, generator=torch.Generator().manual_seed(5))
    assert float(sched.sigmas[0]) == 1.0  # strength 1 starts from pure noise
    with torch.no_grad():
        v = guided(adapter, cond, uncond=uncond, scale=3.5, control=control, schedule=sched)(z0, 0)
    op = _native_mask(adapter, masks.op, z0)
    euler = z0 + (sched.sigmas[1] - sched.sigmas[0]) * v
    torch.testing.assert_close(seen[0][op], euler[op], atol=1e-6, rtol=0)

    gate = _residual_gate(adapter, masks.new)
    assert gate.shape == (B, 16, 1)
    want = torch.nn.functional.avg_pool2d(masks.new, 2).flatten(2).transpose(1, 2)
    assert torch.equal(gate, want)
    captured = []
    hook = adapter.denoiser.register_forward_pre_hook(
        lambda m, a, k: captured.append(k["block_controlnet_hidden_states"]), with_kwargs=True)
    try:
        config = FEATConfig.preset("feat", num_inference_steps=1, guidance_scale=3.5, sketch_gating="residual_mask")
        ranf_sample(adapter, z_tilde, masks, cond, uncond=uncond, config=config, control=control,
                    generator=torch.Generator().manual_seed(5))
    finally:
        hook.remove()
    zero_tokens = (gate.repeat(2, 1, 1)[..., 0] == 0)
    for res in captured[0]:
        assert torch.equal(res[zero_tokens], torch.zeros_like(res[zero_tokens]))


def test_26b_flux_packed_keep_and_round_trip():
    adapter = flux_adapter()
    _batch, cond, _, masks = _setup(adapter)
    packed_like = adapter.from_grid(torch.zeros(B, 4, 8, 8))
    lopsided = torch.zeros(B, 1, 8, 8)
    lopsided[:, :, 1:3, 2:7] = 1  # not symmetric: a transposed or shuffled packing shows
    for mask in (masks.op, masks.new, lopsided):
        native = _native_mask(adapter, mask, packed_like)
        assert native.shape == packed_like.shape
        assert torch.equal(adapter.to_grid(native.float(), 64, 64), mask.expand(B, 4, 8, 8))
    z_tilde = adapter.from_grid(torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(2)))
    n = 2
    seen: list[torch.Tensor] = []
    config = FEATConfig.preset("feat", num_inference_steps=n, guidance_scale=3.5)
    ranf_sample(adapter, z_tilde, masks, cond, config=config, generator=torch.Generator().manual_seed(6),
                callback=lambda i, z: seen.append(z.clone()))
    _check_keep(adapter, seen, z_tilde, masks, 6, n)


def test_26c_run_feat_on_flow_models_end_to_end():
    for adapter in (sd3_adapter(), flux_adapter()):
        batch = person_batch(1, 64)
        out = run_feat(adapter, batch["person"], batch["garment_mask"], prompt="a blue shirt",
                       sketch_mask=batch["sketch_mask"],
                       config=FEATConfig.preset("feat", num_inference_steps=2, guidance_scale=3.5, init_strength=0.5),
                       generator=torch.Generator().manual_seed(0))
        assert out.images.shape == (1, 3, 64, 64) and bool(torch.isfinite(out.images).all())
        per_step = out.info["calls"]["unet_samples_per_step"]
        assert per_step == (1 if adapter.guidance_kind == "embedded" else (4 if adapter.controlnet else 2))
