"""Rows, NFE, per-row guidance, skip_steps and Kontext (T8, T12, T13, T16)."""

from __future__ import annotations

import pytest
import torch

from directedit import DirectEditConfig, ValueInjection, baselines, edit, invert
from directedit.testing import MLPFlowModel
from flowcore.testing import CallCounter

N = 8


def _z(shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _counted(model, run):
    with CallCounter(model.denoiser) as counter:
        result = run()
    return counter, result


@pytest.mark.parametrize("mode", ["batched", "auto", "cached"])
def test_flux_nfe_per_mode(mode, flux_factory):
    """T8 (FLUX): N×1 + N×2 batched; auto: 2K + (N−K) forward rows; cached: N×1. 2N calls always."""
    model = flux_factory()
    z0, src, tar = _z((1, 16, 16)), model.encode_prompt(["a cat"]), model.encode_prompt(["a dog"])
    cfg = DirectEditConfig(num_steps=N, source_branch=mode, injection=ValueInjection(steps=3),
                           state_dtype=torch.float64)
    counter, res = _counted(model, lambda: edit(model, invert(model, z0, src, config=cfg), tar, config=cfg))
    forward_rows = {"batched": 2 * N, "auto": 2 * 3 + (N - 3), "cached": N}[mode]
    assert counter.calls == 2 * N == res.nfe.calls
    assert counter.rows == N + forward_rows == res.nfe.rows
    assert res.nfe.by_phase == {"inversion": (N, N), "forward": (N, forward_rows)}


@pytest.mark.parametrize(("fold", "g_src", "inv_rows", "fwd_rows"), [
    (False, 1.0, 2, 4),  # faithful: still [u, c] at g = 1 (the reference's batch of 4)
    (False, 2.0, 2, 4),
    (True, 1.0, 1, 3),  # folded: [c_src] / [c_src, u_tar, c_tar]
    (True, 2.0, 2, 4),
])
def test_sd3_row_layout_and_nfe(fold, g_src, inv_rows, fwd_rows, sd3_factory):
    """T8 (SD3): faithful N×2 + N×4; folded N×1 + N×3; the reported NFE equals the hook count."""
    model = sd3_factory()
    z0, src, tar = _z((1, 4, 8, 8)), model.encode_prompt(["a cat"]), model.encode_prompt(["a dog"])
    cfg = DirectEditConfig(num_steps=N, source_guidance=g_src, fold_unit_guidance=fold, state_dtype=torch.float64)
    counter, res = _counted(model, lambda: edit(model, invert(model, z0, src, config=cfg), tar, config=cfg))
    assert counter.calls == 2 * N == res.nfe.calls
    assert counter.per_call == [inv_rows] * N + [fwd_rows] * N
    assert counter.rows == res.nfe.rows


@pytest.mark.parametrize(("method", "kw", "calls"), [
    ("naive_euler", {"num_steps": 6}, 12), ("rf_solver", {"num_steps": 3}, 12), ("fireflow", {"num_steps": 5}, 12),
    ("flowedit", {"num_steps": 10, "n_max": 7}, 7), ("flowedit", {"num_steps": 10, "n_max": 7, "n_min": 2}, 7),
])
def test_baseline_nfe(method, kw, calls, flux_factory):
    """T8 (baselines): 2M, 4M, 2(M+1), (n_max − n_min)·n_avg + n_min; ``result.nfe`` equals the hook count."""
    model = flux_factory()
    z0, src, tar = _z((1, 16, 16)), model.encode_prompt(["a cat"]), model.encode_prompt(["a dog"])
    if method == "flowedit":
        kw = {**kw, "generator": torch.Generator().manual_seed(0)}
    counter, res = _counted(model, lambda: baselines.run(method, model, z0, src, tar, state_dtype=torch.float64,
                                                         **kw))
    assert counter.calls == calls == res.nfe.calls and counter.rows == res.nfe.rows


def test_settings_for_nfe_give_equal_calls():
    assert baselines.settings_for_nfe("directedit", 60, "flux") == {"num_steps": 30}
    assert baselines.settings_for_nfe("rf-solver", 60, "sd3") == {"num_steps": 15}
    assert baselines.settings_for_nfe("fireflow", 60, "flux") == {"num_steps": 29}
    assert baselines.settings_for_nfe("flowedit", 60, "flux") == {"num_steps": 70, "n_max": 60}
    assert baselines.settings_for_nfe("flowedit", 60, "sd3") == {"num_steps": 91, "n_max": 60}
    with pytest.raises(ValueError, match="multiple of 4"):
        baselines.settings_for_nfe("rf_solver", 62, "flux")


def test_skip_steps_start_at_y_s():
    """T12: N−3 inversion calls; the first target input is y_3 + Δ_3; the identity edit returns z0, and a
    reference-style run that starts at y_0 over the skipped steps does not."""
    model = MLPFlowModel(guidance_kind="embedded", record=True)
    z0 = _z((1, 2, 4, 4))
    src = model.encode_prompt(["a cat"])
    cfg = DirectEditConfig(num_steps=N, skip_steps=3, source_guidance=2.0, target_guidance=2.0, injection=None,
                           state_dtype=torch.float64)
    cache = invert(model, z0, src, config=cfg)
    assert cache.nfe.calls == N - 3 and cache.latents[:3] == [None, None, None]
    model.calls.clear()
    result = edit(model, cache, src, config=cfg)
    first = model.calls[0]["latents"]
    assert torch.equal(first[1:], cache.latents[3] + cache.delta(3)) and result.nfe.by_phase["forward"][0] == N - 3
    assert float((result.edited - z0).abs().max()) <= 1e-12
    full = invert(model, z0, src, config=cfg.replace(skip_steps=0))
    ref_style = invert(model, z0, src, config=cfg)
    true_delta = ref_style.delta
    ref_style.latents = list(ref_style.latents)
    ref_style.latents[3] = full.latents[0]  # the reference's state stays at y_0 over the skipped steps
    ref_style.delta = true_delta  # type: ignore[method-assign]  # ...and then applies the true Δ_3, Δ_4, ...
    wrong = edit(model, ref_style, src, config=cfg)
    assert float((wrong.edited - z0).abs().max()) > 1e-3


def test_skip_steps_warns_when_no_step_injects(flux_factory):
    model = flux_factory()
    cfg = DirectEditConfig(num_steps=N, skip_steps=3, injection=ValueInjection(steps=2), state_dtype=torch.float64)
    with pytest.warns(UserWarning, match="no step injects"):
        invert(model, _z((1, 16, 16)), model.encode_prompt(["a cat"]), config=cfg)


def test_flux_guidance_tensor_is_per_row(flux_factory):
    """T13: FLUX receives guidance [g_src, g_tar]; changing g_tar leaves the (unsnapped) source row bitwise."""
    model = flux_factory()
    seen = []
    handle = model.denoiser.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["guidance"].clone()), with_kwargs=True)
    try:
        z0, src, tar = _z((1, 16, 16)), model.encode_prompt(["a cat"]), model.encode_prompt(["a dog"])
        paths = []
        for g_tar in (2.0, 5.0):
            cfg = DirectEditConfig(num_steps=N, source_guidance=1.5, target_guidance=g_tar, snap_source=False,
                                   state_dtype=torch.float64)
            seen.clear()
            path = []
            edit(model, invert(model, z0, src, config=cfg), tar, config=cfg,
                 callback=lambda k, x, path=path: path.append(x[:1]))
            assert all(torch.equal(g, torch.tensor([1.5])) for g in seen[:N])
            assert all(torch.equal(g, torch.tensor([1.5, g_tar])) for g in seen[N:])
            paths.append(torch.cat(path))
        assert torch.equal(paths[0], paths[1])
    finally:
        handle.remove()


