"""Properties of the plain-torch TTT reference (no Triton needed; kernels.md §6 "torch reference tests")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flowkernels import Segment, ttt_attention, ttt_attention_reference
from flowkernels._testing import make_layout, make_ttt_inputs, rel_error
from flowkernels.ops.ttt.naive import (
    dwconv_residual_reference,
    inner_step_reference,
    key_stats_reference,
    normalize_keys_reference,
)

F64 = torch.float64


def test_closed_form_gradients_equal_autograd():
    gen = torch.Generator().manual_seed(0)
    B, H, N, D, s = 2, 3, 11, 8, 0.37
    k = torch.randn(B, H, N, D, generator=gen, dtype=F64)
    v = torch.randn(B, H, N, D, generator=gen, dtype=F64)
    w1 = torch.randn(H, D, D, generator=gen, dtype=F64) * 0.4
    w2 = torch.randn(H, D, D, generator=gen, dtype=F64) * 0.4
    w1p, w2p = inner_step_reference(k, v, w1, w2, scale=s, inner_lr=1.0)
    for b in range(B):
        W1 = w1.clone().requires_grad_(True)
        W2 = w2.clone().requires_grad_(True)
        y = F.silu(k[b] @ W1) @ W2  # [H, N, D]
        loss = s / (2 * N) * (y - v[b]).square().sum()
        g1, g2 = torch.autograd.grad(loss, (W1, W2))
        torch.testing.assert_close(w1 - w1p[b], g1, rtol=0, atol=1e-12)
        torch.testing.assert_close(w2 - w2p[b], g2, rtol=0, atol=1e-12)


def test_key_shift_invariance():
    N, segments = make_layout(3, ((4, 5),), 2)
    gen = torch.Generator().manual_seed(1)
    x = make_ttt_inputs(2, N, 2, 8, generator=gen).to(F64)
    kw = dict(segments=segments, q_conv=x.q_conv, k_conv=x.k_conv)
    base = ttt_attention_reference(*x.args(), **kw)
    shift = torch.randn(2, 1, 2, 8, generator=gen, dtype=F64) * 5  # per sample and channel, shared by all keys
    shifted = ttt_attention_reference(x.q, x.k + shift, x.v, x.w1, x.w2, **kw)
    torch.testing.assert_close(shifted, base, rtol=1e-10, atol=1e-10)
    no_norm = ttt_attention_reference(x.q, x.k + shift, x.v, x.w1, x.w2, key_norm=False, **kw)
    assert rel_error(no_norm, base) > 1e-3  # without the key norm the shift matters


def test_token_duplication_invariance():
    gen = torch.Generator().manual_seed(2)
    x = make_ttt_inputs(1, 9, 2, 8, generator=gen, conv=False).to(F64)
    _, w1p, w2p = ttt_attention_reference(*x.args(), return_state=True)
    twice = [torch.cat([t, t], dim=1) for t in (x.q, x.k, x.v)]
    o2, w1d, w2d = ttt_attention_reference(*twice, x.w1, x.w2, return_state=True)
    torch.testing.assert_close(w1d, w1p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w2d, w2p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(o2[:, 9:], o2[:, :9], rtol=0, atol=0)


def test_zero_fast_weights_give_zero_output():
    N, segments = make_layout(2, ((3, 3),))
    gen = torch.Generator().manual_seed(3)
    x = make_ttt_inputs(1, N, 2, 8, generator=gen)
    zeros = torch.zeros_like(x.w1)
    o = ttt_attention_reference(x.q, x.k, x.v, zeros, zeros, segments=segments, q_conv=x.q_conv, k_conv=x.k_conv)
    assert o.abs().max() == 0


def test_dwconv_matches_explicit_stencil_on_non_square_grid():
    gen = torch.Generator().manual_seed(4)
    h, w, H, D = 3, 5, 1, 2
    N, segments = make_layout(2, ((h, w),), 3)
    x = torch.randn(1, N, H, D, generator=gen, dtype=F64)
    weight = torch.randn(H * D, 1, 3, 3, generator=gen, dtype=F64)
    bias = torch.randn(H * D, generator=gen, dtype=F64)
    out = dwconv_residual_reference(x, segments, weight, bias).reshape(N, H * D)
    flat = x.reshape(N, H * D)
    torch.testing.assert_close(out[:2], flat[:2], rtol=0, atol=0)  # text rows unchanged
    torch.testing.assert_close(out[2 + h * w :], flat[2 + h * w :], rtol=0, atol=0)
    for r in range(h):
        for c in range(w):
            want = flat[2 + r * w + c] + bias
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if 0 <= r + dr < h and 0 <= c + dc < w:
                        want = want + weight[:, 0, dr + 1, dc + 1] * flat[2 + (r + dr) * w + c + dc]
            torch.testing.assert_close(out[2 + r * w + c], want, rtol=1e-12, atol=1e-12)


def test_key_stats_per_segment_by_hand():
    gen = torch.Generator().manual_seed(5)
    N, segments = make_layout(2, ((2, 3), (1, 4)), 1, 1)  # text 0-1, seg 2-7, text 8, seg 9-12, text 13
    k = torch.randn(2, N, 1, 4, generator=gen, dtype=F64) * 3 + 1
    mean, rstd = key_stats_reference(k, segments, stats="per_segment", eps=0.25)
    flat = k.reshape(2, N, 4)
    sets = [torch.arange(2, 8), torch.arange(9, 13), torch.tensor([0, 1, 8, 13])]
    for i, rows in enumerate(sets):
        sel = flat[:, rows]
        torch.testing.assert_close(mean[:, i], sel.mean(1))
        torch.testing.assert_close(rstd[:, i], (sel.var(1, unbiased=False) + 0.25).rsqrt())
    joint_mean, _ = key_stats_reference(k, segments, stats="joint")
    torch.testing.assert_close(joint_mean[:, 0], flat.mean(1))
    khat = normalize_keys_reference(k, mean, rstd, segments, stats="per_segment").reshape(2, N, 4)
    torch.testing.assert_close(khat[:, 8], (flat[:, 8] - mean[:, 2]) * rstd[:, 2])


def test_low_precision_reference_is_close_but_not_exact():
    N, segments = make_layout(1, ((3, 4),))
    gen = torch.Generator().manual_seed(6)
    x = make_ttt_inputs(1, N, 2, 16, generator=gen)
    ref = ttt_attention_reference(*x.to(F64).args(), segments=segments)
    low = ttt_attention_reference(*x.args(), segments=segments, compute_dtype=torch.bfloat16)
    assert 1e-5 < rel_error(low, ref) < 3e-2


def test_reference_is_differentiable():
    N, segments = make_layout(1, ((2, 3),))
    gen = torch.Generator().manual_seed(7)
    x = make_ttt_inputs(1, N, 1, 3, generator=gen).to(F64)
    leaves = [x.q, x.k, x.w1, x.k_conv[0], x.q_conv[1]]
    for t in leaves:
        t.requires_grad_(True)

    def fn(q, k, w1, kw, qb):
        return ttt_attention_reference(
            q, k, x.v, w1, x.w2, segments=segments, k_conv=(kw, x.k_conv[1]), q_conv=(x.q_conv[0], qb)
        )

    assert torch.autograd.gradcheck(fn, leaves)


def test_public_torch_backend_with_grad():
    N, segments = make_layout(0, ((2, 2),), 1)
    gen = torch.Generator().manual_seed(8)
    x = make_ttt_inputs(1, N, 1, 16, generator=gen)
    x.w1.requires_grad_(True)
    o = ttt_attention(*x.args(), segments=segments, q_conv=x.q_conv, k_conv=x.k_conv)  # auto -> torch
    o.square().sum().backward()
    assert x.w1.grad is not None and x.w1.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(segments=[Segment(0, 3, 3), Segment(5, 1, 2)]), "overlap"),
        (dict(segments=[Segment(8, 2, 2)]), "covers rows"),
        (dict(segments=[(0, 0, 3)]), "h and w must be"),
        (dict(out_rows=(5, 5)), "out_rows"),
        (dict(key_norm_stats="segment"), "key_norm_stats"),
        (dict(q_conv=(torch.zeros(16, 1, 3, 3), torch.zeros(16))), "q_conv"),
        (dict(key_norm_eps=0.0), "key_norm_eps"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    gen = torch.Generator().manual_seed(9)
    x = make_ttt_inputs(1, 10, 2, 16, generator=gen, conv=False)
    with pytest.raises(ValueError, match=match):
        ttt_attention(*x.args(), **kwargs)


def test_bad_shapes_raise_clear_errors():
    gen = torch.Generator().manual_seed(10)
    x = make_ttt_inputs(1, 10, 2, 16, generator=gen, conv=False)
    with pytest.raises(ValueError, match=r"\[B, N, H, D\]"):
        ttt_attention(x.q[0], x.k, x.v, x.w1, x.w2)
    with pytest.raises(ValueError, match="share the shape"):
        ttt_attention(x.q, x.k[:, :5], x.v, x.w1, x.w2)
    with pytest.raises(ValueError, match="w1 must be"):
        ttt_attention(x.q, x.k, x.v, x.w1[:1], x.w2)
    with pytest.raises(TypeError, match="one dtype"):
        ttt_attention(x.q, x.k.double(), x.v, x.w1, x.w2)
