"""C1: the source branch retraces the inversion (T1–T4, T14, T15, T21)."""

from __future__ import annotations

import pytest
import torch

from directedit import DirectEditConfig, ValueInjection, baselines, edit, invert

N = 8
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _model_and_latents(kind, dtype, flux_factory, sd3_factory, make_latents, seed):
    if kind == "flux":
        return flux_factory(dtype), make_latents((1, 16, 16), dtype, seed)
    return sd3_factory(dtype), make_latents((1, 4, 8, 8), dtype, seed)


def _source_path(model, cache, tar, cfg):
    """The source rows after every step, collected by the callback (not by the code's own trace)."""
    seen = {}
    result = edit(model, cache, tar, config=cfg, callback=lambda k, x: seen.__setitem__(k + 1, x[:1].clone()))
    return result, seen


def _run(model, z0, cfg, src="a cat sitting on a sofa", tar="a dog sitting on a sofa"):
    src_c, tar_c = model.encode_prompt([src]), model.encode_prompt([tar])
    cache = invert(model, z0, src_c, config=cfg)
    return cache, tar_c


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_unsnapped_source_path_equals_inversion_and_naive_drifts(kind, dtype, seed, flux_factory, sd3_factory,
                                                                  make_latents):
    """T1 + T2: max_k |x^s_k − y_k| ≤ 1e-12 (fp64) / 1e-5 (fp32) at every step; naive Euler ≥ 1e3× worse."""
    model, z0 = _model_and_latents(kind, dtype, flux_factory, sd3_factory, make_latents, seed)
    # SD3 with real CFG on both branches (g ≠ 1), FLUX with embedded guidance
    g_src = 1.5 if kind == "sd3" else 2.0
    cfg = DirectEditConfig(num_steps=N, source_guidance=g_src, target_guidance=3.0, snap_source=False,
                           state_dtype=dtype)
    cache, tar = _run(model, z0, cfg)
    _result, path = _source_path(model, cache, tar, cfg)
    errors = [float((path[k] - cache.latents[k]).abs().max()) for k in range(1, N + 1)]
    assert len(errors) == N and max(errors) <= TOL[dtype], errors
    naive_path = {}
    baselines.naive_euler(model, z0, None, tar, cache=cache, target_guidance=3.0,
                          callback=lambda k, x: naive_path.__setitem__(k + 1, x[:1].clone()))
    naive_err = max(float((naive_path[k] - cache.latents[k]).abs().max()) for k in range(1, N + 1))
    assert naive_err >= 1e3 * max(max(errors), torch.finfo(dtype).eps), (naive_err, max(errors))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_unsnapped_exactness_at_30_steps(kind, flux_factory, sd3_factory, make_latents):
    """T1 at N = 30 (slow)."""
    model, z0 = _model_and_latents(kind, torch.float64, flux_factory, sd3_factory, make_latents, 0)
    cfg = DirectEditConfig(num_steps=30, source_guidance=1.5, snap_source=False, state_dtype=torch.float64)
    cache, tar = _run(model, z0, cfg)
    _, path = _source_path(model, cache, tar, cfg)
    assert max(float((path[k] - cache.latents[k]).abs().max()) for k in range(1, 31)) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_snapped_source_path_is_bitwise(kind, dtype, flux_factory, sd3_factory, make_latents):
    """T3: the snapped source path equals the stored latents and the reconstruction equals z0, bitwise."""
    model, z0 = _model_and_latents(kind, dtype, flux_factory, sd3_factory, make_latents, 3)
    cfg = DirectEditConfig(num_steps=N, source_guidance=1.5, state_dtype=dtype)
    cache, tar = _run(model, z0, cfg)
    result, path = _source_path(model, cache, tar, cfg)
    assert all(torch.equal(path[k], cache.latents[k]) for k in range(1, N + 1))
    assert torch.equal(result.reconstruction, z0) and result.trace == [0.0] * N


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_identity_edit_returns_the_input(kind, dtype, flux_factory, sd3_factory, make_latents):
    """T4: same prompt and guidance, injection on, no mask: x^t_N = z0."""
    model, z0 = _model_and_latents(kind, dtype, flux_factory, sd3_factory, make_latents, 4)
    cfg = DirectEditConfig(num_steps=N, source_guidance=1.5, target_guidance=1.5, state_dtype=dtype,
                           injection=ValueInjection(ratio=0.5))
    cache, tar = _run(model, z0, cfg, tar="a cat sitting on a sofa")
    result = edit(model, cache, tar, config=cfg)
    assert result.K == 4 and result.injection_log
    assert float((result.edited - z0).abs().max()) <= TOL[dtype]


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_batch_invariance_sets_the_tolerance(kind, flux_factory, sd3_factory, make_latents):
    """T14: the source row in a [src, tar] batch vs alone, CPU fp32: ≤ 1e-6."""
    model, z0 = _model_and_latents(kind, torch.float32, flux_factory, sd3_factory, make_latents, 5)
    other = torch.randn_like(z0)
    cond = model.encode_prompt(["a cat", "a dog"])
    sched = model.schedule(N, height=64, width=64)
    g = torch.tensor([1.0, 3.0])
    with torch.no_grad():
        alone = model.predict(z0, sched.t(2), cond[0], guidance=g[:1])
        both = model.predict(torch.cat([z0, other]), sched.t(2), cond, guidance=g)
    assert float((both[:1] - alone).abs().max()) <= 1e-6


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_several_targets_equal_their_single_runs(kind, flux_factory, sd3_factory, make_latents):
    """T15: m = 2 targets sharing one source row; each equals its single-target run within 1e-6 (fp32)."""
    model, z0 = _model_and_latents(kind, torch.float32, flux_factory, sd3_factory, make_latents, 6)
    cfg = DirectEditConfig(num_steps=N, source_guidance=1.5, target_guidance=(2.0, 3.0), state_dtype=torch.float32)
    src = model.encode_prompt(["a cat on a sofa"])
    cache = invert(model, z0, src, config=cfg)
    both = edit(model, cache, model.encode_prompt(["a dog on a sofa", "a fox on a bed"]), config=cfg)
    assert both.edited.shape[0] == 2
    for j, (prompt, g) in enumerate((("a dog on a sofa", 2.0), ("a fox on a bed", 3.0))):
        single = edit(model, cache, model.encode_prompt([prompt]), config=cfg.replace(target_guidance=g))
        assert float((both.edited[j:j + 1] - single.edited).abs().max()) <= 1e-6


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_bf16_model_with_fp32_state(kind, make_latents):
    """T21: bf16 model, fp32 state: the snapped path is bitwise, the unsnapped error ≤ 1e-2."""
    from directedit.testing import tiny_flux_model, tiny_sd3_model

    model = tiny_flux_model(dtype=torch.bfloat16) if kind == "flux" else tiny_sd3_model(dtype=torch.bfloat16)
    z0 = make_latents((1, 16, 16) if kind == "flux" else (1, 4, 8, 8), torch.float32, 7)
    for snap in (True, False):
        cfg = DirectEditConfig(num_steps=N, source_guidance=1.5, snap_source=snap)
        cache, tar = _run(model, z0, cfg)
        assert all(z.dtype == torch.float32 for z in cache.latents)
        _, path = _source_path(model, cache, tar, cfg)
        errors = [float((path[k] - cache.latents[k]).abs().max()) for k in range(1, N + 1)]
        if snap:
            assert max(errors) == 0.0
        else:
            assert 0.0 < max(errors) <= 1e-2
