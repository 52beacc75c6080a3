"""VP models (T17) and the baselines on a linear ODE (T18)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from directedit import DirectEditConfig, ValueInjection, baselines, edit, invert
from directedit.core import fwd_update, inv_update
from directedit.testing import MLPFlowModel, hash_encoder, tiny_unet_model
from flowcore.adapters import Conditioning, FlowModel

N = 8


def _z(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_vp_unsnapped_exactness_with_ddim(prediction):
    """T17: tiny eps (and v) UNet with DDIM: the unsnapped source path is exact to 1e-10 in fp64."""
    model = tiny_unet_model(dtype=torch.float64, prediction_type=prediction)
    z0 = _z((1, 4, 8, 8))
    cfg = DirectEditConfig(num_steps=N, source_guidance=2.0, snap_source=False, injection=ValueInjection(steps=2),
                           state_dtype=torch.float64)
    cache = invert(model, z0, model.encode_prompt(["a cat on a sofa"]), config=cfg)
    assert cache.schedule.kind == "vp"
    path = []
    res = edit(model, cache, model.encode_prompt(["a dog on a sofa"]), config=cfg,
               callback=lambda k, x: path.append(x[:1]))
    errors = [float((p - cache.latents[k + 1]).abs().max()) for k, p in enumerate(path)]
    assert max(errors) <= 1e-10 and res.injection_log  # unet self-attention sites inject
    assert float((res.edited - z0).abs().max()) > 1e-3


def test_vp_denoising_step_equals_diffusers_ddim_for_v_prediction():
    """The VP output is converted to ε̂ with the network input and the conditioning time's coefficients: on an
    unshifted input, one denoising step is diffusers' DDIM step (v-prediction)."""
    from diffusers import DDIMScheduler

    from directedit.rows import SOURCE, BranchCaller

    model = tiny_unet_model(dtype=torch.float64, prediction_type="v_prediction")
    sched = model.schedule(N, height=64, width=64)
    cond = model.encode_prompt(["a cat"])
    caller = BranchCaller(model, n_images=1, source_cond=cond, source_uncond=None, fold_unit_guidance=True)
    ddim = DDIMScheduler.from_config(model.scheduler.config)
    ddim.set_timesteps(N)
    x = _z((1, 4, 8, 8))
    for k in (0, 3, N - 1):
        with torch.no_grad():
            eps = caller(x, k, sched, (SOURCE,), phase="check")
            v = model.predict(x, sched.t(k), cond)
        ref = ddim.step(v, ddim.timesteps[k], x).prev_sample
        # float32 path coefficients (as diffusers keeps them) limit the agreement to ~1e-6
        assert float((fwd_update(x, eps, sched, k, kind="eps") - ref).abs().max()) <= 1e-5


def test_fwd_update_inverts_inv_update():
    """T17: for a fixed output, fwd_update(inv_update(y, o), o) == y (VP/DDIM and rectified flow)."""
    vp = tiny_unet_model(dtype=torch.float64).schedule(N, height=64, width=64)
    rf = MLPFlowModel().schedule(N, height=4, width=4)
    y, o = _z((2, 4, 8, 8)), _z((2, 4, 8, 8), seed=1)
    for sched, kind in ((vp, "eps"), (rf, "flow")):
        for k in range(N):
            back = fwd_update(inv_update(y, o, sched, k, kind=kind), o, sched, k, kind=kind)
            assert torch.allclose(back, y, atol=1e-12, rtol=0)


class LinearFlow(FlowModel):
    """v(x, sigma) = lam·x: the ODE dx/dsigma = lam·x, solved exactly by x(sigma) = x(0)·exp(lam·sigma)."""

    prediction = "flow"
    guidance_kind = "none"

    def __init__(self, lam: float = 1.0):
        from diffusers import FlowMatchEulerDiscreteScheduler

        net = nn.Linear(1, 1).double()
        vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=(1,), latent_channels=1))
        super().__init__(net, vae, FlowMatchEulerDiscreteScheduler(shift=1.0), prompt_encoder=hash_encoder(1, 2, 2,
                         dtype=torch.float64), model_id="linear")
        self.lam = lam

    def _predict(self, latents: torch.Tensor, t: Any, cond: Conditioning, **_: Any) -> torch.Tensor:
        return self.lam * latents


