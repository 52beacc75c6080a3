"""Schedules, residuals and the inversion cache (T10, T19) plus config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from directedit import CacheMismatchError, DirectEditConfig, InversionCache, ValueInjection, edit, invert
from directedit.core import make_schedule

N = 8


def _z(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("grid", ["scheduler", "flux-pipeline"])
def test_sd3_grid_equals_diffusers(grid, sd3_factory):
    """T10: SD3 static shift 3 at N = 30, both grids, bitwise; strictly decreasing; sigma_N = 0."""
    model = sd3_factory()
    sched = make_schedule(model, DirectEditConfig(num_steps=30, sigma_grid=grid), 1024, 1024)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    if grid == "scheduler":
        ref.set_timesteps(30)
    else:
        ref.set_timesteps(sigmas=list(np.linspace(1.0, 1 / 30, 30)))
    assert torch.equal(sched.sigmas, ref.sigmas.float()) and sched.sigmas[-1] == 0
    assert bool((sched.sigmas[1:] < sched.sigmas[:-1]).all())
    if grid == "scheduler":  # the values the spec quotes
        assert torch.allclose(sched.sigmas[-3:-1], torch.tensor([0.1043, 0.00893]), atol=5e-5)


@pytest.mark.parametrize("grid", ["scheduler", "flux-pipeline"])
def test_flux_grid_equals_diffusers_at_mu_063(grid, flux_factory):
    """T10: FLUX dynamic shift at 1024 tokens (512², mu = 0.63), both grids."""
    model = flux_factory()
    sched = make_schedule(model, DirectEditConfig(num_steps=30, sigma_grid=grid), 512, 512)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                          max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (1024 - 256)
    assert abs(mu - 0.63) < 1e-12
    if grid == "scheduler":
        ref.set_timesteps(30, mu=mu)
    else:
        ref.set_timesteps(sigmas=list(np.linspace(1.0, 1 / 30, 30)), mu=mu)
    assert torch.equal(sched.sigmas, ref.sigmas.float()) and sched.sigmas[-1] == 0
    assert bool((sched.sigmas[1:] < sched.sigmas[:-1]).all())
    tail = {"scheduler": [0.0645, 0.00188], "flux-pipeline": [0.118, 0.0608]}[grid]
    assert torch.allclose(sched.sigmas[-3:-1], torch.tensor(tail), atol=5e-4)


def test_delta_is_the_difference_of_stored_latents(flux_factory):
    model = flux_factory()
    cfg = DirectEditConfig(num_steps=N, state_dtype=torch.float64)
    cache = invert(model, _z((1, 16, 16)), model.encode_prompt(["a cat"]), config=cfg)
    assert len(cache.latents) == N + 1 and torch.equal(cache.z0, _z((1, 16, 16)))
    for k in range(N):
        assert torch.equal(cache.delta(k), cache.latents[k + 1] - cache.latents[k])
    with pytest.raises(IndexError):
        cache.delta(N)
    assert cache.trajectory_nbytes == (N + 1) * 16 * 16 * 8 and cache.nbytes == cache.trajectory_nbytes


@pytest.mark.parametrize("mode", ["batched", "cached"])
def test_cache_save_load_round_trip(mode, sd3_factory, tmp_path):
    """T19: save/load round-trips bitwise (latents, grid, conditioning, Values); editing the loaded cache gives
    the same result; a wrong model, step count, grid or prompt raises."""
    model = sd3_factory()
    z0 = _z((1, 4, 8, 8))
    cfg = DirectEditConfig(num_steps=N, source_guidance=1.5, source_branch=mode,
                           injection=ValueInjection(steps=3), state_dtype=torch.float64)
    src, tar = model.encode_prompt(["a cat on a sofa"]), model.encode_prompt(["a dog on a sofa"])
    cache = invert(model, z0, src, config=cfg)
    path = cache.save(tmp_path / "inv")
    assert path.name == "inv.safetensors" and (tmp_path / "inv.json").is_file()
    loaded = InversionCache.load(path, model, source_prompt="a cat on a sofa", num_steps=N)
    assert all(torch.equal(a, b) for a, b in zip(cache.latents, loaded.latents))
    assert torch.equal(loaded.sigmas, cache.sigmas) and torch.equal(loaded.schedule.timesteps,
                                                                     cache.schedule.timesteps)
    assert torch.equal(loaded.source_cond.embeds, src.embeds) and loaded.source_cond.prompts == src.prompts
    assert loaded.config == cfg and loaded.model_fingerprint == cache.model_fingerprint
    if mode == "cached":
        assert loaded.value_layout == cache.value_layout and loaded.injection == cache.injection
        assert all(torch.equal(loaded.value_cache[k][s], cache.value_cache[k][s])
                   for k in cache.value_cache for s in cache.value_cache[k])
    assert torch.equal(edit(model, loaded, tar, config=cfg).edited, edit(model, cache, tar, config=cfg).edited)

    from directedit.testing import tiny_sd3_model

    other = tiny_sd3_model(dtype=torch.float64, seed=1)
    with pytest.raises(CacheMismatchError, match="another model"):
        InversionCache.load(path, other)
    with pytest.raises(CacheMismatchError, match="source prompt"):
        InversionCache.load(path, model, source_prompt="a dog on a sofa")
    with pytest.raises(CacheMismatchError, match="steps"):
        InversionCache.load(path, model, num_steps=30)
    with pytest.raises(CacheMismatchError, match="sigma grid"):
        loaded.check(sigmas=torch.linspace(1, 0, N + 1))
    with pytest.raises(CacheMismatchError, match="another model"):
        edit(other, loaded, tar, config=cfg)
    with pytest.raises(ValueError, match="num_steps"):
        edit(model, loaded, tar, config=cfg.replace(num_steps=N + 2))
    with pytest.raises(ValueError, match="source_guidance"):
        edit(model, loaded, tar, config=cfg.replace(source_guidance=3.0))
    (tmp_path / "junk.safetensors").write_bytes(b"not a cache")
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error for a corrupt file
        InversionCache.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        InversionCache.load(tmp_path / "nothing.safetensors")


def test_config_validation_is_clear():
    with pytest.raises(ValueError, match="snap_source=True"):
        DirectEditConfig(source_branch="cached", snap_source=False)
    with pytest.raises(ValueError, match="skip_steps"):
        DirectEditConfig(num_steps=10, skip_steps=10)
    with pytest.raises(ValueError, match="either"):
        ValueInjection(ratio=0.2, steps=3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ValueInjection(ratio=1.5)
    with pytest.raises(ValueError, match="sigma_grid"):
        DirectEditConfig(sigma_grid="cosine")
    with pytest.raises(ValueError, match="num_steps"):
        DirectEditConfig(num_steps=4, sigma_grid=[1.0, 0.5])
    cfg = DirectEditConfig(target_guidance=[2.0, 3.0], sigma_grid=[1.0, 0.75, 0.5, 0.25], num_steps=4)
    assert DirectEditConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_prompts_and_rows_are_clear(flux_factory, sd3_factory):
    from directedit import direct_edit
    from flowcore.toy.bundle import build

    toy = build("toy-flux", random_init=True, preset="ci").adapter()
    with pytest.raises(ValueError, match="cannot read the prompt"):
        direct_edit(toy, torch.rand(1, 3, 32, 32), "a red cat", "a blue cat", config=DirectEditConfig(num_steps=2))
    model = flux_factory()
    cfg = DirectEditConfig(num_steps=N, state_dtype=torch.float64)
    cache = invert(model, _z((1, 16, 16)), model.encode_prompt(["a cat"]), config=cfg)
    with pytest.raises(ValueError, match="target_guidance"):
        edit(model, cache, model.encode_prompt(["a", "b", "c"]), config=cfg.replace(target_guidance=(1.0, 2.0)))
    with pytest.raises(ValueError, match="source prompt rows"):
        invert(model, _z((2, 16, 16)), model.encode_prompt(["a cat"]), config=cfg)
    sd3 = sd3_factory()
    with pytest.raises(ValueError, match="rows='all'"):
        invert(sd3, _z((1, 4, 8, 8)), sd3.encode_prompt(["a cat"]),
               config=cfg.replace(fold_unit_guidance=True, injection=ValueInjection(rows="all")))
