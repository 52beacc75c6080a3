"""style-attr: continuous stylistic attribute sliders for latent diffusion and flow models.

An edge-conditioned ControlNet gains zero-initialised cross-attention to λ-tokens (the attribute network), whose
prediction difference ``ε_A(λ) − ε_A(λ_ref)`` is added to classifier-free guidance once sampling passes ``act_t``;
real photos are edited through null-parameter inversion (or directedit's exact inversion on flow models).
Method: "Stylistic Attribute Control in Latent Diffusion Models" (arXiv 2605.02583).
"""

from __future__ import annotations

__version__ = "0.1.0"

from style_attr.baseline import PromptLevelBaseline
from style_attr.composition import (
    AttributeTerm,
    InversionResult,
    directedit_inversion,
    edit_inverted,
    null_parameter_inversion,
    plain_inversion,
    sample,
)
from style_attr.dataset import build_dataset
from style_attr.filters import AttributeSpec, FilterFamily, canny_edges, get_family
from style_attr.metrics import istd, masked_ssim, spearman_rho
from style_attr.network import (
    AttributeControlNet,
    AttributeEmbedder,
    BaseMismatchError,
    randomize_attribute_layers,
)
from style_attr.training import TrainConfig, train_attribute_net


def __getattr__(name: str):
    if name == "StyleAttrPipeline":  # imported on first use (diffusers' pipeline machinery is slow to import)
        from style_attr.pipeline import StyleAttrPipeline

        return StyleAttrPipeline
    raise AttributeError(f"module 'style_attr' has no attribute {name!r}")


__all__ = [
    "AttributeControlNet",
    "AttributeEmbedder",
    "AttributeSpec",
    "AttributeTerm",
    "BaseMismatchError",
    "FilterFamily",
    "InversionResult",
    "PromptLevelBaseline",
    "StyleAttrPipeline",
    "TrainConfig",
    "__version__",
    "build_dataset",
    "canny_edges",
    "directedit_inversion",
    "edit_inverted",
    "get_family",
    "istd",
    "masked_ssim",
    "null_parameter_inversion",
    "plain_inversion",
    "randomize_attribute_layers",
    "sample",
    "spearman_rho",
    "train_attribute_net",
]
