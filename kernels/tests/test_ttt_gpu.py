"""TTT kernels on a real GPU (``gpu`` marker; skipped without CUDA). Realistic SD3.5/FLUX shapes in bf16/fp16,
determinism and the n_split heuristic. Keep the whole file under 2 minutes."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

triton = pytest.importorskip("triton")

from flowkernels import ttt_attention, ttt_attention_reference  # noqa: E402
from flowkernels._testing import assert_close_lowp, make_layout, make_ttt_inputs, rel_error  # noqa: E402

SHAPES = {
    "sd35m_1k": (2, 24, 64, (0, ((64, 64),), 333)),
    "sd35m_2k": (1, 24, 64, (0, ((128, 128),), 333)),
    "flux_d128": (1, 24, 128, (512, ((64, 64),))),
}


def _inputs(name, dtype, seed=0):
    B, H, D, layout = SHAPES[name]
    N, segments = make_layout(*layout)
    x = make_ttt_inputs(B, N, H, D, generator=torch.Generator().manual_seed(seed))
    return x.to(dtype, "cuda"), segments


def _run(x, segments, **kw):
    return ttt_attention(*x.args(), segments=segments, q_conv=x.q_conv, k_conv=x.k_conv, **kw)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("sd35m_1k", torch.bfloat16), ("sd35m_1k", torch.float16), ("sd35m_2k", torch.bfloat16),
     ("flux_d128", torch.bfloat16)],
)  # fmt: skip
@torch.inference_mode()
def test_realistic_shapes_follow_the_tolerance_rule(name, dtype):
    x, segments = _inputs(name, dtype)
    got = _run(x, segments, backend="triton", return_state=True)
    x64, x32 = x.to(torch.float64), x.to(torch.float32)
    kw = dict(segments=segments, return_state=True)
    ref = ttt_attention_reference(*x64.args(), q_conv=x64.q_conv, k_conv=x64.k_conv, **kw)
    low = ttt_attention_reference(*x32.args(), q_conv=x32.q_conv, k_conv=x32.k_conv, compute_dtype=dtype, **kw)
    for g, r, lo, label in zip(got, ref, low, ("o", "W1'", "W2'")):
        assert_close_lowp(g, r, lo, dtype, f"{name} {label}")


@torch.inference_mode()
def test_deterministic_and_n_split_invariant():
    x, segments = _inputs("sd35m_1k", torch.bfloat16, seed=1)
    a = _run(x, segments, backend="triton", return_state=True)
    b = _run(x, segments, backend="triton", return_state=True)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    one = _run(x, segments, backend="triton", n_split=1, return_state=True)
    for u, v in zip(one[1:], a[1:]):  # W' is fp32: only the summation order differs
        assert rel_error(u, v) <= 1e-5


@torch.inference_mode()
def test_auto_picks_triton_on_cuda():
    import flowkernels

    x, segments = _inputs("sd35m_1k", torch.bfloat16, seed=2)
    _run(x, segments)
    assert flowkernels.last_backend() == "triton"
