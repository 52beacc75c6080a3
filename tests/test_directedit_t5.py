"""Integration: directedit's exact inversion on a t5-linearized toy-sd3 (issue 10).

The Δ pre-shift makes the source branch retrace the inversion for *any* deterministic network, so the
reconstruction of a linearized (TTT) transformer stays exact — with the Value injection composed on top of the
TTT layers (``install(stack=True)``), not replacing them.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("directedit")
pytest.importorskip("t5_linearize")

import directedit
from flowcore.toy import build
from t5_linearize import LinearizeConfig, linearize

PROMPT, TARGET = "a large red circle in the center on a blue background", "a large green circle in the center on a blue background"


@pytest.fixture(scope="module")
def t5_toy_sd3():
    torch.set_num_threads(1)
    model = build("toy-sd3", preset="ci").adapter()
    t5 = model.bind()
    t5.denoiser = linearize(model.denoiser, LinearizeConfig(), generator=torch.Generator().manual_seed(0)).eval()
    return t5


@pytest.mark.parametrize("snap", [True, False])
def test_directedit_reconstruction_is_exact_on_a_linearized_model(t5_toy_sd3, snap):
    model = t5_toy_sd3
    z0 = model.encode_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    config = directedit.DirectEditConfig(num_steps=6, source_guidance=1.5, target_guidance=2.0, snap_source=snap,
                                         injection=directedit.ValueInjection(steps=3))
    src, tar = model.encode_prompt([PROMPT]), model.encode_prompt([TARGET])
    uncond = model.encode_prompt([""])
    with torch.no_grad():
        cache = directedit.invert(model, z0, src, config=config, source_uncond=uncond)
        result = directedit.edit(model, cache, tar, config=config, target_uncond=uncond)
    assert result.injection_log, "the Value injection must run on the TTT sites"
    ttt = model.denoiser.ttt_processors()
    assert ttt and all(model.denoiser.attn_processors[n] is p for n, p in ttt.items()), "TTT layers were replaced"
    if snap:
        assert torch.equal(result.reconstruction, z0)
    else:
        assert float((result.reconstruction - z0).abs().max()) <= 1e-5
    assert float((result.edited - z0).abs().max()) > 1e-4  # the target branch did edit
