"""H1/H2 and bad input: hook lifecycle, unsupported schedulers and starts, clear errors for bad settings."""

from __future__ import annotations

import math

import pytest
import torch
from _specedit_fakes import C, OracleKontext, euler_run, flux_scheduler, kontext_call, kontext_pipe

from specedit import SpecEditConfig, apply_specedit, prime_specedit, remove_specedit, specedit_summary
from specedit.hooks import _hook_of
from specedit.layout import Grid
from specedit.ops import pack


def _oracle(grid: Grid | None = None, seed: int = 0):
    grid = grid or Grid(6, 6)
    g = torch.Generator().manual_seed(seed)
    hh, ww = grid.latent_hw
    model = OracleKontext({"c": torch.randn(1, C, hh, ww, generator=g)})
    eps, ref = torch.randn(1, C, hh, ww, generator=g), torch.randn(1, C, hh, ww, generator=g)
    return model, pack(eps), pack(ref)


def test_h1_double_apply_raises_and_remove_restores():
    model, _, _ = _oracle()
    apply_specedit(model, SpecEditConfig(mask_override="none"), scheduler=flux_scheduler())
    with pytest.raises(ValueError, match="already applied"):
        apply_specedit(model, SpecEditConfig())
    remove_specedit(model)
    with pytest.raises(ValueError, match="not applied"):
        remove_specedit(model)
    apply_specedit(model, SpecEditConfig())  # applying again after removal works


def test_h1_stats_survive_maybe_free_model_hooks_and_generations_are_independent():
    pipe = kontext_pipe()
    apply_specedit(pipe, SpecEditConfig(feature_extractor="latent"))
    first = kontext_call(pipe, seed=1).images
    hook = _hook_of(pipe)
    assert hook.generation is None  # reset by the pipeline's maybe_free_model_hooks
    stats = specedit_summary(pipe)
    assert stats.num_steps == 6 and stats.forward_calls_main == 6
    pipe.maybe_free_model_hooks()
    assert specedit_summary(pipe) is stats
    second = kontext_call(pipe, seed=2).images
    for seed, got in ((1, first), (2, second)):
        fresh = kontext_pipe()
        apply_specedit(fresh, SpecEditConfig(feature_extractor="latent"))
        assert torch.equal(kontext_call(fresh, seed=seed).images, got)


def test_h1_two_generations_without_reset_are_detected_by_sigma():
    model, eps, ref = _oracle()
    sched = flux_scheduler()
    apply_specedit(model, SpecEditConfig(mask_override="none"), scheduler=sched)
    a = euler_run(model, sched, eps, ref, (6, 6), 5, family="flux_kontext")
    first = specedit_summary(model)
    b = euler_run(model, sched, eps, ref, (6, 6), 5, family="flux_kontext")  # no reset_state in between
    assert torch.equal(a, b) and specedit_summary(model) is not first
    assert len(specedit_summary(model).calls) == 5


def test_h1_bare_transformer_needs_num_inference_steps():
    model, eps, ref = _oracle()
    apply_specedit(model, SpecEditConfig())
    with pytest.raises(ValueError, match="num_inference_steps"):
        euler_run(model, flux_scheduler(), eps, ref, (6, 6), 4, family="flux_kontext")
    remove_specedit(model)
    apply_specedit(model, SpecEditConfig(num_inference_steps=4, mask_override="none"))
    out = euler_run(model, flux_scheduler(), eps, ref, (6, 6), 4, family="flux_kontext")  # σ counting
    assert out.shape == eps.shape and specedit_summary(model).num_steps == 4


def test_h2_start_below_sigma_one_is_rejected():
    model, eps, ref = _oracle()
    apply_specedit(model, SpecEditConfig(num_inference_steps=4))
    from _specedit_fakes import flux_ids

    ids = torch.cat([flux_ids(0, 6, 6), flux_ids(1, 6, 6)])
    with pytest.raises(ValueError, match="σ_0 = 1"):
        model(hidden_states=torch.cat([eps, ref], 1), encoder_hidden_states=torch.ones(1, 3, 8),
              timestep=torch.tensor([0.5]), img_ids=ids, txt_ids=torch.zeros(3, 3))


@pytest.mark.parametrize("kind", ["stochastic", "heun"])
def test_h2_non_euler_schedulers_are_rejected(kind):
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    model, eps, ref = _oracle()
    if kind == "stochastic":
        sched = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
        match = "stochastic_sampling"
    else:
        sched = FlowMatchHeunDiscreteScheduler()
        match = "plain Euler"
    apply_specedit(model, SpecEditConfig(), scheduler=sched)
    with pytest.raises(ValueError, match=match):
        euler_run(model, flux_scheduler(), eps, ref, (6, 6), 4, family="flux_kontext")


