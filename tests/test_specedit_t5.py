"""Integration: specedit on a t5-linearized toy-kontext (issue 10; t5-linearize spec §6, "beyond the paper").

The linearized model is t5-linearize's committed ``assets/toy/t5-kontext-ft`` (toy-kontext converted with the
default config and fine-tuned on toy edit pairs). SpecEdit's attention processor stacks on the TTT layers
(``install(stack=True)``) instead of replacing them. Its mixed-resolution calls (fine tokens followed by
coarse tokens at half-integer positions) are no lattice; t5-linearize reads them as a tiling of the fine frame and
runs TTT's locality conv on that canvas (the spec's fallback, dropping the conv for the segment, cost 4.6 dB of
background here: 14.4 vs 19.0 dB on 12 pairs). These tests measure what remains: SpecEdit on the linearized model against
the linearized model's own plain sampler (background PSNR within 2 dB), and its edit success against SpecEdit on the
softmax model (the issue's criterion: within 5 points; the fast test allows one pair of 12, the slow test asks
5 points on 64 pairs). How far the linearized model itself is from the softmax one is t5-linearize's fine-tuning
question (its README reports it), not this integration's, so it is printed, not asserted.

Fast test: 12 test pairs at 18 NFE (≈ 1 min on 2 cores). Slow test (``-m slow``): 64 pairs.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

pytest.importorskip("specedit")
pytest.importorskip("t5_linearize")

from specedit import toy
from specedit.config import SpecEditConfig
from specedit.demo import ToyRunner
from t5_linearize.demo import assets_dir
from t5_linearize.models import T5FluxTransformer2DModel

NFE = 18
BG_TOLERANCE_DB = 2.0  # mean background PSNR of SpecEdit(T5) vs T5's own plain sampler at the same NFE


def _t5_kontext_dir():
    folder = assets_dir() / "t5-kontext-ft"
    if not (folder / "config.json").is_file():
        pytest.fail(f"{folder} is missing: t5-linearize's committed toy asset (see its assets/toy/README.md)")
    return folder


@pytest.fixture(scope="module")
def runners():
    torch.set_num_threads(1)
    bundle = toy.load_bundle("toy-kontext")
    linear = copy.copy(bundle)
    linear.denoiser = T5FluxTransformer2DModel.from_pretrained(_t5_kontext_dir(), torch_dtype=torch.float32).eval()
    config = SpecEditConfig(draft_factor=toy.draft_factor_for(bundle)[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pair = {"softmax": ToyRunner(bundle, config), "t5": ToyRunner(linear, config)}
    return pair, [str(w.message) for w in caught]


def _measure(runner: ToyRunner, pairs: int, *, plain: bool = False) -> tuple[float, float]:
    """(success fraction, mean background PSNR) of SpecEdit (or the plain sampler) at NFE on test pairs 0..n-1."""
    wins, psnrs = 0, []
    for i in range(pairs):
        pair = toy.sample_edit(0, i, "test")
        run = runner.plain_run(pair, i, NFE) if plain else runner.spec_run(pair, i, NFE)
        assert torch.isfinite(run.image).all()
        result = toy.edit_success(run.image, pair)
        wins += bool(result.success)
        psnrs.append(min(float(result.bg_psnr), 60.0))  # identical backgrounds read as inf
    return wins / pairs, sum(psnrs) / len(psnrs)


def test_specedit_stacks_on_the_ttt_layers_and_every_call_keeps_the_conv(runners):
    (runner_pair, install_warnings) = runners
    t5 = runner_pair["t5"]
    ttt = t5.spec.transformer.ttt_processors()
    assert ttt and all(t5.spec.transformer.attn_processors[n] is p for n, p in ttt.items()), "TTT was replaced"
    assert any("keeps TTTFluxAttnProcessor" in m for m in install_warnings)
    pair = toy.sample_edit(0, 0, "test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from t5_linearize import layouts

        layouts._WARNED.clear()
        run = t5.spec_run(pair, 0, NFE)
    assert {"coarse", "mixed"} <= {call["stage"] for call in run.stats.calls}
    messages = [str(w.message) for w in caught if "row-major grid" in str(w.message)]
    assert not messages, f"draft, coarse-only and mixed calls are grids, lattices or tilings: {messages}"


def test_specedit_on_the_linearized_kontext_keeps_its_quality(runners):
    (runner_pair, _) = runners
    pairs = 12
    soft_success, soft_bg = _measure(runner_pair["softmax"], pairs)
    t5_success, t5_bg = _measure(runner_pair["t5"], pairs)
    t5_plain_success, t5_plain_bg = _measure(runner_pair["t5"], pairs, plain=True)
    print(f"\n{pairs} pairs, {NFE} NFE: SpecEdit softmax success {soft_success:.3f} bg {soft_bg:.2f} dB | "
          f"SpecEdit T5 success {t5_success:.3f} bg {t5_bg:.2f} dB | plain T5 success {t5_plain_success:.3f} "
          f"bg {t5_plain_bg:.2f} dB")
    assert math.isfinite(t5_bg) and math.isfinite(soft_bg)
    assert t5_bg >= t5_plain_bg - BG_TOLERANCE_DB
    assert t5_success >= soft_success - 1 / pairs  # at most one pair fewer (the slow test asks for 5 points)


@pytest.mark.slow
def test_specedit_edit_success_on_t5_is_within_5_points_of_softmax(runners):
    (runner_pair, _) = runners
    soft_success, soft_bg = _measure(runner_pair["softmax"], 64)
    t5_success, t5_bg = _measure(runner_pair["t5"], 64)
    t5_plain_success, t5_plain_bg = _measure(runner_pair["t5"], 64, plain=True)
    print(f"\n64 pairs, {NFE} NFE: SpecEdit softmax {soft_success:.3f} / {soft_bg:.2f} dB, SpecEdit T5 "
          f"{t5_success:.3f} / {t5_bg:.2f} dB, plain T5 {t5_plain_success:.3f} / {t5_plain_bg:.2f} dB")
    assert t5_success >= soft_success - 0.05
    assert t5_bg >= t5_plain_bg - BG_TOLERANCE_DB
