"""TTT attention (op 1 of kernels.md): torch reference, Triton forward, public entry points."""

from __future__ import annotations

from .function import key_stats, ttt_attention

__all__ = ["key_stats", "ttt_attention"]
