"""S4: pinned colour-pyramid values; VAE-decoder taps return L maps and stop the decoder early."""

from __future__ import annotations

import pytest
import torch

from specedit.features import color_pyramid, discrepancy_map, resolve_extractor, vae_decoder_features


def _uniform(rgb, size=8):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size)


@pytest.mark.parametrize(("a", "b", "value"), [
    ((1.0, 1.0, 1.0), (-1.0, -1.0, -1.0), 3.2),          # white vs black
    ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), 2.1876),      # pure red vs pure blue
    ((0.0, 0.0, 0.0), (0.1, 0.1, 0.1), 0.03884),         # grey 0.0 vs 0.1 (below tau = 0.75)
])
def test_s4_color_pyramid_pinned_values(a, b, value):
    fa, fb = color_pyramid(_uniform(a)), color_pyramid(_uniform(b))
    assert len(fa) == 3 and [f.shape[-1] for f in fa] == [8, 4, 2]
    s = discrepancy_map(fa, fb, (8, 8))
    assert torch.allclose(s, torch.full_like(s, value), atol=1e-4)


def test_s4_color_pyramid_constant_channel_keeps_grey_defined():
    black = color_pyramid(_uniform((0.0, 0.0, 0.0)))
    assert all(torch.isfinite(f).all() for f in black)
    s = discrepancy_map(black, black, (8, 8))
    assert torch.equal(s, torch.zeros_like(s))


@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_s4_vae_decoder_taps_return_l_maps_and_stop_early(kind):
    from flowcore.testing import tiny_vae

    vae = tiny_vae(kind)
    ran = []
    vae.decoder.conv_out.register_forward_hook(lambda *a: ran.append(1))
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    if kind == "qwen":
        z = z[:, :, None]
    feats = vae_decoder_features(vae, z, ("mid_block", "up_blocks.0", "up_blocks.1"))
    assert len(feats) == 3 and all(f.ndim == 4 and f.shape[0] == 2 for f in feats)
    assert feats[0].shape[-1] == 4 and feats[2].shape[-1] > feats[0].shape[-1]
    assert not ran, "the decoder ran past the last tap"
    s = discrepancy_map(feats, [f.flip(0) for f in feats], (4, 4))
    assert s.shape == (2, 4, 4) and float(s.max()) <= 4.0 + 1e-5


def test_extractor_resolution_and_errors():
    from flowcore.testing import tiny_vae

    assert resolve_extractor("auto", tiny_vae("flux"), 4) == "vae_decoder"
    assert resolve_extractor("auto", None, 3) == "color_pyramid"
    assert resolve_extractor("auto", None, 16) == "latent"
    with pytest.raises(ValueError, match="needs a VAE"):
        resolve_extractor("vae_decoder", None, 4)
    with pytest.raises(ValueError, match="pixel-space"):
        resolve_extractor("color_pyramid", None, 16)
    with pytest.raises(ValueError, match="not a module"):
        vae_decoder_features(tiny_vae("flux"), torch.zeros(1, 4, 2, 2), ("nope",))
