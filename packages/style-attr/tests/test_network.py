"""The attribute network itself: zero-init no-op (§7 test 1), row masking (2), gradients (3), m ≥ 2 (11),
save/load and base checks (14)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from style_attr import AttributeControlNet, AttributeSpec, BaseMismatchError, randomize_attribute_layers
from style_attr.network import CONFIG_NAME, LAYERS_NAME, LambdaAttention, attribute_networks

SPEC = AttributeSpec.for_family("outline")


# --- ControlNet configurations --------------------------------------------------------------------------------------
def _randomize(controlnet: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in ("controlnet_blocks", "controlnet_down_blocks", "controlnet_mid_block", "pos_embed_input"):
            module = getattr(controlnet, name, None)
            for layer in (module.modules() if module is not None else []):
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.2)
                    if layer.bias is not None:
                        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.2)
    return controlnet.eval()


def _unet_case():
    from flowcore.testing import tiny_controlnet, tiny_unet

    cn = tiny_controlnet(tiny_unet(block_out_channels=(32, 64)), seed=1)
    g = torch.Generator().manual_seed(0)
    kwargs = dict(sample=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10, 500]),
                  encoder_hidden_states=torch.randn(2, 8, 32, generator=g),
                  controlnet_cond=torch.rand(2, 3, 64, 64, generator=g), return_dict=False)
    return cn, kwargs


def _sd3_case(**cfg):
    from flowcore.testing import tiny_controlnet, tiny_sd3

    cn = tiny_controlnet(tiny_sd3(**cfg), seed=1, num_layers=1)
    g = torch.Generator().manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), controlnet_cond=torch.randn(2, 4, 8, 8, generator=g),
                  encoder_hidden_states=torch.randn(2, 8, 64, generator=g), pooled_projections=torch.randn(2, 64, generator=g),
                  timestep=torch.tensor([10.0, 700.0]), return_dict=False)
    return cn, kwargs


def _sd35_large_case():
    from diffusers import SD3ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        cn = SD3ControlNetModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=None, caption_projection_dim=32,
                                pooled_projection_dim=64, out_channels=4, pos_embed_max_size=16, use_pos_embed=False,
                                force_zeros_for_pooled_projection=False)
    _randomize(cn)
    g = torch.Generator().manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(2, 16, 32, generator=g), controlnet_cond=torch.randn(2, 4, 8, 8, generator=g),
                  pooled_projections=torch.randn(2, 64, generator=g), timestep=torch.tensor([10.0, 700.0]),
                  return_dict=False)
    return cn, kwargs


CASES = {
    "unet": _unet_case,
    "sd3": lambda: _sd3_case(dual_attention_layers=(), qk_norm=None),
    "sd35-large": _sd35_large_case,
    "dual-attention": lambda: _sd3_case(dual_attention_layers=(0,), qk_norm=None),
    "qk-norm": lambda: _sd3_case(dual_attention_layers=(), qk_norm="rms_norm"),
}


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flat(item)]


@pytest.mark.parametrize("case", list(CASES))
def test_attaching_changes_nothing_for_any_lambda(case):
    """Test 1: zero-initialised W_o/b_o leave every ControlNet output bit-identical, whatever λ."""
    controlnet, kwargs = CASES[case]()
    with torch.no_grad():
        before = _flat(controlnet(**kwargs))
        assert any(t.abs().max() > 0 for t in before), "the ControlNet outputs must be non-trivial"
        net = AttributeControlNet.attach(controlnet, SPEC, hidden_dim=16)
        assert len(net.sites) >= 1
        plain = _flat(controlnet(**kwargs))
        for lam in (0.0, 0.7, torch.tensor([[1.3], [-0.2]])):
            with net.tokens(lam):
                after = _flat(controlnet(**kwargs))
            assert all(torch.equal(a, b) for a, b in zip(before, after)), f"λ={lam} changed the output"
    assert all(torch.equal(a, b) for a, b in zip(before, plain))
    net.detach()
    assert not attribute_networks(controlnet)


@pytest.mark.parametrize("case", ["unet", "sd3", "sd35-large"])
def test_base_rows_of_a_mixed_call_match_a_stock_call(case):
    """Test 2: rows without tokens inside a 4-row call equal a stock 2-row call (≤ 1e-6); token rows change."""
    controlnet, kwargs = CASES[case]()
    net = randomize_attribute_layers(AttributeControlNet.attach(controlnet, SPEC, hidden_dim=16), seed=1)
    four = {k: (torch.cat([v, v]) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with torch.no_grad():
        stock = _flat(controlnet(**kwargs))
        with net.tokens(torch.tensor([[0.9], [0.2]]), rows=torch.tensor([2, 3])):
            mixed = _flat(controlnet(**four))
    for s, m in zip(stock, mixed):
        assert (m[:2] - s).abs().max() <= 1e-6
    assert max((m[2:] - s).abs().max() for s, m in zip(stock, mixed)) > 1e-4
    net.detach()


def test_gradients_reach_only_the_new_layers(unet_model, edges):
    """Test 3: step-1 gradients are non-zero only for W_o/b_o (exact zeros elsewhere), step 2 reaches all new
    parameters, and every base parameter is bit-identical after two optimiser steps."""
    from style_attr.training import AttributeObjective, TrainConfig

    model = unet_model
    base = {k: v.clone() for k, v in list(model.denoiser.state_dict().items()) +
            [(f"cn.{k}", v) for k, v in model.controlnet.state_dict().items()]}
    net = AttributeControlNet.attach(model.controlnet, SPEC, hidden_dim=16)
    net.freeze_base()
    model.denoiser.requires_grad_(False)
    cfg = TrainConfig(data="unused", output_dir="unused", beta=5.0, prompt_dropout=0.0)
    objective = AttributeObjective(model, net, cfg)
    g = torch.Generator().manual_seed(0)
    batch = {"target": torch.rand(2, 3, 64, 64, generator=g), "reference": torch.rand(2, 3, 64, 64, generator=g),
             "edges": edges.expand(2, -1, -1, -1), "lam": torch.tensor([[0.8], [0.3]]), "captions": ["a", "b"]}
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    trainable = {n: p for n, p in net.named_parameters()}
    assert trainable and all(p.requires_grad for p in trainable.values())
    grads = []
    for step in range(2):
        optimizer.zero_grad()
        objective(batch, step, [0, 1]).total.backward()
        grads.append({n: p.grad.clone() for n, p in trainable.items()})
        optimizer.step()
    first, second = grads
    for name, grad in first.items():
        if ".to_out." in name:
            assert grad.abs().sum() > 0, name
        else:
            assert torch.count_nonzero(grad) == 0, f"{name} got a step-1 gradient"
    assert all(grad.abs().sum() > 0 for grad in second.values()), [n for n, g in second.items() if g.abs().sum() == 0]
    net.detach()
    after = dict(list(model.denoiser.state_dict().items()) +
                 [(f"cn.{k}", v) for k, v in model.controlnet.state_dict().items()])
    assert set(after) == set(base)
    assert all(torch.equal(after[k], base[k]) for k in base)
    for p in model.denoiser.parameters():
        assert p.grad is None


@pytest.mark.parametrize(("m", "constant"), [(1, True), (4, False)])
def test_single_token_attention_is_spatially_constant(m, constant):
    """Test 11: with one key (m=1, P=1) the λ-attention output is the same at every position; m=4 varies."""
    from style_attr.network import AttributeEmbedder

    torch.manual_seed(0)
    emb = AttributeEmbedder(1, 16, tokens_per_param=m, hidden_dim=16)
    layer = LambdaAttention(32, 16, heads=2)
    nn.init.normal_(layer.to_out.weight, std=0.5)
    tokens = emb(torch.tensor([[0.6]]))
    hidden, out = torch.randn(1, 64, 32), torch.randn(1, 64, 32)
    with torch.no_grad():
        delta = layer(hidden, out, tokens)
    spread = float(delta.std(dim=1).max())
    assert (spread < 1e-6) if constant else (spread > 1e-4)


def test_save_load_round_trip_and_base_checks(tmp_path, unet_model, edges):
    """Test 14: save/load gives identical outputs; a mismatched base (hash or width) raises; the config holds every
    §5.4 field."""
    from flowcore.testing import tiny_controlnet, tiny_unet

    controlnet = unet_model.controlnet
    net = randomize_attribute_layers(AttributeControlNet.attach(controlnet, SPEC, hidden_dim=16, name="ink"), seed=2)
    net.training_summary = {"beta": 5.0, "steps": 10}
    g = torch.Generator().manual_seed(0)
    kwargs = dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=torch.tensor([300]),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=g), controlnet_cond=edges, return_dict=False)
    with torch.no_grad(), net.tokens(0.8):
        want = _flat(controlnet(**kwargs))
    net.save_pretrained(tmp_path / "ink")
    cfg = json.loads((tmp_path / "ink" / CONFIG_NAME).read_text())
    for key in ("format", "format_version", "name", "spec", "base", "sites", "token_dim", "tokens_per_param",
                "num_freqs", "hidden_dim", "training", "version"):
        assert key in cfg, key
    assert {"id", "revision", "class", "config_sha256"} <= set(cfg["base"])
    assert cfg["format"] == "style-attr/attribute-net" and cfg["training"]["beta"] == 5.0
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "ink" / LAYERS_NAME)))
    assert any(k.startswith("embedder.") for k in keys)
    assert all(k.startswith("embedder.") or ".lam." in k for k in keys)
    net.detach()
    loaded = AttributeControlNet.from_pretrained(tmp_path / "ink", controlnet)
    with torch.no_grad(), loaded.tokens(0.8):
        got = _flat(controlnet(**kwargs))
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    loaded.detach()
    other_seed = tiny_controlnet(tiny_unet(block_out_channels=(32, 64), norm_num_groups=16), seed=1)
    with pytest.raises(BaseMismatchError, match="config hash"):
        AttributeControlNet.from_pretrained(tmp_path / "ink", other_seed)
    wider = tiny_controlnet(tiny_unet(block_out_channels=(64, 64)), seed=1)
    with pytest.raises(BaseMismatchError, match="wide"):
        AttributeControlNet.from_pretrained(tmp_path / "ink", wider, strict_base=False)
    with pytest.raises(FileNotFoundError, match="attribute network"):
        AttributeControlNet.from_pretrained(tmp_path / "missing", controlnet)


def test_two_networks_share_one_base_and_names_are_unique(unet_model):
    from style_attr.testing import attach_random

    a = attach_random(unet_model.controlnet, name="a")
    with pytest.raises(ValueError, match="already attached"):
        AttributeControlNet.attach(unet_model.controlnet, SPEC, name="a")
    b = attach_random(unet_model.controlnet, "contrast", name="b", seed=3)
    assert set(attribute_networks(unet_model.controlnet)) == {"a", "b"}
    a.detach()
    assert set(attribute_networks(unet_model.controlnet)) == {"b"}
    b.detach()
    assert not any(type(p).__name__ == "AttributeSiteProcessor" for p in unet_model.controlnet.attn_processors.values())


def test_lambda_range_is_checked(unet_model):
    net = AttributeControlNet.attach(unet_model.controlnet, SPEC, hidden_dim=16)
    with pytest.raises(ValueError, match="allowed range"):
        net.encode(2.5)
    with pytest.warns(UserWarning, match="extrapolates"):
        net.encode(1.5)
    with pytest.raises(ValueError, match="controls 1 parameter"):
        net.encode(torch.tensor([0.1, 0.2]))
