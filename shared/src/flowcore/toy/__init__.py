"""flowcore.toy: the embedded toy world (toyworld.md §10.2).

A procedural 32×32 image world with exact ground truth (scenes and captions, edit pairs with masks, style filters,
a mannequin try-on world), deterministic judges that read the ground truth back from pixels, a tiny text/image
encoder pair (toy-clip) and small trained models of the real diffusers classes (toy-sd3, toy-flux/toy-kontext,
toy-unet with its edge ControlNet and IP-Adapter). ``load(name)`` works offline; ``build(name)`` gives the same
architectures with random weights.

Training, evaluation and export live in ``flowcore.toy.trainer`` / ``evaluate`` / ``export`` (imported on demand;
CLI: ``python -m flowcore.toy``).
"""

from flowcore.images import mask_to_grid
from flowcore.toy.bundle import (
    ToyBundle,
    ToyWeightsCorrupted,
    ToyWeightsMissing,
    available,
    build,
    clip_image_similarity,
    clip_score,
    load,
    manifest,
    verify,
)
from flowcore.toy.constants import (
    COLORS,
    EDIT_KINDS,
    GARMENT_KINDS,
    GARMENT_PATTERNS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLE_FILTERS,
    VOCAB,
    WATERCOLOR_COMPONENTS,
)
from flowcore.toy.edits import Edit, EditPair, make_edit, parse_instruction, sample_edit, sample_training_edit
from flowcore.toy.garment_judge import (
    GarmentReading,
    MannequinReading,
    color_map,
    read_garment,
    read_mannequin,
)
from flowcore.toy.judge import (
    AlignmentResult,
    EditResult,
    ObjReading,
    SceneReading,
    alignment,
    edit_success,
    read_scene,
    rerender_psnr,
)
from flowcore.toy.models import ToyImageEncoder, ToyPixelVAE, ToyTextEncoder
from flowcore.toy.render import edge_map, render
from flowcore.toy.scene import (
    Background,
    Obj,
    Scene,
    SceneConfig,
    SceneSampler,
    SceneSpec,
    ToyGrammarError,
    ToySceneError,
    parse_caption,
    sample_scene,
)
from flowcore.toy.styles import apply_style, measure_style
from flowcore.toy.tokenizer import ToyTokenizer, ToyVocabularyError
from flowcore.toy.tryon import (
    Design,
    Garment,
    Mannequin,
    TryOnSample,
    make_tryon_sample,
    render_designs,
    render_mannequins,
    sample_design,
    sample_mannequin,
    tryon_target,
)


def train(name: str, output_dir: str, **overrides):
    """Train toy model ``name`` into ``output_dir`` (toyworld.md §8.6); see ``python -m flowcore.toy train``."""
    from flowcore.toy.trainer import train as _train

    return _train(name, output_dir, **overrides)


def evaluate(name: str, n: int | None = None, **kw):
    """Run the §9 quality gates of ``name`` and return one dict per gate."""
    from flowcore.toy.gates import evaluate as _evaluate

    return _evaluate(name, n, **kw)


__all__ = [
    "COLORS",
    "EDIT_KINDS",
    "GARMENT_KINDS",
    "GARMENT_PATTERNS",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "STYLE_FILTERS",
    "VOCAB",
    "WATERCOLOR_COMPONENTS",
    "AlignmentResult",
    "Background",
    "Design",
    "Edit",
    "EditPair",
    "EditResult",
    "Garment",
    "GarmentReading",
    "Mannequin",
    "MannequinReading",
    "Obj",
    "ObjReading",
    "Scene",
    "SceneConfig",
    "SceneReading",
    "SceneSampler",
    "SceneSpec",
    "ToyBundle",
    "ToyGrammarError",
    "ToyImageEncoder",
    "ToyPixelVAE",
    "ToySceneError",
    "ToyTextEncoder",
    "ToyTokenizer",
    "ToyVocabularyError",
    "ToyWeightsCorrupted",
    "ToyWeightsMissing",
    "TryOnSample",
    "alignment",
    "apply_style",
    "available",
    "build",
    "clip_image_similarity",
    "clip_score",
    "color_map",
    "edge_map",
    "edit_success",
    "evaluate",
    "load",
    "make_edit",
    "make_tryon_sample",
    "manifest",
    "mask_to_grid",
    "measure_style",
    "parse_caption",
    "parse_instruction",
    "read_garment",
    "read_mannequin",
    "read_scene",
    "render",
    "render_designs",
    "render_mannequins",
    "rerender_psnr",
    "sample_design",
    "sample_edit",
    "sample_mannequin",
    "sample_scene",
    "sample_training_edit",
    "train",
    "tryon_target",
    "verify",
]
