"""E1–E4 and D1 on tiny random Kontext / Qwen-Image-Edit pipelines and toy-kontext (spec §7)."""

from __future__ import annotations

import pytest
import torch
from _specedit_fakes import kontext_call, kontext_pipe, qwen_call, qwen_pipe

from specedit import SpecEditConfig, apply_specedit, prime_specedit, remove_specedit, specedit_summary
from specedit.hooks import _hook_of
from specedit.pipelines import SpecEditFluxKontextPipeline, SpecEditQwenImageEditPipeline

EXACT_CONFIGS = {
    "tau_minus_one": SpecEditConfig(tau=-1.0, n_coarse=0),  # the draft and verification run, everything fine
    "mask_all": SpecEditConfig(mask_override="all", n_coarse=0),
}


@pytest.fixture(scope="module")
def kontext_stock():
    pipe = kontext_pipe()
    return pipe, {cfg: kontext_call(pipe, cfg=cfg).images for cfg in (False, True)}


@pytest.fixture(scope="module")
def qwen_stock():
    pipe = qwen_pipe()
    return qwen_call(pipe).images


@pytest.mark.parametrize("cfg", [False, True], ids=["embedded", "true_cfg"])
@pytest.mark.parametrize("name", list(EXACT_CONFIGS))
def test_e1_kontext_all_fine_equals_stock(kontext_stock, cfg, name):
    _, refs = kontext_stock
    config = EXACT_CONFIGS[name]
    wrapper = SpecEditFluxKontextPipeline.from_pipe(kontext_pipe())
    out = kontext_call(wrapper, cfg=cfg, specedit_config=config)
    assert torch.equal(out.images, refs[cfg])
    stats = out.specedit[0]
    assert stats.forward_calls_draft == ((2 if cfg else 1) * 8 if name == "tau_minus_one" else 0)
    if name == "tau_minus_one":  # the hook on the stock pipeline (the stricter of the two settings)
        hooked = kontext_pipe()
        apply_specedit(hooked, config)
        assert torch.equal(kontext_call(hooked, cfg=cfg).images, refs[cfg])


@pytest.mark.parametrize("name", list(EXACT_CONFIGS))
def test_e1_qwen_true_cfg_all_fine_equals_stock(qwen_stock, name):
    wrapper = SpecEditQwenImageEditPipeline.from_pipe(qwen_pipe())
    out = qwen_call(wrapper, specedit_config=EXACT_CONFIGS[name])
    assert torch.equal(out.images, qwen_stock)
    if name == "tau_minus_one":
        assert out.specedit[0].draft_cfg and out.specedit[0].forward_calls_draft == 16


def test_e1_toy_all_fine_equals_stock():
    from specedit import toy
    from specedit.pipelines import SpecEditToyKontextPipeline

    bundle = toy.build_bundle("toy-kontext", preset="ci")
    stock = bundle.pipeline()
    stock.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    embeds, pooled = bundle.encode_prompt(["make the circle red"])
    common = dict(num_inference_steps=5, guidance_scale=2.5, height=32, width=32, output_type="pt")
    ref = stock(image=image * 2 - 1, prompt_embeds=embeds, pooled_prompt_embeds=pooled, max_area=1024,
                _auto_resize=False, generator=torch.Generator().manual_seed(0), **common).images
    pipe = SpecEditToyKontextPipeline.from_toy(bundle=bundle)
    for config in EXACT_CONFIGS.values():
        out = pipe(image=image, prompt="make the circle red", generator=torch.Generator().manual_seed(0),
                   specedit_config=config, **common)
        assert torch.equal(out.images, ref)
    out = pipe(image=image, prompt="make the circle red", generator=torch.Generator().manual_seed(0), **common)
    assert out.specedit[0].feature_extractor == "color_pyramid" and out.images.shape == ref.shape


def test_e2_hook_on_stock_pipeline_equals_wrapper_kontext_cfg():
    wrapper = SpecEditFluxKontextPipeline.from_pipe(kontext_pipe())
    want = kontext_call(wrapper, cfg=True)
    stats = want.specedit[0]
    assert (stats.n_coarse, stats.n_mixed, stats.n_full) == (2, 3, 1) and stats.draft_cfg
    hooked = kontext_pipe()
    apply_specedit(hooked)
    pos, pooled, ids = hooked.encode_prompt(prompt="make it red", prompt_2=None, max_sequence_length=16)
    neg, neg_pooled, neg_ids = hooked.encode_prompt(prompt="blurry", prompt_2=None, max_sequence_length=16)
    prime_specedit(hooked.transformer, cfg_scale=3.0, cfg_rule="plain", branches=[
        {"encoder_hidden_states": pos, "pooled_projections": pooled, "txt_ids": ids},
        {"encoder_hidden_states": neg, "pooled_projections": neg_pooled, "txt_ids": neg_ids}])
    got = kontext_call(hooked, cfg=True).images
    assert torch.equal(got, want.images)


def test_e2_hook_on_stock_pipeline_equals_wrapper_qwen(qwen_stock):
    from _specedit_fakes import QWEN_SIZE, qwen_image

    from flowcore.testing import qwen_edit_resolution

    wrapper = SpecEditQwenImageEditPipeline.from_pipe(qwen_pipe())
    want = qwen_call(wrapper)
    assert not torch.equal(want.images, qwen_stock)  # the method changed something
    hooked = qwen_pipe()
    apply_specedit(hooked)
    with qwen_edit_resolution(QWEN_SIZE * QWEN_SIZE):
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module

        w, h, _ = module.calculate_dimensions(1024 * 1024, 1.0)
        prompt_image = hooked.image_processor.resize(qwen_image(), h, w)
        pos, pos_mask = hooked.encode_prompt(image=prompt_image, prompt="make it blue")
        neg, neg_mask = hooked.encode_prompt(image=prompt_image, prompt="")
    prime_specedit(hooked.transformer, cfg_scale=4.0, cfg_rule="qwen_rescale", branches=[
        {"encoder_hidden_states": pos, "encoder_hidden_states_mask": pos_mask},
        {"encoder_hidden_states": neg, "encoder_hidden_states_mask": neg_mask}])
    assert torch.equal(qwen_call(hooked).images, want.images)


