"""Schedules equal diffusers' scheduler objects; the universal step equals their ``step``; loops and guidance."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from flowcore.guidance import cfg, compose, gate
from flowcore.prediction import to_x0_eps
from flowcore.sampling import current_loop, invert, sample, step
from flowcore.schedules import Schedule, calculate_shift, make_schedule


def sd15_ddim(**kw) -> DDIMScheduler:
    cfg_ = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    cfg_.update(kw)
    return DDIMScheduler(**cfg_)


def flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                           max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)


@pytest.mark.parametrize("n", [1, 4, 28, 30])
def test_sd3_static_shift_grid_equals_diffusers(n):
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched = make_schedule(ref, n)
    ref.set_timesteps(n)
    assert torch.equal(sched.timesteps, ref.timesteps)
    assert torch.equal(sched.sigmas, ref.sigmas)
    assert torch.equal(sched.a, 1 - ref.sigmas) and torch.equal(sched.s, ref.sigmas)
    assert sched.sigmas[-1] == 0 and bool((sched.sigmas[1:] < sched.sigmas[:-1]).all())


@pytest.mark.parametrize("seq_len", [256, 1024, 2048, 4096])
@pytest.mark.parametrize("pipeline_sigmas", [False, True])
def test_flux_dynamic_shift_grid_equals_diffusers(seq_len, pipeline_sigmas):
    import numpy as np

    n = 30
    mu = calculate_shift(seq_len)
    ref = flux_scheduler()
    sig = list(np.linspace(1.0, 1 / n, n)) if pipeline_sigmas else None
    sched = make_schedule(ref, n, mu=mu, sigmas=sig)
    if sig is None:
        ref.set_timesteps(n, mu=mu)
    else:
        ref.set_timesteps(sigmas=sig, mu=mu)
    assert (sched.sigmas - ref.sigmas).abs().max() <= 1e-6
    assert torch.equal(sched.sigmas, ref.sigmas)
    assert torch.equal(sched.timesteps, ref.timesteps)


def test_flux_needs_mu_and_reports_it():
    with pytest.raises(ValueError, match="mu="):
        make_schedule(flux_scheduler(), 10)


def test_calculate_shift_endpoints():
    assert calculate_shift(256) == pytest.approx(0.5)
    assert calculate_shift(4096) == pytest.approx(1.15)


@pytest.mark.parametrize("n", [10, 30, 50])
@pytest.mark.parametrize("kw", [{}, {"timestep_spacing": "leading", "steps_offset": 1}, {"set_alpha_to_one": True}])
def test_ddim_grid_and_step_equal_diffusers(n, kw):
    ref = sd15_ddim(**kw)
    sched = make_schedule(ref, n)
    ref.set_timesteps(n)
    assert torch.equal(sched.timesteps, ref.timesteps.float())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(x.shape, generator=gen)
        expected = ref.step(out, t, x).prev_sample
        assert torch.equal(step(x, out, sched, i, i + 1), expected), f"DDIM step {i} differs"
        x = expected


def test_ddim_v_prediction_step_equals_diffusers():
    ref = sd15_ddim(prediction_type="v_prediction")
    sched = make_schedule(ref, 20)
    ref.set_timesteps(20)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(x.shape, generator=gen)
        expected = ref.step(out, t, x).prev_sample
        assert torch.equal(step(x, out, sched, i, i + 1, kind="v"), expected)
        x = expected


def test_non_ddim_vp_scheduler_is_converted_to_ddim():
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler.from_config(sd15_ddim().config)
    assert torch.equal(make_schedule(euler, 25).timesteps, make_schedule(sd15_ddim(), 25).timesteps)


@pytest.mark.parametrize("kind", ["rf", "vp"])
def test_schedule_to_and_from_tensors_round_trips(kind):
    sched = make_schedule(FlowMatchEulerDiscreteScheduler(shift=3.0) if kind == "rf" else sd15_ddim(), 7)
    tensors = sched.to_tensors(prefix="grid.")
    expected = {"grid.timesteps", "grid.a", "grid.s"} | ({"grid.sigmas"} if kind == "rf" else set())
    assert set(tensors) == expected
    back = Schedule.from_tensors({**tensors, "other": torch.ones(3)}, sched.kind, prefix="grid.",
                                 num_train_timesteps=sched.num_train_timesteps)
    assert back.kind == kind and back.num_train_timesteps == sched.num_train_timesteps
    for name in ("timesteps", "a", "s", "sigmas"):
        mine, theirs = getattr(sched, name), getattr(back, name)
        assert (mine is None and theirs is None) or torch.equal(mine, theirs)
    assert torch.equal(Schedule.from_tensors(sched.to_tensors(), kind).t(7), sched.t(7))  # default prefix


def test_schedule_from_tensors_rejects_bad_input():
    tensors = make_schedule(FlowMatchEulerDiscreteScheduler(shift=3.0), 4).to_tensors()
    with pytest.raises(ValueError, match=r"'schedule\.a'"):
        Schedule.from_tensors({k: v for k, v in tensors.items() if k != "schedule.a"}, "rf")
    with pytest.raises(ValueError, match="disagree"):
        Schedule.from_tensors({**tensors, "schedule.s": tensors["schedule.s"][:-1]}, "rf")
    with pytest.raises(ValueError, match="'rf' or 'vp'"):
        Schedule.from_tensors(tensors, "flow")


def test_euler_step_equals_flow_match_step_bitwise():
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched = make_schedule(ref, 12)
    ref.set_timesteps(12)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 8, 8, generator=gen)
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(x.shape, generator=gen)
        expected = ref.step(out, t, x).prev_sample
        assert torch.equal(step(x, out, sched, i, i + 1), expected)
        x = expected


def test_euler_step_keeps_float64_latents_in_float64():
    sched = make_schedule(FlowMatchEulerDiscreteScheduler(shift=3.0), 8)
    x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    out = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = step(x, out, sched, 2, 3)
    dt = (sched.sigmas[3] - sched.sigmas[2]).double()
    assert y.dtype == torch.float64 and torch.equal(y, x + dt * out)
    assert torch.equal(step(x, torch.zeros_like(x), sched, 0, 1), x)  # no detour through float32


@pytest.mark.parametrize("kind", ["flow", "eps", "v", "x0"])
def test_prediction_conversion_recovers_x0_and_eps(kind):
    gen = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=gen,
                                                                                         dtype=torch.float64)
    if kind == "flow":
        a, s = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
        out = eps - x0
    else:
        a = torch.tensor(0.6, dtype=torch.float64)
        s = (1 - a**2).sqrt()
        out = {"eps": eps, "v": a * eps - s * x0, "x0": x0}[kind]
    x = a * x0 + s * eps
    x0_hat, eps_hat = to_x0_eps(out, x, a, s, kind=kind)
    assert torch.allclose(x0_hat, x0, atol=1e-12) and torch.allclose(eps_hat, eps, atol=1e-12)


def test_prediction_rejects_unknown_kind_and_shape_mismatch():
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="unknown prediction kind"):
        to_x0_eps(x, x, 1.0, 0.0, kind="score")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same shape"):
        to_x0_eps(torch.zeros(1, 3, 2, 3), x, 1.0, 0.0, kind="eps")


def _linear_velocity(c: float):
    """A velocity field whose Euler steps are exactly invertible step by step (v independent of x)."""
    return lambda x, i: torch.full_like(x, c * (i + 1))


def test_sample_inverts_invert_for_x_independent_velocity():
    sched = make_schedule(FlowMatchEulerDiscreteScheduler(shift=3.0), 8)
    x0 = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    traj = invert(_linear_velocity(0.1), x0, sched)
    assert traj.nfe == 8 and traj.latents[8] is x0 and all(z is not None for z in traj.latents)
    back = sample(_linear_velocity(0.1), traj.noise, sched)
    assert torch.allclose(back, x0, atol=1e-12)


def test_invert_time_labels_and_partial_end():
    sched = make_schedule(FlowMatchEulerDiscreteScheduler(shift=1.0), 6)
    seen: list[tuple[int, str]] = []

    def rec(x, i):
        seen.append((i, current_loop().phase))
        return torch.zeros_like(x)

    traj = invert(rec, torch.zeros(1, 2), sched, end=2, time_at="target")
    assert [i for i, _ in seen] == [5, 4, 3, 2] and {p for _, p in seen} == {"invert"}
    assert traj.latents[:2] == [None, None] and traj.nfe == 4
    seen.clear()
    invert(rec, torch.zeros(1, 2), sched, time_at="source")
    assert [i for i, _ in seen] == [6, 5, 4, 3, 2, 1]
    assert sched.t(6) == 0


def test_sample_callback_replaces_latents_and_ranges():
    sched = make_schedule(FlowMatchEulerDiscreteScheduler(shift=1.0), 4)
    calls = []

    def cb(i, x, out):
        calls.append(i)
        return torch.zeros_like(x)

    out = sample(lambda x, i: torch.ones_like(x), torch.ones(1, 2), sched, start=1, end=3, callback=cb)
    assert calls == [1, 2] and torch.equal(out, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="start"):
        sample(lambda x, i: x, torch.ones(1, 2), sched, start=3, end=2)


def test_nan_inputs_and_outputs_raise_clear_errors():
    sched = make_schedule(FlowMatchEulerDiscreteScheduler(shift=1.0), 2)
    with pytest.raises(FloatingPointError, match="NaN"):
        sample(lambda x, i: x, torch.full((1, 2), float("nan")), sched)
    with pytest.raises(FloatingPointError, match="dtype"):
        sample(lambda x, i: torch.full_like(x, float("nan")), torch.ones(1, 2), sched)


def test_cfg_per_row_and_compose_and_gate():
    u, c = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(cfg(u, c, 2.0), torch.full((2, 3), 2.0))
    per_row = cfg(u, c, torch.tensor([1.0, 3.0]))
    assert torch.equal(per_row[0], torch.ones(3)) and torch.equal(per_row[1], torch.full((3,), 3.0))
    composed = compose(c, [(0.5, torch.full((2, 3), 3.0), c), (torch.tensor([0.0, 1.0]), c, u)])
    assert torch.equal(composed[0], torch.full((3,), 2.0)) and torch.equal(composed[1], torch.full((3,), 3.0))
    assert [gate(i, 10, 0.25) for i in range(5)] == [False, False, False, True, True]
    assert gate(0, 10, 0.0) and not gate(9, 10, 1.0)
    with pytest.raises(ValueError):
        gate(0, 10, 1.5)
