"""N1 and the tensor plumbing: unit-variance derived noise, P₂U₂ = id, Haar orthonormality, the 2×2 packing."""

from __future__ import annotations

import pytest
import torch

from specedit.draft import draft_inputs
from specedit.ops import (
    coarse_view,
    haar_analysis,
    haar_synthesis,
    lift_velocity,
    nearest_up,
    pack,
    pad_reflect,
    pool,
    unpack,
)


def test_n1_derived_noise_has_unit_variance():
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(1, 16, 1000, 1000, generator=g)  # 1.6e7 samples; the pooled fields keep >= 1e6
    eps_bar = 2 * pool(eps, 2)
    eps_d = 4 * pool(eps, 4)
    assert eps_bar.numel() >= 1e6 and eps_d.numel() >= 1e6
    assert abs(float(eps_bar.var()) - 1) < 0.01
    assert abs(float(eps_d.var()) - 1) < 0.01
    # the draft path derives its noise the same way (after reflect padding)
    d = draft_inputs(eps[..., :200, :200], eps[..., :200, :200], 4)
    assert abs(float(d.noise.var()) - 1) < 0.01


def test_n1_pool_of_nearest_up_is_identity_and_haar_is_orthonormal():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 5, 7, generator=g)
    assert torch.equal(pool(nearest_up(a, 2), 2), a)
    x = torch.randn(2, 3, 10, 14, generator=g, dtype=torch.float64)
    bands = haar_analysis(x)
    energy = sum(float((b * b).sum()) for b in bands)
    assert abs(energy - float((x * x).sum())) < 1e-6 * float((x * x).sum())
    assert torch.allclose(haar_synthesis(*bands), x, atol=1e-12)
    assert torch.allclose(bands[0], 2 * pool(x, 2), atol=1e-12)
    # orthonormal basis: the transform of a unit impulse has unit norm in exactly one 2×2 block
    impulse = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    impulse[..., 1, 0] = 1.0
    coeffs = torch.cat([b.reshape(-1) for b in haar_analysis(impulse)])
    assert torch.allclose(coeffs.abs(), torch.full((4,), 0.5, dtype=torch.float64))


def test_pack_matches_diffusers_packing_and_round_trips():
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 4, 6, 10, generator=g)
    ref = FluxPipeline._pack_latents(z, 2, 4, 6, 10)
    assert torch.equal(pack(z), ref)
    assert torch.equal(unpack(ref, 3, 5), z)


def test_view_at_sigma_one_is_eps_bar_and_lift_keeps_details():
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(1, 4, 8, 8, generator=g)
    eps_pooled = pool(eps, 2)
    assert torch.allclose(coarse_view(eps, eps_pooled, 1.0), 2 * eps_pooled)
    u = torch.randn(1, 4, 4, 4, generator=g)
    v = lift_velocity(u, 2 * eps_pooled, eps)
    _, *details = haar_analysis(v)
    _, *eps_details = haar_analysis(eps)
    for d, e in zip(details, eps_details):
        assert torch.allclose(d, e, atol=1e-6)  # the lift's detail band is exactly detail(ε)
    assert torch.allclose(pool(v, 2), u - 2 * eps_pooled + eps_pooled, atol=1e-6)


def test_reflect_padding_and_pool_errors():
    x = torch.arange(2 * 6, dtype=torch.float32).reshape(1, 1, 2, 6)
    padded, info = pad_reflect(x, 8)
    assert padded.shape[-2:] == (8, 8) and info.bottom == 6 and info.right == 2
    with pytest.raises(ValueError, match="pad it first"):
        pool(torch.zeros(1, 1, 6, 6), 4)
    with pytest.raises(ValueError, match="even sides"):
        pack(torch.zeros(1, 1, 3, 4))


def test_draft_schedule_recomputes_mu_from_the_draft_token_count():
    import numpy as np

    from flowcore.schedules import calculate_shift, make_schedule
    from specedit.draft import draft_schedule
    from specedit.families import FluxKontextFamily
    from specedit.hooks import _default_scheduler

    sched = _default_scheduler(FluxKontextFamily())
    draft = draft_schedule(sched, 8, 256, 4096, "recompute")
    want = make_schedule(sched, 8, mu=calculate_shift(256), sigmas=np.linspace(1.0, 1 / 8, 8).tolist())
    assert torch.equal(draft.sigmas, want.sigmas) and float(draft.sigmas[0]) == 1.0
    main = draft_schedule(sched, 8, 256, 4096, "main")
    assert float(main.sigmas[4]) > float(draft.sigmas[4])  # a larger μ shifts the grid towards noise
