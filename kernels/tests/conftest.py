"""Test setup for flowkernels.

Without CUDA, ``TRITON_INTERPRET=1`` is set *before* any kernel module is imported: ``@triton.jit`` decides
at decoration time whether a kernel is compiled or interpreted (a kernel decorated earlier fails with
"0 active drivers"). ``flowkernels`` itself imports no Triton code, so only the kernel module is checked.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

_KERNEL_MODULE = "flowkernels.ops.ttt.triton_fwd"
_kernels = sys.modules.get(_KERNEL_MODULE)
if _kernels is not None and not HAS_CUDA and not getattr(_kernels, "INTERPRETED_AT_IMPORT", False):
    raise pytest.UsageError(
        f"{_KERNEL_MODULE} was imported before TRITON_INTERPRET=1 was set; run the kernels tests in their "
        "own process (TRITON_INTERPRET=1 python -m pytest kernels/tests -m kernels)"
    )


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@pytest.fixture
def dtypes() -> list[torch.dtype]:
    """Kernel dtypes testable here: bf16 only on CUDA (the interpreter's bf16 maths is wrong)."""
    base = [torch.float32, torch.float16]
    return [*base, torch.bfloat16] if HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1" else base


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
