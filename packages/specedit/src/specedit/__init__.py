"""specedit: draft-and-verify dynamic-resolution acceleration for in-context image editing (SpecEdit).

A cheap low-resolution draft of the edit is verified against the source to find the cells that change; the real
trajectory then runs at mixed resolution (changed cells plus a sparse uniform grid fine, everything else as 4×
fewer coarse tokens) on the pipeline's own latent, and at full resolution for the last steps. Training-free.
"""

from specedit.config import SpecEditConfig, split_steps
from specedit.flops import ArchSpec, FlopReport, forward_flops, measured_forward_flops, run_flops
from specedit.hooks import apply_specedit, prime_specedit, remove_specedit, specedit_summary
from specedit.stats import SpecEditStats

__version__ = "0.1.0"
__all__ = [
    "ArchSpec",
    "FlopReport",
    "SpecEditConfig",
    "SpecEditFluxKontextPipeline",
    "SpecEditPipelineMixin",
    "SpecEditPipelineOutput",
    "SpecEditQwenImageEditPipeline",
    "SpecEditStats",
    "SpecEditToyKontextPipeline",
    "__version__",
    "apply_specedit",
    "enable_specedit",
    "forward_flops",
    "measured_forward_flops",
    "prime_specedit",
    "remove_specedit",
    "run_flops",
    "specedit_summary",
    "split_steps",
]

_LAZY = {
    "SpecEditFluxKontextPipeline", "SpecEditPipelineMixin", "SpecEditPipelineOutput",
    "SpecEditQwenImageEditPipeline", "SpecEditToyKontextPipeline", "enable_specedit",
}


def __getattr__(name: str):
    if name in _LAZY:  # the pipelines import diffusers' pipeline modules (slow); load them on first use
        from specedit import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'specedit' has no attribute {name!r}")
