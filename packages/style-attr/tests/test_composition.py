"""Guidance composition (§2.5): bitwise fallbacks (§7 test 4), act_t gating and row counts (5), linearity in w2
(6), several networks (7), batching (8), the flow port's gating by step (18)."""

from __future__ import annotations

import math

import pytest
import torch

from flowcore.adapters import ControlInput
from flowcore.guidance import guided
from flowcore.sampling import loop_context
from flowcore.sampling import sample as flow_sample
from flowcore.sampling import step as flow_step
from flowcore.testing import CallCounter
from style_attr import AttributeTerm, sample
from style_attr.composition import composite_predictor
from style_attr.testing import attach_random


def _noise(model, batch=1, seed=0):
    return model.prepare_noise(batch, 64, 64, generator=torch.Generator().manual_seed(seed))


def _plain(model, x, sched, cond, uncond, edges, w1, callback=None):
    with torch.no_grad():
        return flow_sample(guided(model, cond, uncond=uncond, scale=w1, control=ControlInput(image=edges)), x, sched,
                           callback=callback)


@pytest.mark.parametrize("which", ["w2=0", "lam=ref", "gate closed"])
def test_fallbacks_are_the_plain_controlnet_sampler_bit_for_bit(unet_model, edges, which):
    """Test 4: w2 = 0, λ = λ_ref or a closed gate reproduce the plain ControlNet CFG sampler exactly, and the
    attribute rows are never evaluated."""
    model = unet_model
    attach_random(model.controlnet)
    cond, uncond = model.encode_prompt(["a red circle"]), model.encode_prompt([""])
    sched = model.schedule(4, height=64, width=64)
    x = _noise(model)
    term = {"w2=0": AttributeTerm("attr", 1.0, scale=0.0, act_t=0.0),
            "lam=ref": AttributeTerm("attr", 0.6, lam_ref=0.6, act_t=0.0),
            "gate closed": AttributeTerm("attr", 1.0, act_t=1.0)}[which]
    want = _plain(model, x, sched, cond, uncond, edges, 7.5)
    with CallCounter(model.controlnet) as cn, CallCounter(model.denoiser) as den:
        got = sample(model, x, sched, cond, w1=7.5, terms=[term], uncond=uncond, control_image=edges)
    assert torch.equal(got, want)
    assert cn.per_call == [2] * 4 and den.per_call == [2] * 4
    active = sample(model, x, sched, cond, w1=7.5, terms=[AttributeTerm("attr", 1.0, act_t=0.0)], uncond=uncond,
                    control_image=edges)
    assert (active - want).abs().max() > 1e-4


@pytest.mark.parametrize("steps", [7, 50])
@pytest.mark.parametrize("act_t", [0.0, 0.1, 0.33, 1.0])
def test_act_t_gate_keeps_the_first_steps_and_counts_rows(unet_model, edges, steps, act_t):
    """Test 5: the first ⌈act_t·S⌉ latents equal the baseline's; rows = 2S + 2(S − ⌈act_t·S⌉)."""
    model = unet_model
    attach_random(model.controlnet)
    cond, uncond = model.encode_prompt(["a blue square"]), model.encode_prompt([""])
    sched = model.schedule(steps, height=64, width=64)
    x = _noise(model, seed=1)
    opened = math.ceil(act_t * steps - 1e-9)
    base_path: list[torch.Tensor] = []
    edit_path: list[torch.Tensor] = []
    check = steps == 7  # the full trajectory comparison on the short grid; row counts on both
    if check:
        _plain(model, x, sched, cond, uncond, edges, 7.5, callback=lambda i, z, o: base_path.append(z))
    rows: list[int] = []
    sample(model, x, sched, cond, w1=7.5, terms=[AttributeTerm("attr", 1.0, act_t=act_t)], uncond=uncond,
           control_image=edges, row_log=rows, callback=(lambda i, z, o: edit_path.append(z)) if check else None)
    assert sum(rows) == 2 * steps + 2 * (steps - opened)
    assert rows == [2] * opened + [4] * (steps - opened)
    if check:
        for i in range(steps):
            same = torch.equal(edit_path[i], base_path[i])
            assert same == (i < opened), f"step {i}: identical={same}, gate opens at {opened}"


def test_one_step_displacement_is_linear_in_w2(edges):
    """Test 6: the displacement of one step caused by the attribute term doubles when w2 doubles (float64 model,
    so float32 round-off does not hide a non-linearity)."""
    from style_attr.testing import tiny_unet_model

    model = tiny_unet_model()
    for module in (model.denoiser, model.controlnet, model.vae):
        module.to(torch.float64)
    attach_random(model.controlnet).to(torch.float64)
    edges = edges.double()
    cond, uncond = model.encode_prompt(["a cat"]), model.encode_prompt([""])
    sched = model.schedule(10, height=64, width=64)
    x = _noise(model, seed=2)
    outs = {}
    with torch.no_grad(), loop_context(sched, "sample"):
        for w2 in (0.0, 0.7, 1.4):
            pred = composite_predictor(model, cond, w1=7.5, uncond=uncond, control=ControlInput(image=edges),
                                       terms=[AttributeTerm("attr", 0.9, scale=w2, act_t=0.0)])
            outs[w2] = flow_step(x, pred(x, 3), sched, 3, 4)
    d1, d2 = outs[0.7] - outs[0.0], outs[1.4] - outs[0.0]
    assert d1.abs().max() > 1e-5
    assert ((d2 - 2 * d1).norm() / d2.norm()) <= 1e-5


