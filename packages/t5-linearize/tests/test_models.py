"""Spec §7 tests 10–13, 15, 17 (model part) and 20, plus the bad-input errors of the issue."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from t5lin_helpers import LayoutSpy, flux_inputs, make_flux, make_sd3, sd3_inputs

from flowcore.layout import TokenLayout
from t5_linearize import (
    LinearizeConfig,
    T5FluxTransformer2DModel,
    T5SD3Transformer2DModel,
    count_new_parameters,
    expected_new_parameters,
    linearize,
    param_groups,
)
from t5_linearize.layouts import MixedTokenLayout, flux_layout
from t5_linearize.modules import new_parameter_count
from t5_linearize.processors import TTTFluxAttnProcessor, TTTJointAttnProcessor


def _convert(base, **changes):
    return linearize(base, LinearizeConfig(**changes), generator=torch.Generator().manual_seed(0))


# --- test 10 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_conversion_inherits_every_tensor_and_counts_new_parameters(family):
    base = make_sd3() if family == "sd3" else make_flux()
    source = {k: v.clone() for k, v in base.state_dict().items()}
    model = _convert(base)
    state = model.state_dict()
    for name, tensor in source.items():
        assert torch.equal(state[name], tensor), name
    new = {k for k in state if ".processor.ttt." in k}
    assert set(state) - set(source) == new
    assert count_new_parameters(model) == expected_new_parameters(model) > 0
    heads, dim = 4, 32
    sites = 3 if family == "sd3" else 2  # SD3: 2 joint + 1 attn2; FLUX: 1 double + 1 single
    assert count_new_parameters(model) == sites * (2 * heads * dim * dim + 2 * (9 * heads * dim + heads * dim))


def test_new_parameter_formula_matches_the_spec_numbers():
    config = LinearizeConfig()
    assert new_parameter_count(config, 24, 64) == 227_328  # SD3.5-Medium, per site (× 37 = 8.41 M)
    assert new_parameter_count(config, 38, 64) == 359_936  # SD3.5-Large
    assert new_parameter_count(config, 24, 128) == 847_872  # FLUX.1
    assert new_parameter_count(LinearizeConfig(preset="classification"), 2, 8) == 3 * 2 * 64 + 2 * (9 * 16 + 16)
    assert new_parameter_count(LinearizeConfig(qk_affine=True), 2, 8) == 2 * 2 * 64 + 2 * (9 * 16 + 16) + 4 * 16
    assert new_parameter_count(LinearizeConfig(operator="softmax"), 2, 8) == 0


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_softmax_operator_reproduces_the_stock_model_bit_exactly(family):
    base = make_sd3() if family == "sd3" else make_flux()
    inputs = sd3_inputs() if family == "sd3" else flux_inputs(batch=2, reference=(3, 5))
    with torch.no_grad():
        stock = base(**inputs)[0]
        control = _convert(base, operator="softmax")(**inputs)[0]
    assert torch.equal(control, stock)


# --- test 11 --------------------------------------------------------------------------------------------------
def test_last_sd3_block_reads_image_rows_only():
    model = _convert(make_sd3())
    last = model.transformer_blocks[-1]
    assert last.context_pre_only
    proc = model.attn_processors["transformer_blocks.1.attn.processor"]
    g = torch.Generator().manual_seed(1)
    hidden, text = torch.randn(2, 16, 128, generator=g), torch.randn(2, 7, 128, generator=g)
    layout = TokenLayout.from_sd3((4, 4), 7)
    with torch.no_grad():
        img, txt = last.attn(hidden, text, ttt_layout=layout)
    assert txt is None
    # the operator with all rows read out gives the same image rows
    q, k, v = (torch.randn(2, 23, 4, 32, generator=g) for _ in range(3))
    with torch.no_grad():
        full = proc.ttt(q, k, v, layout.kernel_segments())
        image = proc.ttt(q, k, v, layout.kernel_segments(), out_rows=(0, 16))
    assert torch.equal(image, full[:, :16])
    assert model.frozen == ["transformer_blocks.1.attn.add_q_proj", "transformer_blocks.1.attn.norm_added_q"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(tuple(model.frozen)))
    del img


# --- tests 12 and 13 ---------------------------------------------------------------------------------------------
def test_attn2_sites_exist_only_for_dual_blocks_and_see_image_rows():
    model = _convert(make_sd3())
    sites = set(model.ttt_processors())
    assert sites == {"transformer_blocks.0.attn.processor", "transformer_blocks.0.attn2.processor",
                     "transformer_blocks.1.attn.processor"}
    spy = LayoutSpy(model)
    with torch.no_grad():
        model(**sd3_inputs(latent=(8, 12)))
    attn2 = spy.seen["transformer_blocks.0.attn2.processor"]
    assert [(s.role, s.grid) for s in attn2.segments] == [("target", (4, 6))]
    joint = spy.seen["transformer_blocks.0.attn.processor"]
    assert [(s.role, s.length, s.grid) for s in joint.segments] == [("target", 24, (4, 6)), ("text", 7, None)]


def test_flux_layout_from_ids_with_a_kontext_reference():
    inputs = flux_inputs(grid=(4, 6), n_text=5, reference=(3, 5))
    layout = flux_layout(inputs["txt_ids"], inputs["img_ids"])
    assert [(s.role, s.start, s.length, s.grid) for s in layout.segments] == [
        ("text", 0, 5, None), ("target", 5, 24, (4, 6)), ("reference", 29, 15, (3, 5))]
    model = _convert(make_flux())
    spy = LayoutSpy(model)
    with torch.no_grad():
        model(**inputs)
    assert spy.seen["single_transformer_blocks.0.attn.processor"] == layout
    # single-block text rows get no conv: the prepared q̃ equals q on the text rows
    proc = model.attn_processors["single_transformer_blocks.0.attn.processor"]
    torch.nn.init.normal_(proc.ttt.q_conv.weight)
    q = torch.randn(1, 44, 4, 32)
    qt, _ = proc.ttt.prepare(q, q, layout.kernel_segments())
    assert torch.equal(qt[:, :5], q[:, :5]) and not torch.equal(qt[:, 5:], q[:, 5:])


def test_flux_ids_that_are_not_a_grid_disable_the_conv_with_a_warning():
    inputs = flux_inputs(grid=(4, 6), n_text=5)
    ids = inputs["img_ids"].clone()
    ids[1] = ids[0]  # two tokens on one cell, one cell uncovered: neither a grid nor a tiling
    with pytest.warns(RuntimeWarning, match="not a full row-major grid"):
        layout = flux_layout(inputs["txt_ids"], ids)
    assert layout.segments[1].grid is None and layout.kernel_segments() == ()
    assert getattr(layout, "scattered", ()) == ()
    # a permuted grid is no row-major grid but still a tiling: the conv stays, on the permuted canvas
    swapped = inputs["img_ids"].clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    (seg,) = flux_layout(inputs["txt_ids"], swapped).scattered
    assert seg.canvas == (4, 6) and seg.cover[:3].tolist() == [1, 0, 2]



def test_flux_ids_on_a_strided_half_integer_grid_keep_their_grid():
    # specedit's coarse-only calls: a 3×4 coarse grid at positions (2I + ½, 2J + ½) of the fine frame
    inputs = flux_inputs(grid=(3, 4), n_text=5)
    ids = inputs["img_ids"].clone()
    ids[:, 1:] = ids[:, 1:] * 2 + 0.5
    layout = flux_layout(inputs["txt_ids"], ids)
    assert [(s.role, s.length, s.grid) for s in layout.segments] == [("text", 5, None), ("target", 12, (3, 4))]
    # overlapping fine and coarse tokens tile nothing: the conv goes, with the warning
    overlap = torch.cat([ids[:4], inputs["img_ids"][:8]])
    with pytest.warns(RuntimeWarning, match="not a full row-major grid"):
        assert flux_layout(inputs["txt_ids"], overlap).segments[1].grid is None


def test_flux_ids_of_a_mixed_resolution_tiling_keep_the_conv_on_its_canvas():
    # specedit's mixed call on a 4×4 fine grid: fine tokens of the right half, then 2 coarse tokens (2I+½, 2J+½)
    inputs = flux_inputs(grid=(4, 4), n_text=5)
    img = inputs["img_ids"]
    fine = img[(img[:, 2] >= 2)]
    coarse = torch.tensor([[0.0, 0.5, 0.5], [0.0, 2.5, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layout = flux_layout(inputs["txt_ids"], torch.cat([fine, coarse]))
    assert isinstance(layout, MixedTokenLayout) and layout.segments[1].grid is None
    (seg,) = layout.scattered
    assert (seg.start, seg.length, seg.canvas) == (5, 10, (4, 4))
    expected = torch.tensor([8, 8, 0, 1, 8, 8, 2, 3, 9, 9, 4, 5, 9, 9, 6, 7])
    assert torch.equal(seg.cover, expected)
    # and the TTT module uses it: its q̃ rows differ from a run where the conv is dropped for the segment
    model = _convert(make_flux())
    proc = model.attn_processors["single_transformer_blocks.0.attn.processor"]
    torch.nn.init.normal_(proc.ttt.q_conv.weight)
    q = torch.randn(1, 15, 4, 32)
    with_conv, _ = proc.ttt.prepare(q, q, layout.kernel_segments(), layout.scattered)
    without, _ = proc.ttt.prepare(q, q, layout.kernel_segments())
    assert torch.equal(with_conv[:, :5], without[:, :5]) and not torch.allclose(with_conv[:, 5:], without[:, 5:])

# --- test 15 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_one_training_step_reaches_every_parameter(family):
    model = _convert(make_sd3() if family == "sd3" else make_flux(), conv_init="default")
    model.train()
    inputs = sd3_inputs() if family == "sd3" else flux_inputs(batch=2, reference=(2, 3))
    out = model(**inputs)[0]
    (out * torch.randn_like(out)).mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any(".processor.ttt." in n for n, _ in trainable)
    missing = [n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    groups = {g["name"]: g for g in param_groups(model, 1e-4, new_lr_mult=10)}
    assert set(groups) == {"inherited", "fast_weights", "locality"}
    assert groups["fast_weights"]["lr"] == pytest.approx(1e-3) and groups["inherited"]["lr"] == 1e-4
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)


# --- test 17 (model) ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_save_and_load_round_trip(tmp_path, family):
    cls = T5SD3Transformer2DModel if family == "sd3" else T5FluxTransformer2DModel
    model = _convert(make_sd3() if family == "sd3" else make_flux(), preset="dit5_mixed", key_norm_stats="per_segment")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == cls.__name__ and config["ttt_config"]["qk_affine"] is True
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.linearize_config == model.linearize_config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    inputs = sd3_inputs() if family == "sd3" else flux_inputs(batch=2)
    with torch.no_grad():
        assert torch.equal(model(**inputs)[0], loaded(**inputs)[0])
    assert cls.from_config(model.config).linearize_config == model.linearize_config


# --- test 20 --------------------------------------------------------------------------------------------------
def test_guards_against_dropping_the_ttt_processors():
    model = _convert(make_sd3())
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    with pytest.raises(RuntimeError, match="drop their learned parameters"):
        model.set_attn_processor(JointAttnProcessor2_0())
    with pytest.raises(RuntimeError, match="force=True"):
        model.set_default_attn_processor()
    with pytest.raises(RuntimeError, match="fuse_qkv_projections"):
        model.fuse_qkv_projections()
    # installing processors on other sites only is allowed (flowcore.install keeps the TTT ones)
    model.set_attn_processor(dict(model.attn_processors))
    model.set_attn_processor(JointAttnProcessor2_0(), force=True)
    assert model.ttt_processors() == {}


def test_ttt_layout_is_a_named_keyword_that_reaches_the_processor():
    model = _convert(make_sd3())
    proc = model.attn_processors["transformer_blocks.0.attn.processor"]
    assert isinstance(proc, TTTJointAttnProcessor)
    import inspect

    assert {"ttt_layout", "ttt_backend", "flowcore_ctx"} <= set(inspect.signature(proc.__call__).parameters)
    wrong = TokenLayout.from_sd3((3, 3), 7)  # 9 image rows, the input has 16
    with pytest.raises(ValueError, match="covers 16 rows"):
        model(**sd3_inputs(), joint_attention_kwargs={"ttt_layout": wrong})
    flux = _convert(make_flux())
    assert isinstance(flux.attn_processors["transformer_blocks.0.attn.processor"], TTTFluxAttnProcessor)


# --- bad input ------------------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(tmp_path):
    from flowcore.testing import tiny_unet

    with pytest.raises(TypeError, match="cannot linearize a UNet2DConditionModel"):
        linearize(tiny_unet())
    model = _convert(make_sd3())
    with pytest.raises(ValueError, match="already linearized"):
        linearize(model)
    with pytest.raises(ValueError, match="matches no attention site"):
        _convert(make_sd3(), sites=("nonexistent.*",))
    with pytest.raises(ValueError, match="backend='triton'"):
        LinearizeConfig(inner="swiglu3", backend="triton")
    with pytest.raises(ValueError, match="local_window"):
        LinearizeConfig(local_window=4)
    with pytest.raises(ValueError, match="unknown LinearizeConfig keys"):
        LinearizeConfig.from_dict({"inner": "mlp2", "typo": 1})
    # a grid that does not match the token count
    layout = TokenLayout.from_sd3((4, 5), 7)
    with pytest.raises(ValueError, match="grid"):
        model(**sd3_inputs(), joint_attention_kwargs={"ttt_layout": layout})
    # linearized weights into a mismatched base
    from t5_linearize.models import check_same_base

    with pytest.raises(ValueError, match="num_layers"):
        check_same_base(model, make_sd3(num_layers=3), "the base")
    model.save_pretrained(tmp_path / "t5")
    make_sd3().save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="unconverted transformer"):
        T5SD3Transformer2DModel.from_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a T5FluxTransformer2DModel"):
        T5FluxTransformer2DModel.from_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="is a file; pass the folder"):
        T5SD3Transformer2DModel.from_pretrained(tmp_path / "t5" / "config.json")


def test_site_selection_keeps_softmax_elsewhere():
    base = make_sd3()
    model = _convert(base, sites=("sd3_joint",), exclude_sites=("transformer_blocks.1.*",))
    assert set(model.ttt_processors()) == {"transformer_blocks.0.attn.processor"}
    assert count_new_parameters(model) == expected_new_parameters(model) == new_parameter_count(
        model.linearize_config, 4, 32)
