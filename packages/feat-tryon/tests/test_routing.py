"""Spec §7 tests 10–14: block routing, exactness at scale 0, the routed processor, slot isolation, Plus adapters."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from feat_helpers import IP_DIM, person_batch, sdxl_adapter, sdxl_models

from feat_tryon.config import FEATConfig
from feat_tryon.core import run_feat
from feat_tryon.reference_configs import SD15_UNET_CONFIG, SDXL_UNET_CONFIG, build_unet
from feat_tryon.routing import BlockRouting, attention_groups, cross_sites, install_routing


def test_10_rule_on_the_real_sdxl_and_sd15_configs():
    sdxl = build_unet(SDXL_UNET_CONFIG)
    sites = cross_sites(sdxl)
    assert len(sites) == 70 and len(attention_groups(sites)) == 11
    rule = BlockRouting.default_for(sdxl.config)
    assert rule.style == ("up_blocks.0.attentions.1",)
    assert set(rule.content) == {"down_blocks.2.attentions.1", "mid_block.attentions.0", "up_blocks.0.attentions.0"}
    counts = Counter(r.slot for r in rule.resolve(sites).values())
    assert counts == {"style": 10, "content": 30, "off": 30}
    sd15 = build_unet(SD15_UNET_CONFIG)
    rule15 = BlockRouting.default_for(sd15.config)
    assert rule15.style == ("up_blocks.1.attentions.1",)
    assert set(rule15.content) == {"down_blocks.2.attentions.1", "mid_block.attentions.0", "up_blocks.1.attentions.0"}
    assert len(cross_sites(sd15)) == 16


def test_10b_rule_on_toy_unet_config():
    from flowcore.toy.models import model_config

    rule = BlockRouting.default_for(dict(model_config("unet")))
    assert rule.style == ("up_blocks.1.attentions.1",)
    assert set(rule.content) == {"down_blocks.1.attentions.0", "mid_block.attentions.0", "up_blocks.1.attentions.0"}


def test_10c_unknown_group_and_json_round_trip():
    sites = cross_sites(sdxl_models()["unet"])
    with pytest.raises(KeyError, match="matches no cross-attention site"):
        BlockRouting(("up_blocks.7.attentions.0",), (), 1, 1).resolve(sites)
    rule = BlockRouting.default_for(sdxl_models()["unet"].config, style_scale=0.3)
    assert BlockRouting.from_json(rule.to_json()) == rule
    diff = BlockRouting.from_diffusers_scale({"down": {"block_1": [0.0, 1.0]}, "up": {"block_0": [0.0, 0.6, 0.0]}},
                                             "style")
    routes = diff.resolve(sites)
    assert {group_scale for s, r in routes.items() if r.slot == "style" for group_scale in [r.scale]} == {1.0, 0.6}
    assert all(r.slot == "off" for s, r in routes.items() if s.startswith("mid_block"))


def _unet_inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(b, 4, 8, 8, generator=g), timestep=torch.tensor(500),
                encoder_hidden_states=torch.randn(b, 8, 64, generator=g),
                added_cond_kwargs={"text_embeds": torch.randn(b, 32, generator=g),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * b)})


def test_11_scale_zero_and_text_scale_one_equals_the_unet_without_ip():
    models = sdxl_models()
    unet, plain = models["unet"], models["plain_unet"]
    inputs = _unet_inputs()
    with torch.no_grad():
        want = plain(**copy.deepcopy(inputs)).sample
        embeds = torch.randn(2, 2, IP_DIM)
        args = copy.deepcopy(inputs)
        args["added_cond_kwargs"]["image_embeds"] = [embeds]
        ip_calls = []
        hooks = [m.register_forward_hook(lambda *a: ip_calls.append(1)) for name, m in unet.named_modules()
                 if name.endswith("to_k_ip.0")]
        try:
            with install_routing(unet, BlockRouting.default_for(unet.config, style_scale=0.0, content_scale=0.0,
                                                               text_scale=1.0)):
                got = unet(**args).sample
        finally:
            for h in hooks:
                h.remove()
    assert torch.equal(got, want)
    assert hooks and not ip_calls  # a scale-0 site skips the IP branch instead of adding 0·Attn


def _site_inputs(attn, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, 16, attn.to_q.in_features, generator=g)
    text = torch.randn(b, 8, 64, generator=g)
    tokens = torch.randn(b, 2, 4, 64, generator=g)
    return hidden, text, tokens


def test_12_processor_matches_stock_processors_and_is_affine_in_text_scale():
    unet = sdxl_models()["unet"]
    sites = cross_sites(unet)
    stock = dict(unet.attn_processors)
    rule = BlockRouting.default_for(unet.config, style_scale=0.7, content_scale=0.4, text_scale=1.0)
    routes = rule.resolve(sites)
    style_site = next(s for s, r in routes.items() if r.slot == "style")
    off_site = next(s for s, r in routes.items() if r.slot == "off")
    with torch.no_grad(), install_routing(unet, rule):
        attn = unet.get_submodule(off_site.removesuffix(".processor"))
        hidden, text, tokens = _site_inputs(attn)
        got = attn(hidden, encoder_hidden_states=(text, [tokens]))
        want = AttnProcessor2_0()(attn, hidden, text)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        attn = unet.get_submodule(style_site.removesuffix(".processor"))
        hidden, text, tokens = _site_inputs(attn, seed=1)
        got = attn(hidden, encoder_hidden_states=(text, [tokens]))
        ref = copy.deepcopy(stock[style_site])
        ref.scale = [0.7]
        want = ref(attn, hidden, encoder_hidden_states=(text, [tokens[:, 0:1]]))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    outs = {}
    for tau in (0.0, 1.0, 0.3):
        with torch.no_grad(), install_routing(unet, rule.with_scales(text_scale=tau)):
            attn = unet.get_submodule(style_site.removesuffix(".processor"))
            outs[tau] = attn(hidden, encoder_hidden_states=(text, [tokens]))
    torch.testing.assert_close(outs[0.3], outs[0.0] + 0.3 * (outs[1.0] - outs[0.0]), atol=1e-6, rtol=0)
    # τ scales the text branch only: f(1) − f(0) = W_o·Attn(text), i.e. the text-only output minus the bias
    text_only = AttnProcessor2_0()(attn, hidden, text) - attn.to_out[0].bias
    torch.testing.assert_close(outs[1.0] - outs[0.0], text_only, atol=1e-6, rtol=0)
    assert dict(unet.attn_processors).keys() == stock.keys()
    assert all(type(unet.attn_processors[k]) is type(v) for k, v in stock.items())  # restored


def test_13_content_slot_affects_only_content_sites():
    unet = sdxl_models()["unet"]
    sites = cross_sites(unet)
    rule = BlockRouting.default_for(unet.config, style_scale=0.6, content_scale=0.8)
    routes = rule.resolve(sites)
    changed = {}
    with torch.no_grad(), install_routing(unet, rule):
        for site in sites:
            attn = unet.get_submodule(site.removesuffix(".processor"))
            hidden, text, tokens = _site_inputs(attn, seed=2)
            other = tokens.clone()
            other[:, 1] += 1.0
            a = attn(hidden, encoder_hidden_states=(text, [tokens]))
            b = attn(hidden, encoder_hidden_states=(text, [other]))
            changed[site] = not torch.equal(a, b)
    for site, route in routes.items():
        assert changed[site] == (route.slot == "content"), site


def test_14_plus_adapter_with_cspe_raises():
    from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection

    adapter = sdxl_adapter()
    unet = adapter.denoiser
    original = unet.encoder_hid_proj
    try:
        unet.encoder_hid_proj = MultiIPAdapterImageProjection(
            [IPAdapterPlusImageProjection(embed_dims=IP_DIM, output_dims=64, hidden_dims=32, heads=2, num_queries=4)])
        batch = person_batch()
        with pytest.raises(ValueError, match="Plus"):
            run_feat(adapter, batch["person"], batch["garment_mask"], design=batch["design"],
                     sketch_mask=batch["sketch_mask"], config=FEATConfig.preset("feat", num_inference_steps=1))
    finally:
        unet.encoder_hid_proj = original


def test_ip_mask_multiplies_the_ip_branch():
    unet = sdxl_models()["unet"]
    sites = cross_sites(unet)
    rule = BlockRouting.default_for(unet.config, style_scale=0.9, content_scale=0.9)
    style_site = next(s for s, r in rule.resolve(sites).items() if r.slot == "style")
    with torch.no_grad():
        with install_routing(unet, rule.with_scales(style_scale=0.0, content_scale=0.0)):
            attn = unet.get_submodule(style_site.removesuffix(".processor"))
            hidden, text, tokens = _site_inputs(attn, seed=4)
            no_ip = attn(hidden, encoder_hidden_states=(text, [tokens]))
        with install_routing(unet, rule, ip_mask=torch.zeros(2, 1, 64, 64)) as handle:
            masked = attn(hidden, encoder_hidden_states=(text, [tokens]))
            handle.set_mask(torch.ones(2, 1, 64, 64))
            full = attn(hidden, encoder_hidden_states=(text, [tokens]))
        with install_routing(unet, rule):
            plain = attn(hidden, encoder_hidden_states=(text, [tokens]))
    assert torch.equal(masked, no_ip)
    torch.testing.assert_close(full, plain, atol=1e-6, rtol=0)
    assert not torch.equal(full, no_ip)