def test_sd3_per_branch_cfg_with_a_recording_model():
    """T13 (SD3 layout): rows [u_src, u_tar, c_src, c_tar]; each branch combined with its own scale."""
    model = MLPFlowModel(guidance_kind="cfg", record=True)
    z0 = _z((1, 2, 4, 4))
    src, tar = model.encode_prompt(["a cat"]), model.encode_prompt(["a dog"])
    g_src, g_tar = 1.5, 4.0
    cfg = DirectEditConfig(num_steps=N, source_guidance=g_src, target_guidance=g_tar, snap_source=False,
                           injection=None, state_dtype=torch.float64)
    cache = invert(model, z0, src, config=cfg)
    model.calls.clear()
    states = []
    edit(model, cache, tar, config=cfg, callback=lambda k, x: states.append(x.clone()))
    call = model.calls[0]
    assert call["prompts"] == ("", "", "a cat", "a dog")
    inputs = call["latents"]
    with torch.no_grad():
        out = model.predict(inputs, call["t"], model.encode_prompt(["", "", "a cat", "a dog"]))
    v_src = out[0] + g_src * (out[2] - out[0])
    v_tar = out[1] + g_tar * (out[3] - out[1])
    h = cache.sigmas[1].double() - cache.sigmas[0].double()
    x0 = cache.latents[0]
    assert torch.allclose(states[0][0], (x0 + h * v_src)[0], atol=1e-14, rtol=0)
    assert torch.allclose(states[0][1], (x0 + h * v_tar)[0], atol=1e-14, rtol=0)


@pytest.mark.parametrize("snap", [True, False])
def test_kontext_reference_is_constant_conditioning(snap, flux_factory):
    """T16: Kontext reference tokens are the same in every call and row, not part of the state or the mask;
    exactness (T1 / T3) holds."""
    model = flux_factory(kontext=True)
    z0, ref = _z((1, 16, 16)), _z((1, 16, 16), seed=9)
    src, tar = model.encode_prompt([""]), model.encode_prompt(["make it red"])
    seen = []
    handle = model.denoiser.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["hidden_states"].clone()), with_kwargs=True)
    try:
        cfg = DirectEditConfig(num_steps=N, source_guidance=2.5, target_guidance=2.5, snap_source=snap,
                               state_dtype=torch.float64)
        cache = invert(model, z0, src, config=cfg, reference=ref)
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., :32, :] = 1
        path = []
        res = edit(model, cache, tar, config=cfg, mask=mask, callback=lambda k, x: path.append(x[:1]))
    finally:
        handle.remove()
    assert all(h.shape[1] == 32 and torch.equal(h[:, 16:], ref.expand(h.shape[0], -1, -1)) for h in seen)
    assert res.edited.shape == z0.shape and res.mask.shape == (1, 16, 1)
    errs = [float((p - cache.latents[k + 1]).abs().max()) for k, p in enumerate(path)]
    assert (max(errs) == 0.0) if snap else (max(errs) <= 1e-12)
    assert torch.equal(res.edited[:, 8:], z0[:, 8:])  # tokens of the unmasked bottom half keep the source latent
