"""Configuration of DirectEdit: Value injection and the run settings (spec §3, §5).

Both dataclasses are frozen and validate on construction, so a bad knob fails before any network call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = ["ARCH_DEFAULT_RATIO", "DirectEditConfig", "ValueInjection", "arch_of"]

# Default injection ratio r per architecture (spec §3): FLUX 0.15 (PIE-Bench setting), SD3 0.3.
ARCH_DEFAULT_RATIO: dict[str, float] = {"flux": 0.15, "sd3": 0.3, "unet": 0.3, "mlp": 0.3}
SOURCE_BRANCHES = ("batched", "auto", "cached")
BLOCK_KEYWORDS = ("default", "single", "double", "all")


def arch_of(model: Any) -> str:
    """``"flux"`` (FLUX.1 and Kontext), ``"sd3"``, ``"unet"`` (VP models) or ``"mlp"`` (test velocity fields)."""
    names = [cls.__name__ for cls in type(model).__mro__]
    if "FluxModel" in names:
        return "flux"
    if "SD3Model" in names:
        return "sd3"
    if "UNetModel" in names:
        return "unet"
    if "QwenImageEditModel" in names:
        raise NotImplementedError("directedit does not support Qwen-Image-Edit yet (spec §10); use SD3 or FLUX")
    return str(getattr(model, "directedit_arch", "mlp"))


@dataclass(frozen=True)
class ValueInjection:
    """Which attention Values the target rows copy from the source row, and for how many steps.

    Attributes:
        ratio: injection ratio r; ``K = int(r·N)`` (truncated, as in the reference). ``None``: the architecture's
            default (FLUX 0.15, SD3 0.3).
        steps: an explicit K (overrides ``ratio``; give one of the two).
        blocks: ``"default"`` (FLUX single-stream blocks, SD3 joint ``attn``), ``"single"``, ``"double"`` (FLUX
            double-stream blocks only), ``"all"`` (FLUX: double + single; SD3: ``attn`` + ``attn2``), or glob
            patterns over ``transformer.attn_processors`` keys.
        include_attn2: SD3.5: also inject the image-only ``attn2`` of the dual-attention blocks.
        rows: ``"cond"`` (V[c_tar] ← V[c_src]) or ``"all"`` (SD3 also V[u_tar] ← V[u_src]).
    """

    ratio: float | None = None
    steps: int | None = None
    blocks: str | tuple[str, ...] = "default"
    include_attn2: bool = False
    rows: Literal["cond", "all"] = "cond"

    def __post_init__(self) -> None:
        if self.ratio is not None and self.steps is not None:
            raise ValueError("give either ValueInjection(ratio=...) or ValueInjection(steps=...), not both")
        if self.ratio is not None and not (0.0 <= float(self.ratio) <= 1.0 and math.isfinite(self.ratio)):
            raise ValueError(f"injection ratio must lie in [0, 1], got {self.ratio}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0):
            raise ValueError(f"injection steps must be an integer >= 0, got {self.steps!r}")
        if self.rows not in ("cond", "all"):
            raise ValueError(f"rows must be 'cond' or 'all', got {self.rows!r}")
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        if not isinstance(self.blocks, (str, tuple)) or not self.blocks:
            raise ValueError(f"blocks must be a keyword {BLOCK_KEYWORDS} or glob patterns, got {self.blocks!r}")

    def num_steps(self, arch: str, total_steps: int) -> int:
        """K: the number of leading denoising steps (absolute indices ``0..K-1``) that inject."""
        if self.steps is not None:
            return min(self.steps, total_steps)
        ratio = ARCH_DEFAULT_RATIO.get(arch, 0.3) if self.ratio is None else float(self.ratio)
        return min(int(ratio * total_steps), total_steps)

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "steps": self.steps,
                "blocks": self.blocks if isinstance(self.blocks, str) else list(self.blocks),
                "include_attn2": self.include_attn2, "rows": self.rows}


@dataclass(frozen=True)
class DirectEditConfig:
    """Settings of one DirectEdit run (spec §3). The defaults are the method's.

    Attributes:
        num_steps: N, denoising steps (2–100).
        source_guidance: g_src, used in the inversion and for the source branch (read back from the cache).
        target_guidance: g_tar, one value or one per target prompt.
        injection: Value injection, or ``None`` for none.
        snap_source: feed the stored inversion latent to the source row (bitwise reconstruction).
        source_branch: ``"batched"`` (source row at every step), ``"auto"`` (only while injecting, when snapped)
            or ``"cached"`` (never: Values recorded during the inversion are replayed; needs ``snap_source``).
        skip_steps: s, invert only down to y_s and edit from there (0..N-1).
        sigma_grid: ``"scheduler"``, ``"flux-pipeline"`` (``linspace(1, 1/N, N)``) or an explicit sigma list.
        fold_unit_guidance: SD3: a branch whose CFG scale is exactly 1 drops its uncond row.
        mask_dilation_px: pixel dilation of masks; ``None`` = the per-family default (SD3 3, FLUX 0, toy-sd3 1).
        state_dtype: dtype of all state arithmetic (latents, residuals, updates, blending).
        value_cache_device: where ``"cached"`` mode keeps the recorded Values (default: the model's device).
    """

    num_steps: int = 30
    source_guidance: float = 1.0
    target_guidance: float | Sequence[float] = 2.0
    injection: ValueInjection | None = field(default_factory=ValueInjection)
    snap_source: bool = True
    source_branch: Literal["batched", "auto", "cached"] = "batched"
    skip_steps: int = 0
    sigma_grid: str | Sequence[float] = "scheduler"
    fold_unit_guidance: bool = False
    mask_dilation_px: int | None = None
    state_dtype: torch.dtype = torch.float32
    value_cache_device: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or not 1 <= self.num_steps <= 1000:
            raise ValueError(f"num_steps must be an integer in 1..1000 (the method uses 30), got {self.num_steps!r}")
        if not isinstance(self.skip_steps, int) or not 0 <= self.skip_steps < self.num_steps:
            raise ValueError(f"skip_steps must lie in 0..num_steps-1 = 0..{self.num_steps - 1}, "
                             f"got {self.skip_steps!r}")
        if self.source_branch not in SOURCE_BRANCHES:
            raise ValueError(f"source_branch must be one of {SOURCE_BRANCHES}, got {self.source_branch!r}")
        if self.source_branch == "cached" and not self.snap_source:
            raise ValueError("source_branch='cached' replays the inversion's Values, which is only exact when the "
                             "source is snapped: use snap_source=True (or source_branch='batched')")
        if not isinstance(self.target_guidance, (int, float)):
            object.__setattr__(self, "target_guidance", tuple(float(g) for g in self.target_guidance))
        for name, g in (("source_guidance", self.source_guidance), *(("target_guidance", t) for t in
                                                                   self.target_guidances())):
            if not math.isfinite(float(g)):
                raise ValueError(f"{name} must be finite, got {g}")
        if not isinstance(self.sigma_grid, str):
            grid = [float(s) for s in self.sigma_grid]
            if len(grid) != self.num_steps:
                raise ValueError(f"an explicit sigma_grid needs num_steps = {self.num_steps} values, got {len(grid)}")
            object.__setattr__(self, "sigma_grid", tuple(grid))
        elif self.sigma_grid not in ("scheduler", "flux-pipeline"):
            raise ValueError(f"sigma_grid must be 'scheduler', 'flux-pipeline' or a list, got {self.sigma_grid!r}")
        if self.mask_dilation_px is not None and self.mask_dilation_px < 0:
            raise ValueError(f"mask_dilation_px must be >= 0, got {self.mask_dilation_px}")
        if not (isinstance(self.state_dtype, torch.dtype) and self.state_dtype.is_floating_point):
            raise ValueError(f"state_dtype must be a floating torch.dtype, got {self.state_dtype!r}")
        if self.injection is not None and not isinstance(self.injection, ValueInjection):
            raise TypeError(f"injection must be a ValueInjection or None, got {type(self.injection).__name__}")

    def target_guidances(self) -> tuple[float, ...]:
        """``target_guidance`` as a tuple (one entry, or one per target)."""
        g = self.target_guidance
        if isinstance(g, (int, float)):
            return (float(g),)
        values = tuple(float(v) for v in g)  # type: ignore[union-attr]
        if not values:
            raise ValueError("target_guidance must not be an empty sequence")
        return values

    def injection_steps(self, arch: str) -> int:
        """K for this config (0 without injection)."""
        return 0 if self.injection is None else self.injection.num_steps(arch, self.num_steps)

    def replace(self, **changes: Any) -> DirectEditConfig:
        import dataclasses

        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps, "source_guidance": self.source_guidance,
            "target_guidance": list(self.target_guidances()) if not isinstance(self.target_guidance, (int, float))
            else float(self.target_guidance),
            "injection": None if self.injection is None else self.injection.to_dict(),
            "snap_source": self.snap_source, "source_branch": self.source_branch, "skip_steps": self.skip_steps,
            "sigma_grid": self.sigma_grid if isinstance(self.sigma_grid, str) else list(self.sigma_grid),
            "fold_unit_guidance": self.fold_unit_guidance, "mask_dilation_px": self.mask_dilation_px,
            "state_dtype": str(self.state_dtype).removeprefix("torch."),
            "value_cache_device": self.value_cache_device,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DirectEditConfig:
        """Inverse of :meth:`to_dict` (used when a saved :class:`~directedit.InversionCache` is loaded)."""
        data = dict(data)
        inj = data.pop("injection", None)
        tg = data.pop("target_guidance", 2.0)
        grid = data.pop("sigma_grid", "scheduler")
        dtype = getattr(torch, str(data.pop("state_dtype", "float32")))
        return cls(injection=None if inj is None else ValueInjection(**{**inj, "blocks": inj["blocks"] if
                                                                         isinstance(inj["blocks"], str) else
                                                                         tuple(inj["blocks"])}),
                   target_guidance=tuple(tg) if isinstance(tg, list) else tg,
                   sigma_grid=grid if isinstance(grid, str) else tuple(grid), state_dtype=dtype, **data)
