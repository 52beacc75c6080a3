"""Smallest end-to-end test (``nox -s isolated``): needs only t5-linearize and its declared dependencies (no
``transformers``): linearize a tiny diffusers SD3 transformer, run a training step, save and reload it."""

from __future__ import annotations

import torch


def test_linearize_train_save_load(tmp_path):
    from diffusers import SD3Transformer2DModel

    import t5_linearize
    from t5_linearize import T5SD3Transformer2DModel, count_new_parameters, linearize

    torch.manual_seed(0)
    base = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                 caption_projection_dim=32, pooled_projection_dim=32, pos_embed_max_size=16,
                                 dual_attention_layers=(0,), qk_norm="rms_norm")
    model = linearize(base, generator=torch.Generator().manual_seed(0))
    assert count_new_parameters(model) == 3 * (2 * 2 * 16 * 16 + 2 * (9 * 32 + 32))
    inputs = dict(hidden_states=torch.randn(2, 4, 8, 8), encoder_hidden_states=torch.randn(2, 5, 32),
                  pooled_projections=torch.randn(2, 32), timestep=torch.tensor([100.0, 900.0]), return_dict=False)
    out = model(**inputs)[0]
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for _, p in model.new_parameters())
    model.save_pretrained(tmp_path)
    loaded = T5SD3Transformer2DModel.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs)[0], model(**inputs)[0], rtol=0, atol=0)
    assert t5_linearize.__version__