def test_h2_mirror_mask_with_unequal_grids_warns_and_falls_back():
    pipe = kontext_pipe()
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1, 1] = True
    apply_specedit(pipe, SpecEditConfig(reference_policy="mirror_mask", mask_override=mask))
    with pytest.warns(UserWarning, match="mirror_mask"):
        kontext_call(pipe, size=96, image=torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)))
    stats = specedit_summary(pipe)
    mixed = [c for c in stats.calls if c["stage"] == "mixed"]
    coarse = [c for c in stats.calls if c["stage"] == "coarse"]
    assert mixed and all(c["reference"] == 64 for c in mixed)  # full reference in mixed steps
    assert coarse and all(c["reference"] == 16 for c in coarse)  # pooled in coarse-only steps
    assert any("mirror_mask" in w for w in stats.warnings)


def test_reference_of_another_size_needs_a_mask_override():
    pipe = kontext_pipe()
    apply_specedit(pipe, SpecEditConfig())
    with pytest.raises(ValueError, match="differs from the target"):
        kontext_call(pipe, size=96, image=torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)))


def test_grids_that_cannot_be_pooled_and_wrong_mask_shapes():
    model, eps, ref = _oracle(Grid(1, 6))
    apply_specedit(model, SpecEditConfig(mask_override="none"), scheduler=flux_scheduler())
    with pytest.raises(ValueError, match="cannot be pooled"):
        euler_run(model, flux_scheduler(), eps, ref, (1, 6), 4, family="flux_kontext")
    model, eps, ref = _oracle()
    sched = flux_scheduler()
    apply_specedit(model, SpecEditConfig(mask_override=torch.zeros(4, 4, dtype=torch.bool)), scheduler=sched)
    with pytest.raises(ValueError, match="mask_override has shape"):
        euler_run(model, sched, eps, ref, (6, 6), 4, family="flux_kontext")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"tau": math.nan}, "tau"), ({"tau": math.inf}, "tau"), ({"tau": 4.5}, "tau"),
    ({"ratio": 0.0}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"draft_factor": 3}, "draft_factor"),
    ({"draft_steps": 0}, "draft_steps"), ({"uniform_stride": 1}, "uniform_stride"), ({"dilate": 4}, "dilate"),
    ({"mask_override": torch.zeros(3, 3)}, "bool"), ({"mask_override": "some"}, "mask_override"),
    ({"coarse_factor": 4}, "coarse_factor"), ({"reference_policy": "pooled"}, "reference_policy"),
    ({"coarse_frac": 0.8, "full_frac": 0.3}, "coarse_frac"), ({"feature_extractor": "lpips"}, "feature_extractor"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpecEditConfig(**kwargs)


def test_kv_cache_and_bad_priming_are_clear_errors():
    model, _, _ = _oracle()
    with pytest.raises(NotImplementedError, match="kv_cache"):
        apply_specedit(model, SpecEditConfig(coarse_attention="kv_cache"))
    apply_specedit(model, SpecEditConfig())
    with pytest.raises(ValueError, match="two branches"):
        prime_specedit(model, branches=[{}], cfg_scale=3.0)
    with pytest.raises(ValueError, match="cfg_rule"):
        prime_specedit(model, branches=[{}, {}], cfg_rule="fancy")
    with pytest.raises(TypeError, match="FluxTransformer2DModel"):
        apply_specedit(torch.nn.Linear(2, 2))


def test_split_matches_the_spec_table():
    config = SpecEditConfig()
    got = {n: (lambda s: (s.coarse, s.mixed, s.full))(config.split(n)) for n in (9, 11, 18, 30, 50)}
    assert got == {9: (3, 5, 1), 11: (3, 7, 1), 18: (5, 11, 2), 30: (9, 18, 3), 50: (15, 30, 5)}
    assert config.split(1) == config.split(1).__class__(0, 0, 1)


def test_enable_specedit_wraps_stock_pipelines_in_place():
    from specedit import enable_specedit
    from specedit.pipelines import SpecEditFluxKontextPipeline

    stock = kontext_pipe()
    pipe = enable_specedit(stock, SpecEditConfig(tau=0.5))
    assert isinstance(pipe, SpecEditFluxKontextPipeline) and pipe.transformer is stock.transformer
    assert pipe.specedit_config.tau == 0.5 and pipe.transformer.dtype == stock.transformer.dtype
    assert enable_specedit(pipe, SpecEditConfig(tau=0.9)) is pipe and pipe.specedit_config.tau == 0.9
    with pytest.raises(TypeError, match="enable_specedit supports"):
        enable_specedit(object())
