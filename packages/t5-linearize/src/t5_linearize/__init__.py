"""t5-linearize: turn the softmax attention of a pretrained SD3/SD3.5 or FLUX transformer into test-time-training
(TTT) layers that keep every pretrained weight, fine-tune briefly, and run in time linear in the token count.

Method: "Linearizing Vision Transformer with Test-Time Training" (arXiv 2605.02772); see the package README.

The training loop (``finetune``) and the pipelines are imported on first use, so ``import t5_linearize`` needs
neither ``accelerate`` nor ``transformers``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LinearizeConfig": "t5_linearize.config",
    "TTTAttention": "t5_linearize.modules",
    "TTTJointAttnProcessor": "t5_linearize.processors",
    "TTTFluxAttnProcessor": "t5_linearize.processors",
    "T5SD3Transformer2DModel": "t5_linearize.models",
    "T5FluxTransformer2DModel": "t5_linearize.models",
    "linearize": "t5_linearize.models",
    "param_groups": "t5_linearize.models",
    "count_new_parameters": "t5_linearize.models",
    "expected_new_parameters": "t5_linearize.models",
    "FinetuneConfig": "t5_linearize.training",
    "FinetuneResult": "t5_linearize.training",
    "finetune": "t5_linearize.training",
    "T5StableDiffusion3Pipeline": "t5_linearize.pipelines",
    "T5FluxPipeline": "t5_linearize.pipelines",
    "T5FluxKontextPipeline": "t5_linearize.pipelines",
}

__all__ = ["__version__", *_LAZY]


# diffusers' pipeline loader resolves a component ["t5_linearize", "T5SD3Transformer2DModel"] by checking it against
# the loadable base classes looked up *on this module* (ModelMixin, ...); expose that one (not in __all__).
_DIFFUSERS_BASES = {"ModelMixin": "diffusers"}


def __getattr__(name: str) -> Any:
    if name in _DIFFUSERS_BASES:
        return getattr(importlib.import_module(_DIFFUSERS_BASES[name]), name)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 't5_linearize' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
