"""flowkernels: Triton kernels with plain-torch references for the monorepo's method packages.

Every public function runs without Triton (torch reference); Triton is the optional extra
``flowkernels[triton]``. ``backend="auto"`` picks the kernel only for CUDA tensors.
"""

from __future__ import annotations

from ._backend import has_triton, is_interpreting, last_backend
from ._segments import Segment
from .ops.ttt import key_stats, ttt_attention
from .ops.ttt.naive import ttt_attention_reference

__version__ = "0.1.0"
__all__ = [
    "Segment",
    "__version__",
    "has_triton",
    "is_interpreting",
    "key_stats",
    "last_backend",
    "ttt_attention",
    "ttt_attention_reference",
]
