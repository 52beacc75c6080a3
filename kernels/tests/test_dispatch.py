"""Backend selection and the grad contract (kernels.md §2, §3.5). Runs no kernel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import flowkernels
from flowkernels import _backend, key_stats, ttt_attention
from flowkernels._testing import make_ttt_inputs
from flowkernels.ops.ttt import function as ttt_function


@pytest.fixture
def inputs():
    return make_ttt_inputs(1, 6, 2, 16, generator=torch.Generator().manual_seed(0), conv=False)


def test_auto_on_cpu_takes_torch_even_under_the_interpreter(inputs, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(_backend.BACKEND_ENV, raising=False)
    ttt_attention(*inputs.args(), backend="auto")
    assert flowkernels.last_backend() == "torch"
    ttt_attention(*inputs.args())  # backend=None -> $FLOWKERNELS_BACKEND unset -> auto
    assert flowkernels.last_backend() == "torch"
    key_stats(inputs.k)
    assert flowkernels.last_backend() == "torch"


def test_environment_variable_and_explicit_argument(inputs, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(_backend.BACKEND_ENV, "triton")
    with pytest.raises(RuntimeError, match="CPU tensors"):
        ttt_attention(*inputs.args())  # the env var asks for Triton on CPU without the interpreter
    ttt_attention(*inputs.args(), backend="torch")  # an explicit argument wins
    assert flowkernels.last_backend() == "torch"
    monkeypatch.setenv(_backend.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="FLOWKERNELS_BACKEND"):
        ttt_attention(*inputs.args())


def test_triton_with_grad_raises(inputs, monkeypatch):
    inputs.w1.requires_grad_(True)
    with pytest.raises(NotImplementedError, match="forward-only; use backend='torch' for training"):
        ttt_attention(*inputs.args(), backend="triton")
    ttt_attention(*inputs.args(), backend="auto")  # auto falls back to the differentiable reference
    assert flowkernels.last_backend() == "torch"

    # Under no_grad nothing needs a graph, so the kernel is allowed (the kernel itself is stubbed out here).
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backend, "has_triton", lambda: True)
    monkeypatch.setattr(ttt_function, "_triton_forward", lambda q, *a: (q.new_zeros(1), None, None))
    with torch.no_grad():
        ttt_attention(*inputs.args(), backend="triton")
    assert flowkernels.last_backend() == "triton"


def test_missing_triton(inputs, monkeypatch):
    monkeypatch.setattr(_backend, "has_triton", lambda: False)
    ttt_attention(*inputs.args(), backend="auto")
    assert flowkernels.last_backend() == "torch"
    with pytest.raises(RuntimeError, match=r"flowkernels\[triton\]"):
        ttt_attention(*inputs.args(), backend="triton")


def test_triton_request_rejects_unsupported_inputs(inputs, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backend, "has_triton", lambda: True)
    with pytest.raises(TypeError, match="bf16"):
        ttt_attention(*inputs.to(torch.bfloat16).args(), backend="triton")
    with pytest.raises(TypeError, match="fp16/bf16/fp32"):
        ttt_attention(*inputs.to(torch.float64).args(), backend="triton")
    odd = make_ttt_inputs(1, 6, 1, 8, generator=torch.Generator().manual_seed(1), conv=False)
    with pytest.raises(ValueError, match="head dims"):
        ttt_attention(*odd.args(), backend="triton")


def test_autotune_configs_prunes_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.autotune_configs([1, 2, 3]) == [1]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _backend.autotune_configs([1, 2, 3]) == [1, 2, 3]


def test_works_without_triton_installed():
    """A fresh interpreter in which ``import triton`` fails: flowkernels imports and takes the torch path."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch, flowkernels
        from flowkernels._testing import make_ttt_inputs
        x = make_ttt_inputs(1, 6, 2, 16, generator=torch.Generator().manual_seed(0), conv=False)
        assert not flowkernels.has_triton()
        flowkernels.ttt_attention(*x.args(), backend="auto")
        assert flowkernels.last_backend() == "torch"
        try:
            flowkernels.ttt_attention(*x.args(), backend="triton")
        except RuntimeError as exc:
            assert "flowkernels[triton]" in str(exc)
        else:
            raise AssertionError("backend='triton' without triton must raise")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_flowkernels_does_not_import_triton():
    code = "import sys, flowkernels; print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_public_api():
    assert flowkernels.__version__ == "0.1.0"
    for name in flowkernels.__all__:
        assert hasattr(flowkernels, name), name
