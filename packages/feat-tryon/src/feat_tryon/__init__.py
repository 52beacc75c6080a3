"""feat-tryon: FEAT, training-free fashion editing and try-on from any design image (arXiv 2605.02393).

Disentangled Dual Injection (per-block routing of the raw and the content-suppressed IP-Adapter embeddings, a
text scale), Orthogonal Fashion Removal (the garment direction projected out of the person latent) and Regional
Adaptive Noise Fusion (a three-region sampling loop), on flowcore's adapters: SDXL / SD1.5 / toy-unet, and OFR +
RANF on SD3 / FLUX / toy-sd3.
"""

from feat_tryon.config import PRESETS, DDIConfig, FEATConfig, OFRConfig, RANFConfig
from feat_tryon.core import FEATOutput, run_feat
from feat_tryon.cspe import content_proxy, cspe_embeddings, gaussian_blur, lightness
from feat_tryon.masks import RegionMasks, fill_sketch, region_masks
from feat_tryon.ofr import OFRResult, garment_on_white, orthogonal_removal
from feat_tryon.pipelines import FEATFlowPipeline, FEATPipeline
from feat_tryon.probe import ProbeReport, probe_blocks
from feat_tryon.ranf import CallStats, ranf_sample
from feat_tryon.routing import (
    BlockRouting,
    RoutedIPAdapterAttnProcessor,
    RoutingHandle,
    SiteRoute,
    install_routing,
)

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "BlockRouting",
    "CallStats",
    "DDIConfig",
    "FEATConfig",
    "FEATFlowPipeline",
    "FEATOutput",
    "FEATPipeline",
    "OFRConfig",
    "OFRResult",
    "ProbeReport",
    "RANFConfig",
    "RegionMasks",
    "RoutedIPAdapterAttnProcessor",
    "RoutingHandle",
    "SiteRoute",
    "__version__",
    "content_proxy",
    "cspe_embeddings",
    "fill_sketch",
    "garment_on_white",
    "gaussian_blur",
    "install_routing",
    "lightness",
    "orthogonal_removal",
    "probe_blocks",
    "ranf_sample",
    "region_masks",
    "run_feat",
]
