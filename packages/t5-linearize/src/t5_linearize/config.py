"""The linearization config (spec §3, §5): which operator replaces softmax attention, and its knobs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["PRESETS", "LinearizeConfig"]

# Each preset sets these fields (and overrides what the caller gave for them).
PRESETS: dict[str, dict[str, Any]] = {
    "t5": {},  # the defaults of the table in spec §3
    "dit5_mixed": {"qk_affine": True, "local_attn": "window", "local_window": 5, "local_mix": 0.5},
    "classification": {"inner": "swiglu3", "inner_loss": "dot"},
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "operator": ("ttt", "linear", "softmax"),
    "inner": ("mlp2", "swiglu3"),
    "inner_loss": ("mse", "dot", None),
    "key_norm_stats": ("joint", "per_segment"),
    "conv_init": ("zero", "default"),
    "local_attn": ("none", "window"),
    "rope": ("apply", "skip"),
    "backend": ("auto", "torch", "triton"),
    "preset": ("t5", "dit5_mixed", "classification", None),
    "conv_kernel": (3, 5),
}


@dataclass
class LinearizeConfig:
    """How every selected attention site is linearized (defaults = spec §3 "Our default").

    operator: ``"ttt"`` (the method), ``"linear"`` (elu+1 linear attention ablation) or ``"softmax"`` (plumbing
        control: the stock output, no new parameters).
    inner / inner_loss: the inner model (``mlp2``: SiLU(uW1)W2; ``swiglu3``: (SiLU(uW1)⊙uW2)W3) and its loss
        (``mse`` or ``dot``); ``inner_loss=None`` means mse for mlp2 and dot for swiglu3.
    inner_lr, inner_steps: η and the number of full-batch steps (more than one runs on the torch path only).
    scale: s (default d^-1/2). fast_init_std: std of the normal init of W⁰ ([H, d, d] per site).
    key_norm, key_norm_eps, key_norm_stats: the key instance norm over the token axis (ε = 1 by default) with
        statistics over all joint tokens (``joint``) or per image segment and text (``per_segment``).
    locality, conv_kernel, conv_init: residual depthwise conv on q and the normalised k per image segment;
        ``conv_init="zero"`` makes it the identity at step 0.
    qk_affine: per-channel affine on q and k before the key norm (released DiT code).
    local_attn, local_window, local_mix: optional mix of a k×k windowed softmax attention for image queries.
    rope: FLUX only; apply the stock rotary embedding to q̃, k̃ or skip it.
    sites / exclude_sites: glob patterns over site names (``transformer_blocks.3.attn``), or site kinds
        (``sd3_joint``); excluded sites keep softmax attention.
    backend: ``auto`` (flowkernels' Triton kernel for CUDA inference, torch otherwise), ``torch``, ``triton``.
    preset: ``t5`` (defaults), ``dit5_mixed`` (qk affine + 5×5 window mixed 0.5), ``classification``
        (swiglu3 + dot); a preset overrides the fields it names.
    """

    operator: Literal["ttt", "linear", "softmax"] = "ttt"
    inner: Literal["mlp2", "swiglu3"] = "mlp2"
    inner_loss: Literal["mse", "dot"] | None = None
    inner_lr: float = 1.0
    inner_steps: int = 1
    scale: float | None = None
    fast_init_std: float = 0.02
    key_norm: bool = True
    key_norm_eps: float = 1.0
    key_norm_stats: Literal["joint", "per_segment"] = "joint"
    locality: bool = True
    conv_kernel: int = 3
    conv_init: Literal["zero", "default"] = "zero"
    qk_affine: bool = False
    local_attn: Literal["none", "window"] = "none"
    local_window: int = 5
    local_mix: float = 0.5
    rope: Literal["apply", "skip"] = "apply"
    sites: tuple[str, ...] = ("*",)
    exclude_sites: tuple[str, ...] = ()
    backend: Literal["auto", "torch", "triton"] = "auto"
    preset: Literal["t5", "dit5_mixed", "classification"] | None = None

    def __post_init__(self) -> None:
        self.sites = _as_patterns(self.sites, "sites")
        self.exclude_sites = _as_patterns(self.exclude_sites, "exclude_sites")
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"LinearizeConfig.{name} must be one of {list(allowed)}, got {value!r}")
        if self.preset is not None:
            for key, value in PRESETS[self.preset].items():
                setattr(self, key, value)
        self._check_numbers()

    def _check_numbers(self) -> None:
        if not self.inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {self.inner_lr}")
        if not (isinstance(self.inner_steps, int) and 1 <= self.inner_steps <= 4):
            raise ValueError(f"inner_steps must be an int in 1..4, got {self.inner_steps!r}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"scale must be > 0 (or None for d^-1/2), got {self.scale}")
        if not self.fast_init_std > 0:
            raise ValueError(f"fast_init_std must be > 0 (a zero W⁰ gives zero output), got {self.fast_init_std}")
        if not self.key_norm_eps > 0:
            raise ValueError(f"key_norm_eps must be > 0, got {self.key_norm_eps}")
        if not (isinstance(self.local_window, int) and self.local_window >= 1 and self.local_window % 2 == 1):
            raise ValueError(f"local_window must be an odd int >= 1 (3..9 is the useful range), got {self.local_window!r}")
        if not 0.0 <= self.local_mix <= 1.0:
            raise ValueError(f"local_mix must lie in [0, 1], got {self.local_mix}")
        if self.backend == "triton" and not self.kernel_compatible:
            raise ValueError(
                "backend='triton' runs flowkernels' fused operator, which covers operator='ttt', inner='mlp2', "
                "inner_loss='mse', inner_steps=1 and conv_kernel=3 only; use backend='torch' or 'auto' for "
                f"this config ({self.describe()})"
            )

    # --- derived -------------------------------------------------------------------------------------------
    @property
    def resolved_inner_loss(self) -> str:
        """The inner loss actually used (mse for mlp2, dot for swiglu3 unless set)."""
        if self.inner_loss is not None:
            return self.inner_loss
        return "dot" if self.inner == "swiglu3" else "mse"

    @property
    def kernel_compatible(self) -> bool:
        """True when flowkernels' fused TTT operator computes this config (the Triton path)."""
        return (self.operator == "ttt" and self.inner == "mlp2" and self.resolved_inner_loss == "mse"
                and self.inner_steps == 1 and (not self.locality or self.conv_kernel == 3))

    def describe(self) -> str:
        return (f"operator={self.operator}, inner={self.inner}, inner_loss={self.resolved_inner_loss}, "
                f"inner_steps={self.inner_steps}, conv_kernel={self.conv_kernel}")

    def replace(self, **changes: Any) -> LinearizeConfig:
        """A copy with ``changes`` (the preset is re-applied)."""
        return dataclasses.replace(self, **changes)

    # --- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists), every field."""
        out = dataclasses.asdict(self)
        out["sites"] = list(self.sites)
        out["exclude_sites"] = list(self.exclude_sites)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | LinearizeConfig | None) -> LinearizeConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise (a config from a newer version is not silently cut)."""
        if data is None:
            return cls()
        if isinstance(data, LinearizeConfig):
            return dataclasses.replace(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LinearizeConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(data))


def _as_patterns(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        patterns = tuple(str(v) for v in value)
    except TypeError as exc:
        raise ValueError(f"{name} must be a sequence of glob patterns, got {value!r}") from exc
    return patterns
