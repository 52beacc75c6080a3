"""Backend selection: Triton kernel or plain-torch reference (kernels.md §2)."""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Sequence
from typing import Literal, TypeVar

import torch

Backend = Literal["triton", "torch"]
BACKEND_ENV = "FLOWKERNELS_BACKEND"
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_state = threading.local()
T = TypeVar("T")


def has_triton() -> bool:
    """True when ``triton`` imports (and numpy too under the interpreter, which needs it)."""
    if not _triton_importable():
        return False
    return not (is_interpreting() and importlib.util.find_spec("numpy") is None)


@functools.lru_cache(maxsize=1)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install (missing driver libraries, ...)
        return False
    return True


def is_interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: kernels run on the CPU through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_configs(configs: Sequence[T]) -> list[T]:
    """The configs an autotuner may try: only the first under the interpreter (it cannot benchmark there)."""
    return list(configs[:1]) if is_interpreting() else list(configs)


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def device_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 for anything else (used only to size grids)."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def last_backend() -> str | None:
    """The backend ("triton" or "torch") of the last flowkernels call on this thread; None before any."""
    return getattr(_state, "last", None)


def record_backend(backend: Backend) -> None:
    _state.last = backend


def requested_backend(backend: str | None) -> str:
    """Resolve the ``backend`` argument: explicit value, else ``$FLOWKERNELS_BACKEND``, else "auto"."""
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto") or "auto"
    if choice not in ("auto", "torch", "triton"):
        source = "backend argument" if backend is not None else f"${BACKEND_ENV}"
        raise ValueError(f"{source} must be 'auto', 'torch' or 'triton', got {choice!r}")
    return choice


def select_backend(
    op: str,
    tensors: Sequence[torch.Tensor],
    *,
    backend: str | None = None,
    requires_grad: bool = False,
    grad_supported: bool = False,
    head_dim: int | None = None,
) -> Backend:
    """Pick the backend of one call of ``op`` (kernels.md §2).

    ``auto`` takes Triton only for CUDA tensors of a kernel dtype and a supported head dim, when Triton
    imports and the grad contract allows it; CPU tensors always take torch (``auto`` never picks the
    interpreter). ``triton`` raises a clear error instead of falling back.
    """
    choice = requested_backend(backend)
    if choice == "torch":
        return "torch"
    if choice == "auto":
        ok = (
            all(t.is_cuda for t in tensors)
            and all(t.dtype in KERNEL_DTYPES for t in tensors)
            and (head_dim is None or head_dim in SUPPORTED_HEAD_DIMS)
            and (grad_supported or not requires_grad)
            and has_triton()
        )
        return "triton" if ok else "torch"
    _check_triton_request(op, tensors, requires_grad, grad_supported, head_dim)
    return "triton"


def _check_triton_request(
    op: str,
    tensors: Sequence[torch.Tensor],
    requires_grad: bool,
    grad_supported: bool,
    head_dim: int | None,
) -> None:
    if requires_grad and not grad_supported:
        raise NotImplementedError(f"flowkernels {op} kernel is forward-only; use backend='torch' for training")
    if not has_triton():
        raise RuntimeError(
            f"flowkernels {op}: backend='triton' needs Triton (pip install 'flowkernels[triton]'"
            + (" and numpy for the interpreter" if is_interpreting() else "")
            + "); use backend='torch' or 'auto'"
        )
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"flowkernels {op}: all tensors must be on one device, got {sorted(map(str, devices))}")
    on_cpu = any(not t.is_cuda for t in tensors)
    if on_cpu and not is_interpreting():
        raise RuntimeError(
            f"flowkernels {op}: backend='triton' got CPU tensors; move them to CUDA, or set TRITON_INTERPRET=1 "
            "before importing flowkernels to run the kernel in Triton's (slow) interpreter"
        )
    for t in tensors:
        if t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"flowkernels {op}: the Triton kernel takes fp16/bf16/fp32 tensors, got {t.dtype}")
        if t.dtype == torch.bfloat16 and is_interpreting():
            raise TypeError(
                f"flowkernels {op}: bf16 is not supported under TRITON_INTERPRET=1 (the interpreter's bf16 "
                "maths is wrong); use fp32/fp16 there, bf16 on a GPU"
            )
    if head_dim is not None and head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"flowkernels {op}: the Triton kernel supports head dims {SUPPORTED_HEAD_DIMS}, got {head_dim}; "
            "use backend='torch'"
        )