def test_two_networks_compose_additively_in_any_order(unet_model, edges):
    """Test 7: with two networks the composite equals the sum of the separate terms, in any order; a
    multi-parameter λ costs one row pair."""
    model = unet_model
    attach_random(model.controlnet, "outline", name="ink", seed=1)
    attach_random(model.controlnet, "watercolor", ("edge_darkening", "granulation"), name="wash", seed=2)
    cond, uncond = model.encode_prompt(["a cat"]), model.encode_prompt([""])
    sched = model.schedule(10, height=64, width=64)
    x = _noise(model, seed=3)
    ink = AttributeTerm("ink", 0.8, act_t=0.0)
    wash = AttributeTerm("wash", torch.tensor([0.5, 1.0]), act_t=0.0, scale=0.6)

    def eps(terms, rows=None):
        pred = composite_predictor(model, cond, w1=7.5, uncond=uncond, control=ControlInput(image=edges), terms=terms,
                                   row_log=rows)
        return pred(x, 2)

    with torch.no_grad(), loop_context(sched, "sample"):
        base = eps([])
        e_ink, e_wash = eps([ink]), eps([wash])
        rows: list[int] = []
        both, both_rev = eps([ink, wash], rows), eps([wash, ink])
    separate = base + (e_ink - base) + (e_wash - base)
    assert (both - separate).abs().max() <= 1e-5
    assert (both_rev - separate).abs().max() <= 1e-5
    assert (e_wash - base).abs().max() > 1e-5 and (e_ink - base).abs().max() > 1e-5
    assert rows == [2 + 2 + 2]  # base pair + one pair per network, the 2-parameter λ included


def test_batched_rows_equal_single_rows(unet_model, edges):
    """Test 8: a batch of 4 (per-row λ and prompts) equals 4 single-row samplers."""
    model = unet_model
    attach_random(model.controlnet)
    prompts = ["a cat", "a dog", "a red circle", ""]
    lam = torch.tensor([[0.0], [0.4], [0.8], [1.2]])
    sched = model.schedule(3, height=64, width=64)
    x = _noise(model, batch=4, seed=4)
    cond, uncond = model.encode_prompt(prompts), model.encode_prompt([""] * 4)
    batched = sample(model, x, sched, cond, w1=5.0, uncond=uncond, control_image=edges.expand(4, -1, -1, -1),
                     terms=[AttributeTerm("attr", lam, act_t=0.0)])
    for r in range(4):
        single = sample(model, x[r:r + 1], sched, cond[r], w1=5.0, uncond=uncond[r], control_image=edges,
                        terms=[AttributeTerm("attr", lam[r], act_t=0.0)])
        assert (single - batched[r:r + 1]).abs().max() <= 1e-5


def test_flow_port_gates_by_step_index_on_a_shifted_grid(sd3_model, edges):
    """Test 18 (sampling part): on SD3's shift-3 σ grid the gate opens at step ⌈act_t·S⌉, not by σ."""
    model = sd3_model
    attach_random(model.controlnet)
    cond, uncond = model.encode_prompt(["a cat"]), model.encode_prompt([""])
    sched = model.schedule(10, height=64, width=64)
    assert sched.sigmas is not None and float(sched.sigmas[3]) > 0.8  # shifted: σ stays high for a while
    rows: list[int] = []
    out = sample(model, _noise(model), sched, cond, w1=5.0, uncond=uncond, control_image=edges, row_log=rows,
                 terms=[AttributeTerm("attr", 1.0, act_t=0.3)])
    assert rows == [2] * 3 + [4] * 7
    assert torch.isfinite(out).all()


def test_unknown_network_and_bad_lambda_are_clear_errors(unet_model, edges):
    model = unet_model
    attach_random(model.controlnet)
    cond = model.encode_prompt(["a cat"])
    sched = model.schedule(2, height=64, width=64)
    with pytest.raises(KeyError, match="no attribute network named 'nope'"):
        sample(model, _noise(model), sched, cond, w1=5.0, control_image=edges, terms=[AttributeTerm("nope", 1.0)])
    with pytest.raises(ValueError, match="allowed range"):
        sample(model, _noise(model), sched, cond, w1=5.0, control_image=edges, terms=[AttributeTerm("attr", 3.0)])
    with pytest.raises(ValueError, match="edge map"):
        sample(model, _noise(model), sched, cond, w1=5.0, terms=[AttributeTerm("attr", 1.0)])
