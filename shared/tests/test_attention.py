"""Attention sites: default processors are bit-identical to stock; hooks are live where (and only where) asked."""

from __future__ import annotations

import logging

import pytest
import torch

from flowcore.adapters import FluxModel
from flowcore.attention import CallContext, SiteProcessor, install, installed, list_sites
from flowcore.layout import TokenLayout
from flowcore.testing import attach_ip_adapter, tiny_flux, tiny_qwen_image_edit, tiny_sd3, tiny_unet


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sd3_inputs(b=2):
    g = _gen(1)
    return dict(hidden_states=torch.randn(b, 4, 16, 16, generator=g), encoder_hidden_states=torch.randn(b, 7, 64,
                generator=g), pooled_projections=torch.randn(b, 64, generator=g),
                timestep=torch.tensor([500.0, 300.0][:b]))


def flux_inputs(b=2, ref=False):
    g = _gen(2)
    ids = FluxModel.image_ids(4, 4)
    if ref:
        ids = torch.cat([ids, FluxModel.image_ids(4, 4, 1.0)])
    return dict(hidden_states=torch.randn(b, ids.shape[0], 16, generator=g),
                encoder_hidden_states=torch.randn(b, 5, 64, generator=g), pooled_projections=torch.randn(b, 32,
                generator=g), timestep=torch.tensor([0.5, 0.3][:b]), img_ids=ids, txt_ids=torch.zeros(5, 3),
                guidance=torch.tensor([3.5, 2.0][:b]))


def qwen_inputs(b=2):
    g = _gen(3)
    mask = torch.ones(b, 6, dtype=torch.long)
    mask[-1, 4:] = 0
    return dict(hidden_states=torch.randn(b, 32, 16, generator=g), encoder_hidden_states=torch.randn(b, 6, 16,
                generator=g), encoder_hidden_states_mask=mask, timestep=torch.tensor([0.5, 0.3][:b]),
                img_shapes=[[(1, 4, 4), (1, 4, 4)]] * b)


def unet_inputs(b=2):
    g = _gen(4)
    return dict(sample=torch.randn(b, 4, 8, 8, generator=g), timestep=torch.tensor(500),
                encoder_hidden_states=torch.randn(b, 7, 32, generator=g))


CASES = {
    "sd3": (tiny_sd3, sd3_inputs, "joint_attention_kwargs"),
    "flux": (tiny_flux, flux_inputs, "joint_attention_kwargs"),
    "kontext": (lambda: tiny_flux(kontext=True), lambda: flux_inputs(ref=True), "joint_attention_kwargs"),
    "qwen": (tiny_qwen_image_edit, qwen_inputs, "attention_kwargs"),
    "unet": (tiny_unet, unet_inputs, "cross_attention_kwargs"),
}


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_default_processors_are_bit_identical_to_stock(case):
    factory, inputs, kw_name = CASES[case]
    model, kw = factory(), inputs()
    ref = model(**kw).sample
    with install(model, {"*": SiteProcessor()}) as handle:
        assert installed(model) and len(handle.processors) == len(list_sites(model))
        out = model(**kw, **{kw_name: {"flowcore_ctx": CallContext(step=0)}}).sample
    assert not installed(model)
    assert torch.equal(out, ref)
    assert torch.equal(model(**kw).sample, ref)  # stock processors restored


@torch.no_grad()
def test_unet_with_ip_adapter_default_processors_are_bit_identical():
    unet = attach_ip_adapter(tiny_unet())
    kw = unet_inputs()
    kw["added_cond_kwargs"] = {"image_embeds": [torch.randn(2, 1, 32, generator=_gen(5))]}
    ref = unet(**kw).sample
    with install(unet, {"unet_cross": SiteProcessor(), "unet_self": SiteProcessor()}):
        out = unet(**kw, cross_attention_kwargs={"flowcore_ctx": CallContext()}).sample
        assert any(hasattr(p, "ip") for p in unet.attn_processors.values())
    assert torch.equal(out, ref)
    assert torch.equal(unet(**kw).sample, ref)


def test_site_kinds_per_architecture():
    kinds = {n: s.kind for n, s in list_sites(tiny_sd3()).items()}
    assert kinds["transformer_blocks.0.attn2.processor"] == "sd3_attn2"
    assert kinds["transformer_blocks.1.attn.processor"] == "sd3_joint"
    assert "transformer_blocks.1.attn2.processor" not in kinds  # only dual-attention blocks have attn2
    flux = list_sites(tiny_flux())
    assert {s.kind for s in flux.values()} == {"flux_double", "flux_single"}
    assert flux["single_transformer_blocks.0.attn.processor"].kind == "flux_single"
    unet = list_sites(tiny_unet(), kind="unet_cross")
    assert unet and all(n.endswith("attn2.processor") for n in unet)
    with pytest.raises(ValueError, match="unknown site kind"):
        list_sites(tiny_unet(), kind="cross")


class RowValueEdit(SiteProcessor):
    """Sets V of one row to V of another row, recording the calls it sees."""

    def __init__(self, dst: int, src: int, steps=None):
        super().__init__()
        self.dst, self.src, self.steps, self.seen = dst, src, steps, []

    def on_qkv(self, q, k, v, ctx):
        self.seen.append((ctx.site.name, ctx.call.step if ctx.call else None, tuple(v.shape)))
        if self.steps is None or (ctx.call is not None and ctx.call.step in self.steps):
            v = v.clone()
            v[self.dst] = v[self.src]
        return q, k, v


