"""The smallest run with only flowkernels' declared dependencies (no triton): the torch path answers on CPU."""

from __future__ import annotations

import torch

import flowkernels
from flowkernels import ttt_attention, ttt_attention_reference
from flowkernels._testing import make_ttt_inputs


def test_smoke_torch_path_matches_the_float64_reference():
    inputs = make_ttt_inputs(1, 12, 2, 8, generator=torch.Generator().manual_seed(0), conv=False)
    out = ttt_attention(*inputs.args(), backend="auto")
    assert flowkernels.last_backend() == "torch"
    ref = ttt_attention_reference(*(t.double() for t in inputs.args()))
    assert out.shape == (1, 12, 16) and out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-5)
