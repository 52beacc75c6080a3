"""Masks: blending algebra, preprocessing, user-mask errors, the attention mask (T9, T20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from directedit import AttentionMask, DirectEditConfig, UserMask, edit, invert, prepare_mask
from directedit.masks import changed_words, pixel_mask, token_positions
from flowcore.attention import AttnContext, CallContext, SiteInfo
from flowcore.layout import TokenLayout

N = 8


def _z(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _edit(model, z0, mask, cfg=None):
    cfg = cfg or DirectEditConfig(num_steps=N, source_guidance=1.5, state_dtype=torch.float64)
    cache = invert(model, z0, model.encode_prompt(["a cat on a sofa"]), config=cfg)
    return edit(model, cache, model.encode_prompt(["a dog on a bed"]), config=cfg, mask=mask), cache


def test_binary_mask_keeps_the_unmasked_latents_bitwise(sd3_factory):
    """T9: where M = 0 the edit equals z0 bitwise; M ≡ 1 equals the no-mask run; M ≡ 0 gives the
    reconstruction (with a warning); SD3 blend masks are (1, 1, H/8, W/8)."""
    model = sd3_factory()
    z0 = _z((1, 4, 8, 8))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:40, 8:32] = 1
    res, _ = _edit(model, z0, UserMask(mask, dilation_px=0))
    assert res.mask.shape == (1, 1, 8, 8)
    keep = (res.mask == 0).expand_as(z0)
    assert keep.any() and (res.mask == 1).any()
    assert torch.equal(res.edited[keep], z0[keep]) and not torch.equal(res.edited, z0)
    plain, _ = _edit(model, z0, None)
    ones, _ = _edit(model, z0, torch.ones(1, 1, 64, 64))
    assert torch.equal(ones.edited, plain.edited)
    with pytest.warns(UserWarning, match="empty"):
        zeros, _ = _edit(model, z0, torch.zeros(1, 1, 64, 64))
    assert torch.equal(zeros.edited, zeros.reconstruction) and torch.equal(zeros.edited, z0)


def test_flux_blend_mask_is_token_shaped(flux_factory):
    model = flux_factory()
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :16, :16] = 1
    blend = prepare_mask(mask, model, (64, 64))
    assert blend.shape == (1, 16, 1) and blend[0, 0, 0] == 1 and blend.sum() == 1


def test_sd3_pixel_dilates_to_7x7_and_padding_is_zero(sd3_factory, flux_factory):
    """T9: SD3's default dilation is 3 px (7×7); masks are padded with 0 (never editable)."""
    model = sd3_factory()
    one = torch.zeros(1, 1, 64, 64)
    one[..., 30, 30] = 1
    pix = pixel_mask(one, model, (64, 64))
    assert int(pix.sum()) == 49 and bool(pix[..., 27:34, 27:34].all())
    full = torch.ones(1, 1, 50, 60)  # not a multiple of 16: padded to 64×64
    pix = pixel_mask(full, flux_factory(), (50, 60))
    assert pix.shape == (1, 1, 64, 64) and int(pix.sum()) == 50 * 60 and pix[..., 50:, :].sum() == 0