def _inversion_error(solver: str, m: int, lam: float = 1.0) -> float:
    model = LinearFlow(lam)
    z0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    grid = tuple(np.linspace(1.0, 1.0 / m, m))
    inv = baselines.solve_inversion(model, z0, model.encode_prompt(["x"]), solver=solver, num_steps=m,
                                    sigma_grid=grid, state_dtype=torch.float64)
    return float((inv.latents[0] - np.exp(lam)).abs().max())


@pytest.mark.parametrize(("solver", "lo", "hi"), [("euler", 1.8, 2.2), ("rf_solver", 3.5, 4.5),
                                                  ("fireflow", 3.0, 100.0)])
def test_solver_order_on_a_linear_ode(solver, lo, hi):
    """T18: the error ratio when h is halved: Euler ~2 (first order), RF-Solver ~4, FireFlow >= 3."""
    ratio = _inversion_error(solver, 16) / _inversion_error(solver, 32)
    assert lo <= ratio <= hi, ratio


def test_taylor_form_equals_midpoint_form():
    """T18: RF-Solver's Taylor update equals the midpoint update within 1e-12 (fp64, nonlinear MLP field)."""
    model = MLPFlowModel(guidance_kind="embedded")
    z0 = _z((1, 2, 4, 4))
    src, tar = model.encode_prompt(["a cat"]), model.encode_prompt(["a dog"])
    for method in ("rf_solver", "fireflow"):
        kw = dict(num_steps=4, injection=None, state_dtype=torch.float64, target_guidance=3.0)
        taylor = baselines.run(method, model, z0, src, tar, form="taylor", **kw)
        midpoint = baselines.run(method, model, z0, src, tar, form="midpoint", **kw)
        assert float((taylor.edited - midpoint.edited).abs().max()) <= 1e-12
        assert float((taylor.reconstruction - midpoint.reconstruction).abs().max()) <= 1e-12
        assert not torch.equal(taylor.edited, z0)


def test_flowedit_identity_and_determinism(flux_factory):
    """T18: FlowEdit with identical prompts (and guidance) returns z0 bitwise; a seed makes it deterministic."""
    model = flux_factory()
    z0 = _z((1, 16, 16))
    src, tar = model.encode_prompt(["a cat"]), model.encode_prompt(["a dog"])
    kw = dict(num_steps=10, n_max=8, state_dtype=torch.float64)
    same = baselines.flowedit(model, z0, src, src, source_guidance=2.0, target_guidance=2.0,
                              generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(same.edited, z0) and same.reconstruction is None
    runs = [baselines.flowedit(model, z0, src, tar, generator=torch.Generator().manual_seed(s), **kw).edited
            for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    with pytest.raises(ValueError, match="no mask"):
        baselines.flowedit(model, z0, src, tar, mask=torch.ones(1, 1, 64, 64), **kw)


def test_baseline_masks_blend_with_their_own_source(flux_factory):
    """Injection baselines blend the target with their *own* source latent where M = 0."""
    model = flux_factory()
    z0 = _z((1, 16, 16))
    src, tar = model.encode_prompt(["a cat"]), model.encode_prompt(["a dog"])
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32, :] = 1
    for method, steps in (("naive_euler", 4), ("rf_solver", 2), ("fireflow", 3)):
        res = baselines.run(method, model, z0, src, tar, num_steps=steps, mask=mask, state_dtype=torch.float64)
        assert torch.equal(res.edited[:, 8:], res.reconstruction[:, 8:])
        assert not torch.equal(res.edited[:, :8], res.reconstruction[:, :8])
