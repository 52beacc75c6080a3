"""Proportional attention: a key with bias ``log 4`` weighs exactly like four copies of itself.

Checked at the FLUX single-stream and Qwen joint attention sites through flowcore's site machinery, with Qwen's
text-padding mask present (the padded key must stay masked when the bias is added).
"""

from __future__ import annotations

import math

import torch

from flowcore.attention import install
from specedit.processor import SpecEditProcessor


def _flux_rope(n: int, head_dim: int = 32):
    from diffusers.models.embeddings import FluxPosEmbed

    ids = torch.zeros(n, 3)
    ids[:, 1] = torch.arange(n, dtype=torch.float32) * 0.5
    return ids, FluxPosEmbed(theta=10000, axes_dim=[8, 12, 12])


def test_bias_log4_equals_four_copies_at_a_flux_single_site():
    from _specedit_fakes import tiny_kontext_transformer

    model = tiny_kontext_transformer()
    proc = SpecEditProcessor()
    install(model, {"flux_single": proc})
    attn = model.single_transformer_blocks[0].attn
    g = torch.Generator().manual_seed(0)
    n, j = 9, 4
    x = torch.randn(1, n, 128, generator=g)
    ids, rope = _flux_rope(n)
    dup_idx = torch.cat([torch.arange(n), torch.full((3,), j)])
    with torch.no_grad():
        copies = proc(attn, x[:, dup_idx], image_rotary_emb=rope(ids[dup_idx]))
        bias = torch.zeros(n)
        bias[j] = math.log(4.0)
        proc.key_bias = bias
        biased = proc(attn, x, image_rotary_emb=rope(ids))
        proc.key_bias = None
        plain = proc(attn, x, image_rotary_emb=rope(ids))
    assert (copies[:, :n] - biased).abs().max() <= 1e-5
    assert (plain - biased).abs().max() > 1e-4


def test_bias_combines_with_qwen_text_padding_mask():
    from flowcore.testing import tiny_qwen_image_edit

    model = tiny_qwen_image_edit(num_attention_heads=2, attention_head_dim=32, axes_dims_rope=(8, 12, 12))
    proc = SpecEditProcessor()
    install(model, {"qwen_joint": proc})
    attn = model.transformer_blocks[0].attn
    g = torch.Generator().manual_seed(1)
    n_txt, n_img, j = 4, 6, 2
    txt = torch.randn(1, n_txt, 64, generator=g)
    img = torch.randn(1, n_img, 64, generator=g)
    txt_mask = torch.tensor([[True, True, True, False]])
    dup = torch.cat([torch.arange(n_img), torch.full((3,), j)])
    from specedit.rope_qwen import axis_frequencies

    def freqs(rows):
        pos = torch.zeros(rows.numel(), 3)
        pos[:, 1] = rows.float()
        txt_pos = 10 + torch.arange(n_txt, dtype=torch.float32)
        return axis_frequencies(pos, [8, 12, 12]), axis_frequencies(txt_pos[:, None].expand(n_txt, 3), [8, 12, 12])

    with torch.no_grad():
        copies, _ = proc(attn, img[:, dup], txt, encoder_hidden_states_mask=txt_mask,
                         image_rotary_emb=freqs(dup))
        bias = torch.zeros(n_txt + n_img)
        bias[n_txt + j] = math.log(4.0)
        proc.key_bias = bias
        biased, _ = proc(attn, img, txt, encoder_hidden_states_mask=txt_mask, image_rotary_emb=freqs(torch.arange(6)))
        proc.key_bias = None
        # the padded text key stays masked: changing it must not change the result
        txt2 = txt.clone()
        txt2[:, -1] += 5.0
        proc.key_bias = bias
        biased2, _ = proc(attn, img, txt2, encoder_hidden_states_mask=txt_mask,
                          image_rotary_emb=freqs(torch.arange(6)))
        proc.key_bias = None
    assert (copies[:, :n_img] - biased).abs().max() <= 1e-5
    assert (biased2 - biased).abs().max() <= 1e-6