def test_user_mask_errors_are_clear(sd3_factory, tmp_path):
    model = sd3_factory()
    with pytest.raises(FileNotFoundError, match="not found"):
        prepare_mask(tmp_path / "missing.png", model, (64, 64))
    colour = tmp_path / "colour.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")).save(colour)
    with pytest.raises(ValueError, match="colour image"):
        prepare_mask(colour, model, (64, 64))
    cmyk = Image.new("CMYK", (64, 64))
    with pytest.raises(ValueError, match="mode 'CMYK'"):
        prepare_mask(cmyk, model, (64, 64))
    with pytest.raises(ValueError, match="aspect ratios differ"):
        prepare_mask(torch.ones(1, 1, 32, 64), model, (64, 64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_mask(torch.full((1, 1, 64, 64), 2.0), model, (64, 64))
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((64, 64), 255, dtype="uint8")).save(grey)
    assert prepare_mask(grey, model, (64, 64)).min() == 1.0
    assert prepare_mask(grey, model, (64, 64), invert=True).max() == 0.0


def test_attention_mask_word_selection_and_token_positions(sd3_factory):
    """T20: the token diff selects the replaced / deleted source words at their token positions."""
    model = sd3_factory()
    assert changed_words("a red circle on a blue background", "a green circle on a blue background") == ["red"]
    assert changed_words("a cat on a sofa", "a cat on a sofa") == []
    assert changed_words("a big cat on a sofa", "a cat on a bed") == ["big", "sofa"]
    assert token_positions(model, "a big cat on a sofa", ["big", "sofa"]) == [2, 6]  # [BOS] a big cat on a sofa
    probe = AttentionMask(source_prompt="a big cat on a sofa", target_prompt="a cat on a bed")
    assert probe.select(model, None) == [2, 6]


def test_attention_mask_with_toy_tokenizer():
    from flowcore.toy.bundle import build

    model = build("toy-sd3", random_init=True, preset="ci").adapter()
    cols = AttentionMask(source_prompt="a red circle on a blue background",
                         target_prompt="a green circle on a blue background").select(model, None)
    assert cols == [2]  # [BOS] a red ...


def test_attention_mask_region_from_hand_set_qk():
    """T20: image queries of one region that attend to the selected text column give that region (thresholded,
    dilated by one cell, nearest-resized to the blend grid)."""
    probe = AttentionMask(words=["x"])
    probe.columns = [1]
    layout = TokenLayout.from_sd3((8, 8), 3)  # [image 64, text 3]
    heads, d = 2, 4
    q = torch.zeros(2, 67, heads, d)
    k = torch.zeros(2, 67, heads, d)
    k[:, 64 + 1, :, 0] = 10.0  # the selected text key
    region = [9, 10, 17, 18]  # rows 1-2, cols 1-2 of the 8×8 token grid
    q[1, region, :, 0] = 10.0  # only batch row 1 (the probed cond row) has the pattern
    ctx = AttnContext(site=SiteInfo("s", "sd3_joint", heads, d), call=CallContext(), layout=layout, rope=None,
                      attn_bias=None)
    for _ in range(3):
        probe.observe(q, k, ctx, torch.tensor([1]))
    amap = probe.attention_map()
    assert amap.shape == (1, 1, 8, 8) and probe.count == 3
    core = torch.zeros(1, 1, 8, 8)
    core[..., 1:3, 1:3] = 1
    assert torch.equal((amap > 0.5 * (amap.max() + amap.min())).float(), core)
    blend = AttentionMask.mask_from_map(amap, _Fake(), (128, 128))  # blend grid 16×16 (latent = 2× tokens)
    expected = torch.zeros(1, 1, 16, 16)
    expected[..., 0:8, 0:8] = 1  # 2×2 cells dilated to 4×4 cells, each cell 2×2 latents
    assert torch.equal(blend, expected)


class _Fake:
    """A stand-in SD3-like model for the blend grid (factor 8, pad multiple 16)."""

    pad_multiple, vae_scale_factor, is_toy = 16, 8, False


def test_attention_mask_without_selection_gives_none_and_warns(sd3_factory):
    """T20: identical prompts select nothing: a warning, and no mask (the edit runs unmasked)."""
    model = sd3_factory()
    z0 = _z((1, 4, 8, 8))
    probe = AttentionMask(source_prompt="a cat on a sofa", target_prompt="a cat on a sofa")
    cfg = DirectEditConfig(num_steps=N, state_dtype=torch.float64)
    with pytest.warns(UserWarning, match="no mask"):
        cache = invert(model, z0, model.encode_prompt(["a cat on a sofa"]), config=cfg, mask_probe=probe)
    res = edit(model, cache, model.encode_prompt(["a cat on a sofa"]), config=cfg, mask="attention")
    assert res.mask is None and cache.attention_map is None


def test_attention_mask_end_to_end(sd3_factory):
    model = sd3_factory()
    z0 = _z((1, 4, 8, 8))
    probe = AttentionMask(source_prompt="a cat on a sofa", target_prompt="a dog on a sofa")
    cfg = DirectEditConfig(num_steps=N, state_dtype=torch.float64)
    cache = invert(model, z0, model.encode_prompt(["a cat on a sofa"]), config=cfg, mask_probe=probe)
    assert cache.attention_map is not None and cache.attention_map.shape == (1, 1, 4, 4)
    res = edit(model, cache, model.encode_prompt(["a dog on a sofa"]), config=cfg, mask="attention")
    assert res.mask.shape == (1, 1, 8, 8) and set(res.mask.unique().tolist()) <= {0.0, 1.0}
    keep = (res.mask == 0).expand_as(z0)
    assert torch.equal(res.edited[keep], z0[keep])
    with pytest.raises(ValueError, match="no attention map"):
        edit(model, invert(model, z0, model.encode_prompt(["a cat on a sofa"]), config=cfg),
             model.encode_prompt(["a dog on a sofa"]), config=cfg, mask="attention")
