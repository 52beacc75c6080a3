"""The toy model architectures (toyworld.md §7, §8.1–8.4): exact configs, parameter counts, the text tower."""

from __future__ import annotations

import pytest
import torch

from flowcore.toy.constants import PAD_ID
from flowcore.toy.models import (
    MODEL_CONFIGS,
    count_parameters,
    make_controlnet,
    make_flux,
    make_image_encoder,
    make_ip_adapter_state_dict,
    make_sd3,
    make_text_encoder,
    make_unet,
    model_config,
    seeded_init,
)
from flowcore.toy.tokenizer import ToyTokenizer


def test_denoiser_parameter_counts_match_the_spec():
    """§8.2–8.4 [measured] numbers, exactly."""
    unet = make_unet()
    assert count_parameters(make_sd3()) == 2_411_724
    assert count_parameters(make_flux()) == 2_361_100
    assert count_parameters(unet) == 3_226_188
    assert count_parameters(make_controlnet(unet)) == 1_583_472


def test_tower_and_ip_adapter_sizes():
    """≈0.62M text tower, ≈0.86M image tower, ≈0.17M IP-Adapter (§7, §8.1, §8.4)."""
    assert abs(count_parameters(make_text_encoder()) - 620_000) < 10_000
    assert abs(count_parameters(make_image_encoder()) - 860_000) < 10_000
    state = make_ip_adapter_state_dict(make_unet())
    assert abs(sum(v.numel() for v in state.values()) - 170_000) < 5_000
    # image projection + to_k_ip/to_v_ip at the 7 cross-attention sites, original key ids 1, 3, ..., 13
    ids = sorted({int(k.split(".")[1]) for k in state if k.startswith("ip_adapter.")})
    assert ids == [1, 3, 5, 7, 9, 11, 13]
    assert {k for k in state if k.startswith("image_proj.")} == {
        "image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight", "image_proj.norm.bias"}


def test_unet_has_the_seven_cross_attention_sites():
    names = [n for n in make_unet().attn_processors if n.endswith("attn2.processor")]
    sites = sorted({n.split(".attentions")[0] if "attentions" in n else n.split(".")[0] for n in names})
    assert len(names) == 7
    assert sites == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.1", "up_blocks.2"]


def test_configs_are_the_spec_values_and_copies():
    sd3 = model_config("sd3")
    assert sd3["patch_size"] == 2 and sd3["num_layers"] == 4 and sd3["dual_attention_layers"] == (0,)
    assert sd3["qk_norm"] == "rms_norm" and sd3["pos_embed_max_size"] == 16
    flux = model_config("flux")
    assert flux["axes_dims_rope"] == (8, 12, 12) and flux["guidance_embeds"] is True
    assert model_config("unet")["attention_head_dim"] == 4
    sd3["num_layers"] = 99
    assert MODEL_CONFIGS["full"]["sd3"]["num_layers"] == 4
    with pytest.raises(ValueError, match="unknown preset"):
        model_config("sd3", "huge")
    # every conditioning width is 128 in both presets, so any toy-clip fits any denoiser
    for preset in ("full", "ci"):
        assert model_config("sd3", preset)["joint_attention_dim"] == 128
        assert model_config("flux", preset)["joint_attention_dim"] == 128
        assert model_config("unet", preset)["cross_attention_dim"] == 128


def test_seeded_init_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    with seeded_init(3):
        a = make_text_encoder("ci")
    with seeded_init(3):
        b = make_text_encoder("ci")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _encoder():
    with seeded_init(0):
        return make_text_encoder().eval()


def test_text_encoder_outputs_and_pad_positions_are_computed():
    encoder = _encoder()
    tokens = ToyTokenizer()(["a red circle", ""], padding="max_length", return_tensors="pt")
    out = encoder(tokens["input_ids"], attention_mask=tokens["attention_mask"])
    assert out.last_hidden_state.shape == (2, 32, 128) and out.text_embeds.shape == (2, 128)
    pad_rows = out.last_hidden_state[0, 5:]  # "[BOS] a red circle [EOS]" then pads
    assert pad_rows.abs().sum(-1).min() > 0  # computed, not zeroed
    assert encoder.mlm_logits(out.last_hidden_state).shape == (2, 32, 64)


def test_text_encoder_ignores_padded_keys_and_pools_eos():
    """Changing the ids at masked positions must not change any unmasked output (key-padding mask), and the
    pooled vector is the projection of the [EOS] position."""
    encoder = _encoder()
    tokens = ToyTokenizer()(["a large red circle in the top left"], return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    length = int(mask.sum())
    scrambled = ids.clone()
    scrambled[0, length:] = torch.arange(10, 10 + 32 - length)
    with torch.no_grad():
        a = encoder(ids, attention_mask=mask)
        b = encoder(scrambled, attention_mask=mask)
    assert torch.allclose(a.last_hidden_state[0, :length], b.last_hidden_state[0, :length], atol=1e-6)
    assert torch.allclose(a.text_embeds, b.text_embeds, atol=1e-6)
    assert torch.allclose(a.text_embeds[0], encoder.text_projection(a.last_hidden_state[0, length - 1]), atol=1e-6)
    # the default mask is derived from [PAD]
    assert torch.equal(encoder(ids).text_embeds, a.text_embeds)
    assert (ids[0, length:] == PAD_ID).all()


def test_image_encoder_shapes_and_resize():
    with seeded_init(0):
        encoder = make_image_encoder().eval()
    with torch.no_grad():
        out = encoder(torch.rand(2, 3, 32, 32))
        out64 = encoder(torch.rand(2, 3, 64, 64))
    assert out.image_embeds.shape == (2, 128) and out.tokens.shape == (2, 16, 128)
    assert out64.image_embeds.shape == (2, 128)
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        encoder(torch.rand(2, 1, 32, 32))