def _stock_kwargs_flux(transformer, n_img=128, n_txt=5):
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(n_img, 3)
    ids[:, 1] = torch.arange(n_img) // 8
    ids[:, 2] = torch.arange(n_img) % 8
    ids[64:, 0] = 1
    return dict(hidden_states=torch.randn(1, n_img, 16, generator=g),
                encoder_hidden_states=torch.randn(1, n_txt, 64, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.7]),
                img_ids=ids, txt_ids=torch.zeros(n_txt, 3), guidance=torch.tensor([2.5]), return_dict=False)


def _stock_kwargs_qwen(n_txt=5):
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 32, 16, generator=g),
                encoder_hidden_states=torch.randn(1, n_txt, 16, generator=g),
                encoder_hidden_states_mask=torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool),
                timestep=torch.tensor([0.7]), img_shapes=[[(1, 4, 4), (1, 4, 4)]], return_dict=False)


@pytest.mark.parametrize("family", ["flux", "qwen"])
def test_e3_processors_and_rope_wrapper_are_stock_without_a_layout(family):
    from _specedit_fakes import tiny_kontext_transformer

    from flowcore.testing import tiny_qwen_image_edit

    if family == "flux":
        model, kw = tiny_kontext_transformer(), _stock_kwargs_flux(None)
    else:
        model = tiny_qwen_image_edit(num_attention_heads=2, attention_head_dim=32, axes_dims_rope=(8, 12, 12))
        kw = _stock_kwargs_qwen()
    stock_processors = sorted(type(p).__name__ for p in model.attn_processors.values())
    with torch.no_grad():
        ref = model(**kw)[0]
        apply_specedit(model, SpecEditConfig(num_inference_steps=4))
        hook = _hook_of(model)
        assert {type(p).__name__ for p in model.attn_processors.values()} == {"SpecEditProcessor"}
        if family == "qwen":
            assert type(model.pos_embed).__name__ == "FloatPositionRope"
        assert torch.equal(hook.fn_ref.original_forward(**kw)[0], ref)
        remove_specedit(model)
        assert model._diffusers_hook.get_hook("specedit") is None
        assert sorted(type(p).__name__ for p in model.attn_processors.values()) == stock_processors
        if family == "qwen":
            assert type(model.pos_embed).__name__ == "QwenEmbedRope"
        assert torch.equal(model(**kw)[0], ref)
    with pytest.raises(ValueError, match="not applied"):
        specedit_summary(model)


@pytest.mark.parametrize("family", ["kontext", "qwen"])
def test_e4_all_fine_cell_major_order_matches_stock(kontext_stock, qwen_stock, family):
    config = SpecEditConfig(mask_override="all", n_coarse=0, extra={"force_assembly": True, "fine_order": "cell"})
    if family == "kontext":
        pipe = kontext_pipe()
        apply_specedit(pipe, config)
        _hook_of(pipe).trace = []
        out = kontext_call(pipe).images
        ref = kontext_stock[1][False]
    else:
        pipe = qwen_pipe()
        apply_specedit(pipe, config)
        _hook_of(pipe).trace = []
        out = qwen_call(pipe).images
        ref = qwen_stock
    trace = _hook_of(pipe).trace
    assert trace and all(t["stage"] == "mixed" for t in trace)  # the calls really went through the index maps
    assert (out - ref).abs().max() <= 1e-5


def test_d1_deterministic_and_generator_state_like_stock():
    stock = kontext_pipe()
    g_stock = torch.Generator().manual_seed(0)
    kontext_call(stock, generator=g_stock)
    wrapper = SpecEditFluxKontextPipeline.from_pipe(kontext_pipe())
    g1 = torch.Generator().manual_seed(0)
    first = kontext_call(wrapper, generator=g1).images
    assert torch.equal(g1.get_state(), g_stock.get_state())
    second = kontext_call(wrapper, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(first, second)
    global_state = torch.random.get_rng_state()
    kontext_call(wrapper)
    assert torch.equal(global_state, torch.random.get_rng_state())


def test_hook_follows_flowcore_sampling_loops():
    """Inside flowcore.sample the step and σ come from the CallContext / running schedule, not a scheduler."""
    from _specedit_fakes import kontext_latent_image

    from flowcore.adapters import adapter_from_pipe
    from flowcore.guidance import guided
    from flowcore.sampling import sample

    pipe = kontext_pipe()
    apply_specedit(pipe, SpecEditConfig(feature_extractor="latent"))
    want = kontext_call(pipe).images
    want_stats = specedit_summary(pipe)
    model = adapter_from_pipe(pipe)
    cond = model.encode_prompt(["make it red"], max_sequence_length=16)
    sched = model.schedule(6, height=128, width=128, sigmas="pipeline")
    x = model.prepare_noise(1, 128, 128, generator=torch.Generator().manual_seed(0))
    pred = guided(model, cond, guidance=2.5, reference=kontext_latent_image())
    with torch.no_grad():
        got = sample(pred, x, sched)
    stats = specedit_summary(pipe)
    assert stats is not want_stats and stats.n_union == want_stats.n_union and stats.forward_calls_draft == 8
    assert (got - want).abs().max() <= 1e-4
