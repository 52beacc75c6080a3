"""Per-family sequence assembly: reading a transformer call's geometry and building mixed/draft calls."""

from __future__ import annotations

from torch import nn

from specedit.families.base import CallGeometry, Family
from specedit.families.flux_kontext import FluxKontextFamily
from specedit.families.qwen_image_edit import QwenImageEditFamily

__all__ = ["CallGeometry", "Family", "FluxKontextFamily", "QwenImageEditFamily", "family_for"]


def family_for(module: nn.Module) -> Family:
    """The family of a transformer: FLUX (Kontext) or Qwen-Image; ``module._specedit_family`` overrides (tests)."""
    override = getattr(module, "_specedit_family", None)
    names = [c.__name__ for c in type(module).__mro__]
    if override == "flux_kontext" or "FluxTransformer2DModel" in names:
        return FluxKontextFamily()
    if override == "qwen_image_edit" or any(n.startswith("QwenImageTransformer2DModel") for n in names):
        return QwenImageEditFamily()
    raise TypeError(
        f"specedit supports FluxTransformer2DModel (FLUX.1 Kontext, toy-kontext) and QwenImageTransformer2DModel "
        f"(Qwen-Image-Edit); got {type(module).__name__}"
    )
