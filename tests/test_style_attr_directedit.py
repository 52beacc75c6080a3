"""Integration: style-attr's real-image editing on flow models reuses directedit's exact inversion
(style-attr spec §2.7, §7 test 19; directedit spec §2.3–2.4, §5).

Tiny SD3 + SD3 ControlNet carrying an attribute network with random (trained-like) output layers, w1 = 5:
``directedit.invert`` on the style-attr base velocity (ControlNet fed the edge map), then the style-attr edit that
feeds the network ``x_i + Δ_i`` and applies the update to ``x_i``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("directedit")
pytest.importorskip("style_attr")

from flowcore.adapters import ControlInput
from flowcore.testing import CallCounter
from style_attr import AttributeTerm, directedit_inversion, edit_inverted, plain_inversion
from style_attr.testing import attach_random, random_edges, tiny_sd3_model

STEPS, W1 = 8, 5.0


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model = tiny_sd3_model()
    attach_random(model.controlnet, gain=3.0)
    edges = random_edges(1)
    cond, uncond = model.encode_prompt(["a red circle on a blue background"]), model.encode_prompt([""])
    sched = model.schedule(STEPS, height=64, width=64)
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(model.latent_shape(1, 64, 64), generator=g) * 0.8
    return model, edges, cond, uncond, sched, x0


def test_directedit_route_reconstructs_exactly_and_edits(setup):
    model, edges, cond, uncond, sched, x0 = setup
    with CallCounter(model.denoiser) as calls:
        inv = directedit_inversion(model, x0, sched, cond, w1=W1, uncond=uncond, control_image=edges,
                                   terms=[AttributeTerm("attr", 0.0)])
        rec = edit_inverted(model, inv, [AttributeTerm("attr", 0.0)])
    assert calls.calls == STEPS + STEPS  # S inversion calls (2 CFG rows each) + S edit calls
    assert calls.per_call == [2] * (2 * STEPS)  # λ = λ_ref drops the attribute rows
    err = float((rec - x0).abs().max())
    assert err <= 1e-4
    plain = plain_inversion(model, x0, sched, cond, w1=W1, uncond=uncond, control_image=edges)
    plain_err = float((edit_inverted(model, plain) - x0).abs().max())
    assert err < plain_err / 10

    with CallCounter(model.denoiser) as calls:
        edited = edit_inverted(model, inv, [AttributeTerm("attr", 1.0, act_t=0.0)])
    assert calls.calls == STEPS and calls.per_call == [4] * STEPS  # one call per step, 4 rows
    assert float((edited - rec).abs().max()) > 1e-3


def test_directedit_route_matches_the_cache_trajectory(setup):
    """At λ_ref every intermediate latent follows directedit's inversion trajectory (not only the end point)."""
    import directedit

    model, edges, cond, uncond, sched, x0 = setup
    inv = directedit_inversion(model, x0, sched, cond, w1=W1, uncond=uncond, control_image=edges)
    assert inv.trajectory is not None and len(inv.trajectory) == STEPS + 1
    assert torch.equal(inv.trajectory[STEPS], x0.float())
    cache = directedit.invert(model.bind(control=ControlInput(image=edges)), x0, cond,
                              config=directedit.DirectEditConfig(num_steps=STEPS, source_guidance=W1, injection=None),
                              source_uncond=uncond)
    for k in range(STEPS + 1):
        assert torch.equal(cache.latents[k], inv.trajectory[k])


def test_directedit_route_refuses_vp_models():
    from style_attr.testing import tiny_unet_model

    model = tiny_unet_model()
    attach_random(model.controlnet)
    sched = model.schedule(2, height=64, width=64)
    with pytest.raises(ValueError, match="flow models"):
        directedit_inversion(model, torch.zeros(model.latent_shape(1, 64, 64)), sched, model.encode_prompt(["a"]),
                             w1=W1, control_image=random_edges(1))
