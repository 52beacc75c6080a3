"""Spec §7 tests 1–9, 14 and 16: the TTT operator's maths on random inputs (float64 where stated)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from t5lin_helpers import qkv

from t5_linearize import operator as ops
from t5_linearize.config import LinearizeConfig
from t5_linearize.modules import TTTAttention

F64 = torch.float64
VARIANTS = [("mlp2", "mse"), ("swiglu3", "dot"), ("mlp2", "dot"), ("swiglu3", "mse")]


def layer(heads=2, dim=8, seed=0, dtype=F64, **changes) -> TTTAttention:
    """A TTT layer with random (non-identity) convs so that every path is exercised."""
    config = LinearizeConfig(**{"conv_init": "default", "backend": "torch", **changes})
    module = TTTAttention(heads, dim, config).to(dtype)
    module.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for w in module.fast_weights:  # larger than the 0.02 init so the update is far from linear
            w.mul_(20)
    return module


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / (b.detach().norm() + 1e-30))


# --- test 1 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("inner", "loss"), VARIANTS)
def test_closed_form_gradients_equal_autograd(inner, loss):
    g = torch.Generator().manual_seed(1)
    B, H, N, d, s, lr = 2, 3, 11, 8, 0.37, 0.8
    k, v, q = (torch.randn(B, H, N, d, generator=g, dtype=F64) for _ in range(3))
    weights = [torch.randn(H, d, d, generator=g, dtype=F64) * 0.5 for _ in range(3 if inner == "swiglu3" else 2)]
    grads = ops.inner_gradients(k, v, [w[None] for w in weights], inner, loss, s)
    for b in range(B):
        leaves = [w.clone().requires_grad_(True) for w in weights]
        total = ops.inner_loss(k[b : b + 1], v[b : b + 1], [w[None] for w in leaves], inner, loss, s).sum()
        expected = torch.autograd.grad(total, leaves)
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got[b], want, rtol=0, atol=1e-12)
    # W' equals one autograd SGD step, and the output is f_{W'}(q̃)
    out, state = ops.ttt_core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), weights, inner=inner,
                              loss=loss, scale=s, inner_lr=lr, return_state=True)
    for b in range(B):
        leaves = [w.clone().requires_grad_(True) for w in weights]
        total = ops.inner_loss(k[b : b + 1], v[b : b + 1], [w[None] for w in leaves], inner, loss, s).sum()
        stepped = [w - lr * gw for w, gw in zip(leaves, torch.autograd.grad(total, leaves))]
        for got, want in zip(state, stepped):
            torch.testing.assert_close(got[b], want.detach(), rtol=0, atol=1e-12)
        readout = ops.inner_forward(q[b : b + 1], [w.detach()[None] for w in stepped], inner)
        torch.testing.assert_close(out[b], readout[0].transpose(0, 1).reshape(N, H * d), rtol=0, atol=1e-12)


def test_module_output_is_one_sgd_step_readout():
    """The full layer (flowkernels path for mlp2/mse) = autograd SGD step on prepared q̃, k̃, then f_{W'}(q̃)."""
    q, k, v = qkv(2, 3 + 12, heads=2, dim=8, seed=2)
    segments = ((3, 3, 4),)
    for inner, loss in VARIANTS[:2]:
        module = layer(inner=inner, inner_loss=loss)
        out, state = module(q, k, v, segments, return_state=True)
        qt, kt = module.prepare(q, k, segments)
        kh, vh = kt.transpose(1, 2), v.transpose(1, 2)
        for b in range(2):  # one autograd SGD step per sample (W⁰ is shared, W' is per sample)
            per = [w.detach().clone().requires_grad_(True) for w in module.fast_weights]
            lb = ops.inner_loss(kh[b : b + 1], vh[b : b + 1], [w[None] for w in per], inner, loss, module.scale).sum()
            new = [w - gw for w, gw in zip(per, torch.autograd.grad(lb, per))]
            for got, want in zip(state, new):
                torch.testing.assert_close(got[b], want.detach(), rtol=0, atol=1e-12)
            expect = ops.inner_forward(qt[b : b + 1].transpose(1, 2), [w.detach()[None] for w in new], inner)
            torch.testing.assert_close(out[b], expect[0].transpose(0, 1).reshape(-1, 16), rtol=0, atol=1e-12)


# --- test 2 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1.0, 1e-3, 10.0])
@pytest.mark.parametrize(("inner", "loss"), VARIANTS[:2])  # flowkernels' path and the package's torch path
def test_key_shift_invariance(eps, inner, loss):
    q, k, v = qkv(2, 4 + 20, heads=2, dim=8, seed=3)
    segments = ((0, 4, 5),)
    shift = torch.randn(2, 1, 2, 8, generator=torch.Generator().manual_seed(4), dtype=F64) * 3
    kw = dict(key_norm_eps=eps, inner=inner, inner_loss=loss)
    for stats in ("joint", "per_segment"):
        module = layer(key_norm_stats=stats, **kw)
        torch.testing.assert_close(module(q, k + shift, v, segments), module(q, k, v, segments), rtol=0, atol=1e-12)
    image_only = torch.zeros_like(k)
    image_only[:, :20] = shift.expand(2, 20, 2, 8)
    joint, per_segment = layer(**kw), layer(key_norm_stats="per_segment", **kw)
    assert rel(joint(q, k + image_only, v, segments), joint(q, k, v, segments)) > 1e-3
    torch.testing.assert_close(per_segment(q, k + image_only, v, segments), per_segment(q, k, v, segments),
                               rtol=0, atol=1e-12)


# --- test 3 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("inner", "loss"), VARIANTS[:2])
def test_key_scale_matters_only_through_eps(inner, loss):
    q, k, v = qkv(1, 20, heads=2, dim=8, seed=5)
    segments = ((0, 4, 5),)
    coarse = layer(key_norm_eps=1.0, inner=inner, inner_loss=loss)
    fine = layer(key_norm_eps=1e-12, inner=inner, inner_loss=loss)
    assert rel(coarse(q, 3 * k, v, segments), coarse(q, k, v, segments)) > 1e-2
    torch.testing.assert_close(fine(q, 3 * k, v, segments), fine(q, k, v, segments), rtol=0, atol=1e-9)


# --- test 4 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("inner", "loss"), VARIANTS)
def test_token_duplication_leaves_rows_unchanged(inner, loss):
    q, k, v = qkv(2, 13, heads=2, dim=8, seed=6)
    module = layer(inner=inner, inner_loss=loss, locality=False)
    once = module(q, k, v)
    twice = module(*(torch.cat([t, t], dim=1) for t in (q, k, v)))
    torch.testing.assert_close(twice[:, :13], once, rtol=0, atol=1e-12)
    torch.testing.assert_close(twice[:, 13:], once, rtol=0, atol=1e-12)


# --- test 5 ---------------------------------------------------------------------------------------------------
def test_zero_fast_weights_give_zero_output_and_zero_gradients():
    q, k, v = qkv(2, 3 + 12, heads=2, dim=8, seed=7)
    module = layer()
    with torch.no_grad():
        for w in module.fast_weights:
            w.zero_()
    out = module(q, k, v, ((3, 3, 4),))
    assert torch.equal(out, torch.zeros_like(out))
    (out * torch.randn_like(out)).sum().backward()
    for w in module.fast_weights:
        assert torch.equal(w.grad, torch.zeros_like(w))


# --- tests 6 and 7 ------------------------------------------------------------------------------------------------
def test_locality_follows_the_grid_and_skips_text():
    q, k, _ = qkv(1, 24 + 5, heads=2, dim=8, seed=8)
    module = layer(key_norm=False)
    qt, kt = module.prepare(q, k, ((0, 4, 6),))
    assert torch.equal(qt[:, 24:], q[:, 24:]) and torch.equal(kt[:, 24:], k[:, 24:])  # text rows untouched
    grid = q[:, :24].reshape(1, 24, 16).transpose(1, 2).reshape(1, 16, 4, 6)
    conv = F.conv2d(grid, module.q_conv.weight, module.q_conv.bias, padding=1, groups=16)
    explicit = (grid + conv).reshape(1, 16, 24).transpose(1, 2).reshape(1, 24, 2, 8)
    torch.testing.assert_close(qt[:, :24], explicit, rtol=0, atol=1e-6)
    transposed, _ = module.prepare(q, k, ((0, 6, 4),))
    assert (transposed[:, :24] - explicit).abs().max() > 1e-3  # a wrong grid gives a different result
    identity = layer(key_norm=False, conv_init="zero")
    identity.reset_parameters()
    qz, kz = identity.prepare(q, k, ((0, 4, 6),))
    assert torch.equal(qz, q) and torch.equal(kz, k)


def test_conv_pads_the_normalised_keys_with_zeros():
    _, k, _ = qkv(1, 20, heads=2, dim=8, seed=9, scale=2.0)
    k = k + 3.0  # a large mean: padding raw k would leave −μ·rstd at the borders
    module = layer()
    _, kt = module.prepare(k, k, ((0, 4, 5),))
    k_hat = ops.key_instance_norm(k, (), eps=1.0)
    grid = k_hat.reshape(1, 20, 16).transpose(1, 2).reshape(1, 16, 4, 5)
    zero_padded = F.conv2d(F.pad(grid, (1, 1, 1, 1)), module.k_conv.weight, module.k_conv.bias, groups=16)
    expected = (grid + zero_padded).reshape(1, 16, 20).transpose(1, 2).reshape(1, 20, 2, 8)
    torch.testing.assert_close(kt, expected, rtol=0, atol=1e-6)
    raw = k.reshape(1, 20, 16).transpose(1, 2).reshape(1, 16, 4, 5)
    padded_raw = F.pad(raw, (1, 1, 1, 1))  # pad k, then normalise with the same statistics
    mean = raw.mean(dim=(2, 3), keepdim=True)
    rstd = torch.rsqrt(raw.var(dim=(2, 3), unbiased=False, keepdim=True) + 1.0)
    wrong = F.conv2d((padded_raw - mean) * rstd, module.k_conv.weight, module.k_conv.bias, groups=16)
    assert (wrong - zero_padded).abs().amax(dim=(0, 1)).max() > 1e-3


# --- test 8 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stats", ["joint", "per_segment"])
def test_text_position_only_permutes_outputs(stats):
    n_img, n_txt = 12, 5
    q, k, v = qkv(2, n_img + n_txt, heads=2, dim=8, seed=10)
    module = layer(key_norm_stats=stats)
    sd3 = module(q, k, v, ((0, 3, 4),))  # [image, text]
    perm = torch.cat([torch.arange(n_img, n_img + n_txt), torch.arange(n_img)])
    flux = module(q[:, perm], k[:, perm], v[:, perm], ((n_txt, 3, 4),))  # [text, image]
    torch.testing.assert_close(flux, sd3[:, perm], rtol=0, atol=1e-6)


# --- test 9 ---------------------------------------------------------------------------------------------------
def test_samples_do_not_interact():
    q, k, v = qkv(2, 17, heads=2, dim=8, seed=11, dtype=torch.float32)
    module = layer(dtype=torch.float32)
    base = module(q, k, v, ((0, 3, 4),))
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[1] = torch.randn_like(t[1]) * 5
    changed = module(q2, k2, v2, ((0, 3, 4),))
    assert torch.equal(changed[0], base[0])
    assert not torch.equal(changed[1], base[1])


# --- test 14 --------------------------------------------------------------------------------------------------
def test_large_window_equals_full_softmax_over_the_segment():
    h, w, n_txt = 3, 4, 2
    q, k, v = qkv(1, n_txt + h * w, heads=2, dim=8, seed=12)
    out = ops.window_attention(q, k, v, ((n_txt, h, w),), window=2 * max(h, w) - 1, scale=8**-0.5)
    rows = slice(n_txt, n_txt + h * w)
    full = F.scaled_dot_product_attention(*(t[:, rows].transpose(1, 2) for t in (q, k, v)))
    torch.testing.assert_close(out[:, rows], full.transpose(1, 2).reshape(1, h * w, 16), rtol=0, atol=1e-6)
    assert torch.equal(out[:, :n_txt], torch.zeros_like(out[:, :n_txt]))
    small = ops.window_attention(q, k, v, ((n_txt, h, w),), window=3, scale=8**-0.5)
    assert (small[:, rows] - out[:, rows]).abs().max() > 1e-3
    mixed = layer(local_attn="window", local_window=7, local_mix=0.5)
    pure = layer(local_attn="none")
    text_rows = mixed(q, k, v, ((n_txt, h, w),))[:, :n_txt]
    torch.testing.assert_close(text_rows, pure(q, k, v, ((n_txt, h, w),))[:, :n_txt], rtol=0, atol=0)


# --- test 16 --------------------------------------------------------------------------------------------------
def test_bf16_autocast_keeps_the_inner_maths_in_fp32():
    q, k, v = qkv(2, 3 + 20, heads=2, dim=16, seed=13, dtype=torch.float32)
    module = layer(dim=16, dtype=torch.float32)
    reference, _ = module(q, k, v, ((3, 4, 5),), return_state=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, state = module(q.bfloat16(), k.bfloat16(), v.bfloat16(), ((3, 4, 5),), return_state=True)
    assert low.dtype == torch.bfloat16
    assert all(w.dtype == torch.float32 for w in state)
    # the inner maths ran in fp32: W' equals the fp32 computation on the bf16-rounded inputs
    _, exact = module(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), ((3, 4, 5),),
                      return_state=True)
    for got, want in zip(state, exact):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    low, reference = low.detach().float(), reference.detach()
    rms = float((low - reference).square().mean().sqrt() / reference.square().mean().sqrt())
    assert rms < 2e-2


def test_linear_operator_matches_its_formula():
    q, k, v = qkv(1, 9, heads=2, dim=4, seed=14)
    out = ops.linear_attention(q, k, v)
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    for i in range(9):
        for h in range(2):
            s = sum(torch.outer(phi_k[0, j, h], v[0, j, h]) for j in range(9))
            z = phi_k[0, :, h].sum(0)
            expected = (phi_q[0, i, h] @ s) / (phi_q[0, i, h] @ z + 1e-6)
            torch.testing.assert_close(out[0, i, h * 4 : (h + 1) * 4], expected, rtol=0, atol=1e-12)


def test_scattered_conv_on_a_tiling_matches_the_grid_conv_of_the_upsampled_field():
    # a 4×6 fine field whose top-left 2×2 block is constant: as a tiling, that block is one coarse token
    torch.manual_seed(0)
    B, H, d, text = 2, 2, 3, 5
    field = torch.randn(B, 4, 6, H, d)
    field[:, 0:2, 0:2] = torch.randn(B, 1, 1, H, d)
    weight, bias = torch.randn(H * d, 1, 3, 3), torch.randn(H * d)
    fine = [(r, c) for r in range(4) for c in range(6) if not (r < 2 and c < 2)]
    tokens = torch.stack([field[:, r, c] for r, c in fine] + [field[:, 0, 0]], dim=1)  # fine first, then coarse
    x = torch.cat([torch.randn(B, text, H, d), tokens], dim=1)
    cover = torch.empty(24, dtype=torch.long)
    for i, (r, c) in enumerate(fine):
        cover[r * 6 + c] = i
    cover[[0, 1, 6, 7]] = len(fine)
    out = ops.dwconv_residual_scattered(x, text, cover, (4, 6), weight, bias)
    grid = ops.dwconv_residual(field.reshape(B, 24, H, d), [(0, 4, 6)], weight, bias).reshape(B, 4, 6, H, d)
    assert torch.equal(out[:, :text], x[:, :text])  # text rows untouched
    for i, (r, c) in enumerate(fine):
        torch.testing.assert_close(out[:, text + i], grid[:, r, c])
    torch.testing.assert_close(out[:, -1], grid[:, 0:2, 0:2].mean(dim=(1, 2)))
    # an all-fine tiling is the plain grid conv
    plain = torch.cat([x[:, :text], field.reshape(B, 24, H, d)], dim=1)
    torch.testing.assert_close(ops.dwconv_residual_scattered(plain, text, torch.arange(24), (4, 6), weight, bias),
                               ops.dwconv_residual(plain, [(text, 4, 6)], weight, bias))
