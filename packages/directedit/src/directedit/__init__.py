"""directedit: step-level exact inversion and dual-path editing for flow models (SD3/SD3.5, FLUX.1, Kontext).

DirectEdit (ICML 2026) records every inversion increment and adds it to the network input of the matching
denoising step, so the source branch retraces the inversion trajectory exactly while the target branch, driven by
the edit prompt, copies attention Values from it. See the package README and ``directedit --help``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from directedit import baselines
from directedit.cache import CacheMismatchError, InversionCache
from directedit.config import DirectEditConfig, ValueInjection
from directedit.core import EditResult, direct_edit, edit, invert
from directedit.masks import AttentionMask, MaskContext, MaskProvider, UserMask, prepare_mask
from directedit.rows import NFECount

# The pipeline classes subclass diffusers pipelines, whose modules need transformers: import them on first use so
# that the core works in an environment without transformers.
_PIPELINE_NAMES = ("DirectEditFluxKontextPipeline", "DirectEditFluxPipeline", "DirectEditPipelineOutput",
                   "DirectEditSD3Pipeline", "load_pipeline")


def __getattr__(name: str):
    if name in _PIPELINE_NAMES:
        from directedit import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'directedit' has no attribute {name!r}")

__all__ = [
    "AttentionMask",
    "CacheMismatchError",
    "DirectEditConfig",
    "DirectEditFluxKontextPipeline",
    "DirectEditFluxPipeline",
    "DirectEditPipelineOutput",
    "DirectEditSD3Pipeline",
    "EditResult",
    "InversionCache",
    "MaskContext",
    "MaskProvider",
    "NFECount",
    "UserMask",
    "ValueInjection",
    "__version__",
    "baselines",
    "direct_edit",
    "edit",
    "invert",
    "load_pipeline",
    "prepare_mask",
]
