"""Real-image editing: null-parameter inversion (§7 test 12), replay and round trip (13), the flow port (18)."""

from __future__ import annotations

import warnings

import pytest
import torch

from style_attr import (
    AttributeTerm,
    InversionResult,
    edit_inverted,
    null_parameter_inversion,
    plain_inversion,
)
from style_attr.testing import attach_random

STEPS, INNER, W1 = 4, 4, 5.0


def _image_latents(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.latent_shape(1, 64, 64), generator=g) * 0.8


def _snapshot(model):
    return {**{f"u.{k}": v.clone() for k, v in model.denoiser.state_dict().items()},
            **{f"c.{k}": v.clone() for k, v in model.controlnet.state_dict().items()}}


@pytest.mark.parametrize("which", ["unet_model", "sd3_model"])
def test_null_parameter_inversion_contract(request, edges, which):
    """Test 12 (and 18 for SD3): the text null and all weights stay bit-identical and get no gradient; lr and
    early-stop values follow the schedule; no step ends above its initial loss; the reconstruction beats plain
    inversion at the same CFG."""
    model = request.getfixturevalue(which)
    attach_random(model.controlnet, gain=3.0)
    cond, uncond = model.encode_prompt(["a red circle"]), model.encode_prompt([""])
    uncond_before = uncond.embeds.clone()
    before = _snapshot(model)
    sched = model.schedule(STEPS, height=64, width=64)
    x0 = _image_latents(model)
    with pytest.warns(UserWarning, match="forced to 0"):
        inv = null_parameter_inversion(model, x0, sched, cond, [AttributeTerm("attr", 0.0, act_t=0.1)], w1=W1,
                                       uncond=uncond, control_image=edges, num_inner_steps=INNER)
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(uncond.embeds, uncond_before)
    assert all(p.grad is None for p in list(model.denoiser.parameters()) + list(model.controlnet.parameters()))
    trace = inv.trace
    assert trace["lr"] == pytest.approx([1e-2 * (1 - i / 100) for i in range(STEPS)])
    assert trace["threshold"] == pytest.approx([1e-5 + i * 2e-5 for i in range(STEPS)])
    for losses, accepted, iters in zip(trace["losses"], trace["accepted_loss"], trace["iterations"]):
        assert 1 <= iters <= INNER and len(losses) == iters
        assert accepted <= losses[0]
    assert inv.phis["attr"].shape[0] == STEPS
    assert not torch.equal(inv.phis["attr"][-1], inv.phis["attr"][0]) or trace["iterations"][0] == 1
    plain = plain_inversion(model, x0, sched, cond, w1=W1, uncond=uncond, control_image=edges)
    mse_null = float(((inv.reconstruction - x0) ** 2).mean())
    mse_plain = float(((edit_inverted(model, plain) - x0) ** 2).mean())
    assert mse_null < mse_plain


def test_untrained_network_is_a_no_op_with_a_warning(unet_model, edges):
    """Test 12: zero W_o gives φ no gradient: the inversion changes nothing and warns."""
    from style_attr import AttributeControlNet, AttributeSpec

    model = unet_model
    AttributeControlNet.attach(model.controlnet, AttributeSpec.for_family("outline"), hidden_dim=16)
    cond, uncond = model.encode_prompt(["a cat"]), model.encode_prompt([""])
    sched = model.schedule(3, height=64, width=64)
    with pytest.warns(UserWarning, match="untrained"):
        inv = null_parameter_inversion(model, _image_latents(model), sched, cond, [AttributeTerm("attr", 0.0, act_t=0)],
                                       w1=W1, uncond=uncond, control_image=edges, num_inner_steps=3)
    assert all(torch.equal(inv.phis["attr"][i], inv.phis["attr"][0]) for i in range(3))
    plain = plain_inversion(model, _image_latents(model), sched, cond, w1=W1, uncond=uncond, control_image=edges)
    assert torch.allclose(inv.reconstruction, edit_inverted(model, plain), atol=1e-5)


def test_editing_at_lambda_ref_replays_and_round_trips(tmp_path, unet_model, edges):
    """Test 13: editing at λ_ref replays the inversion exactly; InversionResult save/load round-trips (the loaded
    result edits identically); λ ≠ λ_ref changes the output."""
    model = unet_model
    attach_random(model.controlnet, gain=3.0)
    cond, uncond = model.encode_prompt(["a red circle"]), model.encode_prompt([""])
    sched = model.schedule(STEPS, height=64, width=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inv = null_parameter_inversion(model, _image_latents(model), sched, cond, [AttributeTerm("attr", 0.0)], w1=W1,
                                       uncond=uncond, control_image=edges, num_inner_steps=2)
    replay = edit_inverted(model, inv, [AttributeTerm("attr", 0.0)])
    assert torch.equal(replay, inv.reconstruction)
    edited = edit_inverted(model, inv, [AttributeTerm("attr", 1.0)])
    assert (edited - replay).abs().max() > 1e-4
    path = inv.save(tmp_path / "inversion")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded = InversionResult.load(path)
    assert loaded.method == "null_param" and loaded.w1 == W1 and loaded.trace == inv.trace
    assert torch.equal(edit_inverted(model, loaded, [AttributeTerm("attr", 1.0)]), edited)
    assert torch.equal(edit_inverted(model, loaded), inv.reconstruction)
    with pytest.raises(ValueError, match="inverted at"):
        edit_inverted(model, inv, [AttributeTerm("attr", 1.0, lam_ref=0.5)])