@pytest.mark.parametrize("case", ["sd3", "flux", "unet"])
@torch.no_grad()
def test_value_edit_changes_only_the_asked_rows(case):
    factory, inputs, kw_name = CASES[case]
    model, kw = factory(), inputs()
    ref = model(**kw).sample
    proc = RowValueEdit(dst=1, src=0)
    with install(model, {"*": proc}):
        out = model(**kw, **{kw_name: {"flowcore_ctx": CallContext(step=3)}}).sample
    assert torch.equal(out[0], ref[0]), "row 0 (the source) must be untouched"
    assert (out[1] - ref[1]).abs().max() > 1e-4, "row 1 must change"
    assert proc.seen and all(step == 3 for _, step, _ in proc.seen)


@torch.no_grad()
def test_hooks_fire_only_at_the_asked_sites_and_steps():
    model, kw = tiny_flux(), flux_inputs()
    ref = model(**kw).sample
    proc = RowValueEdit(dst=1, src=0, steps={5})
    with install(model, {"single_transformer_blocks.*": proc}) as handle:
        assert set(handle.processors) == {"single_transformer_blocks.0.attn.processor"}
        same = model(**kw, joint_attention_kwargs={"flowcore_ctx": CallContext(step=4)}).sample
        diff = model(**kw, joint_attention_kwargs={"flowcore_ctx": CallContext(step=5)}).sample
    assert torch.equal(same, ref)
    assert not torch.equal(diff[1], ref[1]) and torch.equal(diff[0], ref[0])
    assert {name for name, _, _ in proc.seen} == {"single_transformer_blocks.0.attn.processor"}


@torch.no_grad()
def test_sd3_layout_reaches_the_hook_and_attn2_sees_image_only():
    model, kw = tiny_sd3(), sd3_inputs()
    layouts = {}

    class Spy(SiteProcessor):
        def on_qkv(self, q, k, v, ctx):
            layouts[ctx.site.kind] = (ctx.layout, q.shape[1])
            return q, k, v

    given = TokenLayout.from_sd3((8, 8), 7)
    with install(model, {"*": Spy()}):
        model(**kw, joint_attention_kwargs={"flowcore_ctx": CallContext(layout=given)})
    joint, n_joint = layouts["sd3_joint"]
    attn2, n_attn2 = layouts["sd3_attn2"]
    assert joint == given and n_joint == 64 + 7
    assert attn2 == given.image_only() and n_attn2 == 64 and not attn2.has("text")


@torch.no_grad()
def test_operator_swap_through_attend():
    model, kw = tiny_sd3(), sd3_inputs()

    class Mean(SiteProcessor):
        def attend(self, q, k, v, ctx):  # uniform attention: the mean of V
            return v.mean(dim=1, keepdim=True).expand_as(v).flatten(2)

    ref = model(**kw).sample
    with install(model, {"sd3_joint": Mean()}):
        out = model(**kw, joint_attention_kwargs={"flowcore_ctx": CallContext()}).sample
    assert (out - ref).abs().max() > 1e-4


def test_install_errors_and_factories(caplog):
    model = tiny_sd3()
    with pytest.raises(KeyError, match="matches no attention site"):
        install(model, {"nonexistent.*": SiteProcessor()})
    made = []
    with install(model, {"sd3_attn2": lambda info: made.append(info) or SiteProcessor()}):
        assert [i.kind for i in made] == ["sd3_attn2"]
        # stock processors on the other sites accept (and ignore) flowcore_ctx without warnings
        with caplog.at_level(logging.WARNING):
            model(**sd3_inputs(), joint_attention_kwargs={"flowcore_ctx": CallContext()})
        assert "not expected" not in caplog.text


def test_foreign_processors_are_wrapped_to_accept_ctx():
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = tiny_unet()
    kw = unet_inputs()
    with torch.no_grad():
        ref = unet(**kw).sample
        with install(unet, {"unet_cross": AttnProcessor2_0()}):
            out = unet(**kw, cross_attention_kwargs={"flowcore_ctx": CallContext()}).sample
    assert torch.equal(out, ref)


@torch.no_grad()
def test_stacked_install_composes_on_qkv_and_keeps_the_operator():
    model, kw = tiny_sd3(), sd3_inputs()

    class Mean(SiteProcessor):  # a stand-in for another method's operator (e.g. a TTT layer)
        def attend(self, q, k, v, ctx):
            return v.mean(dim=1, keepdim=True).expand_as(v).flatten(2)

    ctx = {"joint_attention_kwargs": {"flowcore_ctx": CallContext(step=0)}}
    with install(model, {"sd3_joint": Mean()}):
        base = model(**kw, **ctx).sample
        edit = RowValueEdit(dst=1, src=0)
        with install(model, {"sd3_joint": edit}, stack=True) as handle:
            assert all(p is edit for p in handle.processors.values())
            assert all(isinstance(p, Mean) for n, p in model.attn_processors.items() if "attn2" not in n)
            stacked = model(**kw, **ctx).sample
        assert edit.seen  # the stacked on_qkv ran ...
        after = model(**kw, **ctx).sample
    assert torch.equal(stacked[0], base[0]) and not torch.equal(stacked[1], base[1])  # ... on row 1 only
    assert torch.equal(after, base)  # and is gone after remove()
