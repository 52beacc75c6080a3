"""The smallest run with only flowcore's declared dependencies: a diffusers schedule, one sampling loop, the toy
world rendered and read back by its judge."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from flowcore.sampling import sample
from flowcore.schedules import make_schedule
from flowcore.toy import read_scene, render, sample_scene


def test_smoke_schedule_sampler_and_toy_world():
    sched = make_schedule(FlowMatchEulerDiscreteScheduler(shift=3.0), 4)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(4)
    assert torch.allclose(sched.sigmas, ref.sigmas.to(sched.sigmas.dtype), atol=1e-6)

    target = torch.full((1, 4, 2, 2), 0.25)
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    # A velocity model that knows the answer (v = noise - x0) lands exactly on the target.
    out = sample(lambda x, i: noise - target, noise, sched, kind="flow")
    assert torch.allclose(out, target, atol=1e-5)

    scene = sample_scene(0, 0, "test")
    reading = read_scene(render(scene)[0])
    assert reading.background == scene.background.color
