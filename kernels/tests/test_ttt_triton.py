"""Triton TTT kernels vs the float64 torch reference (kernels.md §6–7).

Runs under TRITON_INTERPRET=1 on CPU (set by conftest.py) or on CUDA. Shapes are tiny: the interpreter
executes every Triton op in numpy, so cost scales with the number of tiles, not their size.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("numpy")
pytest.importorskip("triton")

import flowkernels
from flowkernels import Segment, ttt_attention, ttt_attention_reference
from flowkernels._testing import (
    TTTInputs,
    assert_close_fp32,
    assert_close_lowp,
    make_layout,
    make_ttt_inputs,
    rel_error,
)
from flowkernels.ops.ttt.naive import key_stats_reference

pytestmark = pytest.mark.kernels


@dataclass(frozen=True)
class Case:
    name: str
    B: int
    H: int
    D: int
    layout: tuple  # make_layout arguments
    n_split: int = 1
    stats: str = "joint"
    strided: bool = False  # q, k, v as [B, H, N, D] storage viewed as [B, N, H, D] (SD3's layout)


CASES = [
    # N = 17: no segments, one ragged tile of 1 row after a full tile of 16.
    Case("plain_N17", B=1, H=1, D=16, layout=(17,)),
    # 4 text rows then an 8×12 grid (N = 100); w = 12 puts tile borders (16 rows) inside grid rows, so the
    # 3×3 halo crosses tiles; three splits cut the grid mid-row too.
    Case("text_first_8x12", B=2, H=1, D=16, layout=(4, ((8, 12),)), n_split=3),
    # SD3 order: a 6×5 grid, then 7 text rows; two heads of D = 32; strided q/k/v.
    Case("text_last_6x5", B=1, H=2, D=32, layout=(0, ((6, 5),), 7), strided=True),
    # two non-square grids (6×4, 5×3) with text before, between and after; per-segment statistics.
    Case("two_segments_per_segment", B=2, H=2, D=16, layout=(4, ((6, 4), (5, 3)), 3, 2), n_split=3,
         stats="per_segment"),
]  # fmt: skip


def _inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int = 0) -> tuple[TTTInputs, tuple]:
    N, segments = make_layout(*case.layout)
    gen = torch.Generator().manual_seed(seed)
    inputs = make_ttt_inputs(case.B, N, case.H, case.D, generator=gen, conv=bool(segments))
    inputs = inputs.to(dtype, device)
    if case.strided:
        inputs.q, inputs.k, inputs.v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs.args()[:3])
    return inputs, segments


def _run(inputs: TTTInputs, segments, **kw):
    return ttt_attention(
        *inputs.args(), segments=segments, q_conv=inputs.q_conv, k_conv=inputs.k_conv, **kw
    )


def _reference(inputs: TTTInputs, segments, compute_dtype=None, **kw):
    ref_in = inputs.to(torch.float64) if compute_dtype is None else inputs.to(torch.float32)
    return ttt_attention_reference(
        *ref_in.args(), segments=segments, q_conv=ref_in.q_conv, k_conv=ref_in.k_conv,
        compute_dtype=compute_dtype, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_output_and_state_match_reference(case: Case, dtype, device):
    inputs, segments = _inputs(case, dtype, device)
    kw = dict(key_norm_stats=case.stats, return_state=True)
    o, w1p, w2p = _run(inputs, segments, backend="triton", n_split=case.n_split, **kw)
    assert flowkernels.last_backend() == "triton"
    assert o.dtype == dtype and o.is_contiguous() and o.shape == (case.B, inputs.q.shape[1], case.H * case.D)
    assert w1p.dtype == torch.float32 and w1p.shape == (case.B, case.H, case.D, case.D)
    ref = _reference(inputs, segments, **kw)
    if dtype == torch.float32:
        for got, want, label in zip((o, w1p, w2p), ref, ("o", "W1'", "W2'")):
            assert_close_fp32(got.cpu(), want, f"{case.name} {label}")
    else:
        lowp = _reference(inputs, segments, compute_dtype=dtype, **kw)
        for got, want, low, label in zip((o, w1p, w2p), ref, lowp, ("o", "W1'", "W2'")):
            assert_close_lowp(got.cpu(), want, low, dtype, f"{case.name} {label}")


def test_n_split_invariance(device):
    case = CASES[1]
    inputs, segments = _inputs(case, torch.float32, device, seed=1)
    one = _run(inputs, segments, backend="triton", n_split=1, return_state=True)
    three = _run(inputs, segments, backend="triton", n_split=3, return_state=True)
    for a, b in zip(one, three):
        assert rel_error(a, b) <= 1e-6


def test_out_rows_equals_slicing(device):
    case = CASES[2]
    inputs, segments = _inputs(case, torch.float32, device, seed=2)
    full = _run(inputs, segments, backend="triton")
    for a, b in ((0, 30), (3, 20), (29, 37)):
        part = _run(inputs, segments, backend="triton", out_rows=(a, b))
        assert part.shape == (case.B, b - a, case.H * case.D)
        # Same rows, same W': equal up to fp32 rounding (numpy's matmul under the interpreter may round a
        # row differently when the tile holds other rows; on a GPU this is bitwise).
        assert rel_error(part, full[:, a:b]) <= 1e-6


def test_query_conv_leaves_text_rows_untouched(device):
    N, segments = make_layout(4, ((6, 4),), 5)
    gen = torch.Generator().manual_seed(3)
    inputs = make_ttt_inputs(1, N, 1, 16, generator=gen).to(device=device)
    with_conv = ttt_attention(*inputs.args(), segments=segments, q_conv=inputs.q_conv, backend="triton")
    without = ttt_attention(*inputs.args(), segments=segments, backend="triton")
    text = torch.cat([torch.arange(0, 4), torch.arange(28, N)])
    torch.testing.assert_close(with_conv[:, text], without[:, text], rtol=0, atol=0)
    assert (with_conv[:, 4:28] - without[:, 4:28]).abs().amax() > 1e-3


def test_fused_equals_unfused_conv(device):
    case = CASES[3]
    inputs, segments = _inputs(case, torch.float32, device, seed=4)
    kw = dict(key_norm_stats=case.stats, return_state=True, backend="triton", n_split=2)
    fused = _run(inputs, segments, fuse_conv=True, **kw)
    unfused = _run(inputs, segments, fuse_conv=False, **kw)
    for a, b in zip(fused, unfused):
        assert rel_error(a, b) <= 1e-5


def test_joint_and_per_segment_stats_differ_and_match(device):
    case = CASES[3]
    inputs, segments = _inputs(case, torch.float32, device, seed=5)
    outs = {}
    for stats in ("joint", "per_segment"):
        outs[stats] = _run(inputs, segments, backend="triton", key_norm_stats=stats)
        assert_close_fp32(outs[stats].cpu(), _reference(inputs, segments, key_norm_stats=stats), stats)
    assert rel_error(outs["joint"], outs["per_segment"]) > 1e-3


def test_without_key_norm_and_convs(device):
    N, segments = make_layout(3, ((4, 5),))
    gen = torch.Generator().manual_seed(6)
    inputs = make_ttt_inputs(1, N, 2, 16, generator=gen, conv=False).to(device=device)
    o = ttt_attention(*inputs.args(), segments=segments, key_norm=False, scale=0.3, inner_lr=0.7, backend="triton")
    ref = _reference(inputs, segments, key_norm=False, scale=0.3, inner_lr=0.7)
    assert_close_fp32(o.cpu(), ref, "no norm, no conv")


def test_deterministic(device):
    inputs, segments = _inputs(CASES[1], torch.float32, device, seed=7)
    a = _run(inputs, segments, backend="triton", n_split=3, return_state=True)
    b = _run(inputs, segments, backend="triton", n_split=3, return_state=True)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("stats", ["joint", "per_segment"])
def test_key_stats_kernel(stats, device):
    N, segments = make_layout(5, ((3, 7), (2, 4)), 6, 1)
    gen = torch.Generator().manual_seed(8)
    k = make_ttt_inputs(2, N, 2, 16, generator=gen, key_offset=3.0).k.to(device)
    k = k.transpose(1, 2).contiguous().transpose(1, 2)  # strided like SD3's heads-first storage
    mean, rstd = flowkernels.key_stats(k, segments=segments, stats=stats, eps=0.5, backend="triton")
    ref_mean, ref_rstd = key_stats_reference(k.double().cpu(), segments, stats=stats, eps=0.5)
    assert mean.shape == (2, 1 if stats == "joint" else 3, 32)
    assert_close_fp32(mean.cpu(), ref_mean, "mean")
    assert_close_fp32(rstd.cpu(), ref_rstd, "rstd")


def test_segments_given_unsorted(device):
    gen = torch.Generator().manual_seed(9)
    segments = (Segment(20, 2, 3), Segment(2, 3, 4))
    inputs = make_ttt_inputs(1, 28, 1, 16, generator=gen).to(device=device)
    o = _run(inputs, segments, backend="triton")
    assert_close_fp32(o.cpu(), _reference(inputs, segments), "unsorted segments")
