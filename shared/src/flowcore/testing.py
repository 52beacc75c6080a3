"""Tiny random-init diffusers models and pipelines for fast offline tests, plus a call counter.

Every factory builds the real diffusers/transformers class from a small config; every config value can be
overridden by keyword (unknown keys raise the class's own ``TypeError``). Weights are drawn inside
``torch.random.fork_rng`` seeded with the ``seed`` keyword (default 0): the same call gives the same weights, and
the global RNG state is left exactly as it was. Nothing is downloaded and no file is read or written: tokenizers
are built in memory from small byte-level vocabularies (any text tokenizes, nothing maps to "unknown").

Default geometry mirrors the real models where it matters to code paths: VAEs downsample by 8 (4 latent
channels), SD3/Qwen patch 2, FLUX packs 2×2 latents into 16-channel tokens, SD3 has a dual-attention block and
RMS q/k norms (the SD3.5-Medium paths), FLUX has guidance embedding. Each model has well under 1M parameters;
a 2-step pipeline at 64×64 px runs in about a second on a CPU.

``transformers`` (an optional flowcore dependency) is needed for the text/image encoders, tokenizers and
pipelines; the diffusers-only factories do not import it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from flowcore.seeding import seeded_init as _seeded

__all__ = [
    "PIPELINE_KINDS",
    "CallCounter",
    "attach_ip_adapter",
    "qwen_edit_resolution",
    "tiny_controlnet",
    "tiny_feature_extractor",
    "tiny_flux",
    "tiny_image_encoder",
    "tiny_ip_adapter",
    "tiny_pipeline",
    "tiny_qwen_image_edit",
    "tiny_sd3",
    "tiny_text_encoder",
    "tiny_tokenizer",
    "tiny_unet",
    "tiny_vae",
]

PIPELINE_KINDS = (
    "sd3", "flux", "flux-kontext", "qwen-image-edit", "sd15", "sdxl", "sd15-controlnet", "sdxl-controlnet",
)

# Text-encoder widths shared by the pipelines: CLIP towers 32 wide (projection 32), T5 64 wide.
_CLIP_WIDTH = 32
_T5_WIDTH = 64
_QWEN_WIDTH = 16


def _build(cls, defaults: dict, overrides: dict, seed: int):
    with _seeded(seed):
        return cls(**{**defaults, **overrides}).eval()


# ------------------------------------------------------------------------------------------ transformers
def tiny_sd3(*, seed: int = 0, **cfg) -> nn.Module:
    """``SD3Transformer2DModel``: 2 layers (layer 0 with dual attention), 2 heads × 16, RMS q/k norm, patch 2,
    4 latent channels, text width 64 (T5) and pooled width 64 (two CLIP projections). ``caption_projection_dim``
    follows ``num_attention_heads × attention_head_dim`` unless given (SD3 requires them equal)."""
    from diffusers import SD3Transformer2DModel

    defaults = dict(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=_T5_WIDTH, pooled_projection_dim=2 * _CLIP_WIDTH,
        pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    merged = {**defaults, **cfg}
    merged.setdefault("caption_projection_dim", merged["num_attention_heads"] * merged["attention_head_dim"])
    return _build(SD3Transformer2DModel, merged, {}, seed)


def tiny_flux(*, kontext: bool = False, seed: int = 0, **cfg) -> nn.Module:
    """``FluxTransformer2DModel``: 1 double + 1 single block, 2 heads × 16, rope axes (4, 6, 6), 16 input channels
    (2×2-packed 4-channel latents), guidance embedding on, text width 64 (T5), pooled width 32 (CLIP).

    FLUX.1 Kontext uses the same class and config family; ``kontext=True`` documents the intent (reference
    tokens are a pipeline matter) and draws the weights from a different stream (``seed + 1``) so a Kontext and a
    plain tiny model are not accidentally identical."""
    from diffusers import FluxTransformer2DModel

    defaults = dict(
        patch_size=1, in_channels=16, out_channels=None, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=_T5_WIDTH, pooled_projection_dim=_CLIP_WIDTH,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    return _build(FluxTransformer2DModel, defaults, cfg, seed + (1 if kontext else 0))


def tiny_qwen_image_edit(*, seed: int = 0, **cfg) -> nn.Module:
    """``QwenImageTransformer2DModel``: 2 layers, 2 heads × 16, rope axes (8, 4, 4), patch 2, 16 input channels
    (2×2-packed 4-channel latents), 4 output channels, text width 16 (the tiny Qwen2.5-VL), no guidance embedding."""
    from diffusers import QwenImageTransformer2DModel

    defaults = dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=_QWEN_WIDTH, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )
    return _build(QwenImageTransformer2DModel, defaults, cfg, seed)


def tiny_unet(kind: str = "sd15", *, seed: int = 0, **cfg) -> nn.Module:
    """``UNet2DConditionModel`` with two cross-attention levels (16, 32 channels), 2 and 4 heads of 8.

    ``kind="sd15"``: cross-attention width 32 (one CLIP tower). ``kind="sdxl"``: width 64 (two towers),
    ``addition_embed_type="text_time"`` with ``addition_time_embed_dim=8`` and
    ``projection_class_embeddings_input_dim = 6·8 + 32 = 80``, linear projections."""
    from diffusers import UNet2DConditionModel

    defaults: dict[str, Any] = dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4), norm_num_groups=8, cross_attention_dim=_CLIP_WIDTH,
    )
    if kind == "sdxl":
        defaults.update(
            cross_attention_dim=2 * _CLIP_WIDTH, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + _CLIP_WIDTH, use_linear_projection=True,
        )
    elif kind != "sd15":
        raise ValueError(f"unknown UNet kind {kind!r}; use 'sd15' or 'sdxl'")
    return _build(UNet2DConditionModel, defaults, cfg, seed)


# ------------------------------------------------------------------------------------------------- VAEs
_VAE_FACTORS = {
    "sd": dict(scaling_factor=0.18215),
    "sdxl": dict(scaling_factor=0.13025),
    "sd3": dict(scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
    "flux": dict(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
}


def tiny_vae(kind: str = "sd", *, seed: int = 0, **cfg) -> nn.Module:
    """A tiny VAE downsampling by 8 to 4 latent channels.

    ``sd``/``sdxl``/``sd3``/``flux``: ``AutoencoderKL`` (channels 8, 16, 16, 16) with that family's
    ``scaling_factor``/``shift_factor`` and quant-conv settings. ``qwen``: ``AutoencoderKLQwenImage`` (base width
    8, ``dim_mult=[1, 2, 2, 2]``, zero mean / unit std latents)."""
    if kind == "qwen":
        from diffusers import AutoencoderKLQwenImage

        z_dim = cfg.get("z_dim", 4)
        defaults = dict(
            base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
            latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
        )
        return _build(AutoencoderKLQwenImage, defaults, cfg, seed)
    if kind not in _VAE_FACTORS:
        raise ValueError(f"unknown VAE kind {kind!r}; use one of {[*_VAE_FACTORS, 'qwen']}")
    from diffusers import AutoencoderKL

    defaults = dict(
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4, layers_per_block=1,
        sample_size=64, **_VAE_FACTORS[kind],
    )
    return _build(AutoencoderKL, defaults, cfg, seed)


# ------------------------------------------------------------------------------------------ ControlNet
def _randomize_zero_modules(controlnet: nn.Module) -> None:
    """Give the zero-initialised output convs/linears default random weights, so control has an effect."""
    names = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_blocks", "pos_embed_input")
    for name in names:
        module = getattr(controlnet, name, None)
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                layer.reset_parameters()
    embedding = getattr(controlnet, "controlnet_cond_embedding", None)
    if embedding is not None and isinstance(getattr(embedding, "conv_out", None), nn.Conv2d):
        embedding.conv_out.reset_parameters()


def tiny_controlnet(base: nn.Module, *, seed: int = 0, zero_init: bool = False, **cfg) -> nn.Module:
    """A ControlNet for ``base``.

    UNet base: ``ControlNetModel.from_unet`` (conditioning embedding ``(8, 16, 16, 16)``: three stride-2 steps
    to the 8× latent grid); keywords ``conditioning_embedding_out_channels``, ``conditioning_channels``,
    ``controlnet_conditioning_channel_order``, ``load_weights_from_unet``. SD3 base: ``SD3ControlNetModel.
    from_transformer`` with 1 layer and no extra conditioning channels; keywords ``num_layers``,
    ``num_extra_conditioning_channels``, ``load_weights_from_transformer``.

    The zero-initialised outputs of a fresh ControlNet make it a no-op; with ``zero_init=False`` (default) they
    get random weights (from ``seed``) so tests see the control branch act. Pass ``zero_init=True`` for the stock
    initialisation."""
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel, UNet2DConditionModel

    with _seeded(seed):
        if isinstance(base, UNet2DConditionModel):
            from diffusers import ControlNetModel

            options = {"conditioning_embedding_out_channels": (8, 16, 16, 16), **cfg}
            controlnet = ControlNetModel.from_unet(base, **options)
        elif isinstance(base, SD3Transformer2DModel):
            options = {"num_layers": 1, "num_extra_conditioning_channels": 0, **cfg}
            controlnet = SD3ControlNetModel.from_transformer(copy.deepcopy(base), **options)
        else:
            raise TypeError(
                f"tiny_controlnet needs a UNet2DConditionModel or SD3Transformer2DModel base, got {type(base).__name__}"
            )
        if not zero_init:
            _randomize_zero_modules(controlnet)
    return controlnet.eval()


# -------------------------------------------------------------------------------------------- IP-Adapter
def tiny_ip_adapter(unet: Any, *, image_embed_dim: int = _CLIP_WIDTH, seed: int = 0,
                    std: float = 0.2) -> dict[str, dict[str, torch.Tensor]]:
    """A random IP-Adapter state dict in the original layout, loadable by diffusers' ``load_ip_adapter`` /
    ``UNet2DConditionModel._load_ip_adapter_weights``.

    ``image_proj``: ``proj.weight (4·D_x, image_embed_dim)``, ``proj.bias``, ``norm.weight``, ``norm.bias`` (4
    image tokens of the UNet's cross-attention width D_x). ``ip_adapter``: ``{k}.to_k_ip.weight`` and
    ``{k}.to_v_ip.weight`` of shape ``(block width, D_x)`` for k = 1, 3, 5, … over the cross-attention processors
    in ``unet.attn_processors`` order. Weights are normal with ``std`` (drawn from ``seed``)."""
    cross_dim = unet.config.cross_attention_dim
    if not isinstance(cross_dim, int):
        raise ValueError("tiny_ip_adapter needs a UNet with one cross_attention_dim")
    widths = list(unet.config.block_out_channels)
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    image_proj = {
        "proj.weight": normal(4 * cross_dim, image_embed_dim),
        "proj.bias": normal(4 * cross_dim),
        "norm.weight": torch.ones(cross_dim) + normal(cross_dim),
        "norm.bias": normal(cross_dim),
    }
    ip_layers: dict[str, torch.Tensor] = {}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = widths[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(widths))[int(name[len("up_blocks.")])]
        else:
            hidden = widths[int(name[len("down_blocks.")])]
        ip_layers[f"{key_id}.to_k_ip.weight"] = normal(hidden, cross_dim)
        ip_layers[f"{key_id}.to_v_ip.weight"] = normal(hidden, cross_dim)
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip_layers}


def attach_ip_adapter(target, state_dict: dict | None = None, *, image_encoder: nn.Module | None = None,
                      feature_extractor=None, scale: float = 1.0, seed: int = 0):
    """Load an IP-Adapter (default: :func:`tiny_ip_adapter`) into a UNet or a UNet pipeline; returns ``target``.

    For a pipeline, a tiny image encoder and feature extractor are registered first when it has none (diffusers
    cannot load them from a state dict), then ``pipe.load_ip_adapter`` runs and ``set_ip_adapter_scale(scale)``.
    For a bare UNet, ``_load_ip_adapter_weights`` is called (scale 1)."""
    from diffusers import UNet2DConditionModel

    unet = target if isinstance(target, UNet2DConditionModel) else getattr(target, "unet", None)
    if unet is None:
        raise TypeError(f"attach_ip_adapter needs a UNet or a pipeline with a .unet, got {type(target).__name__}")
    state_dict = state_dict or tiny_ip_adapter(unet, seed=seed)
    if target is unet:
        unet._load_ip_adapter_weights([state_dict])
        return target
    if getattr(target, "image_encoder", None) is None:
        image_encoder = image_encoder or tiny_image_encoder(seed=seed)
        target.register_modules(image_encoder=image_encoder)
    if getattr(target, "feature_extractor", None) is None:
        size = target.image_encoder.config.image_size
        target.register_modules(feature_extractor=feature_extractor or tiny_feature_extractor(size=size))
    target.load_ip_adapter(state_dict, subfolder="", weight_name="")
    target.set_ip_adapter_scale(scale)
    return target


# ------------------------------------------------------------------------------------ encoders, tokenizers
def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def tiny_tokenizer(kind: str = "clip", *, model_max_length: int | None = None):
    """An in-memory tokenizer (no files, no network).

    ``clip``: ``CLIPTokenizer`` over the 256 byte-level symbols (each also with ``</w>``), bos 0, eos = pad 1,
    77 positions. ``t5``: ``T5Tokenizer`` (unigram) over printable ASCII pieces, pad 0, eos 1, unk 2.
    ``qwen``: ``Qwen2Tokenizer`` over the byte-level symbols plus the chat/vision special tokens
    (``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>``, ``<|vision_end|>``, …)."""
    if kind == "clip":
        from transformers import CLIPTokenizer

        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
        for symbol in _byte_alphabet():
            vocab[symbol] = len(vocab)
            vocab[symbol + "</w>"] = len(vocab)
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length or 77)
    if kind == "t5":
        import string

        from transformers import T5Tokenizer

        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
        pieces += [(ch, -3.0) for ch in string.printable if not ch.isspace()]
        pieces += [("▁" + ch, -2.5) for ch in string.ascii_letters + string.digits]
        return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length or 512)
    if kind == "qwen":
        from transformers import Qwen2Tokenizer

        vocab = {symbol: index for index, symbol in enumerate(_byte_alphabet())}
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|image_pad|>", "<|video_pad|>"]
        for token in specials:
            vocab[token] = len(vocab)
        return Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=specials[1:],
                              model_max_length=model_max_length or 1024)
    raise ValueError(f"unknown tokenizer kind {kind!r}; use 'clip', 't5' or 'qwen'")


def tiny_text_encoder(kind: str = "clip", *, seed: int = 0, vocab_size: int | None = None, **cfg) -> nn.Module:
    """A tiny text encoder matching :func:`tiny_tokenizer`'s vocabulary.

    ``clip``: ``CLIPTextModel`` (width 32, 2 layers, 4 heads, 77 positions); ``clip-projection``:
    ``CLIPTextModelWithProjection`` (projection 32); ``t5``: ``T5EncoderModel`` (width 64, 2 layers, 4 heads);
    ``qwen``: ``Qwen2_5_VLForConditionalGeneration`` (width 16, 2 text layers, a 2-layer vision tower)."""
    import transformers

    config: Any
    cls: Any
    if kind in ("clip", "clip-projection"):
        config = transformers.CLIPTextConfig(**{
            "vocab_size": vocab_size or len(tiny_tokenizer("clip")), "hidden_size": _CLIP_WIDTH,
            "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 77, "projection_dim": _CLIP_WIDTH, "bos_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 1, **cfg,
        })
        cls = transformers.CLIPTextModel if kind == "clip" else transformers.CLIPTextModelWithProjection
    elif kind == "t5":
        config = transformers.T5Config(**{
            "vocab_size": vocab_size or len(tiny_tokenizer("t5")), "d_model": _T5_WIDTH, "d_kv": 16, "d_ff": 64,
            "num_layers": 2, "num_heads": 4, "relative_attention_num_buckets": 8, "pad_token_id": 0,
            "eos_token_id": 1, "decoder_start_token_id": 0, **cfg,
        })
        cls = transformers.T5EncoderModel
    elif kind == "qwen":
        config, cls = _qwen_vl_config(vocab_size, cfg), transformers.Qwen2_5_VLForConditionalGeneration
    else:
        raise ValueError(f"unknown text encoder kind {kind!r}; use 'clip', 'clip-projection', 't5' or 'qwen'")
    with _seeded(seed):
        return cls(config).eval()


def _qwen_vl_config(vocab_size: int | None, cfg: dict):
    import transformers

    tokenizer = tiny_tokenizer("qwen")
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}
    vocab = vocab_size or len(tokenizer)
    text_config = {
        "hidden_size": _QWEN_WIDTH, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "vocab_size": vocab, "rope_theta": 1e6,
        "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        **cfg.pop("text_config", {}),
    }
    vision_config = {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                     "out_hidden_size": text_config["hidden_size"], **cfg.pop("vision_config", {})}
    return transformers.Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **ids, **cfg)


def tiny_image_encoder(*, seed: int = 0, **cfg) -> nn.Module:
    """``CLIPVisionModelWithProjection``: 32×32 input, patch 8, width 32, projection 32 (the IP-Adapter
    ``image_embed_dim`` of :func:`tiny_ip_adapter`), 2 layers, 4 heads."""
    import transformers

    config = transformers.CLIPVisionConfig(**{
        "image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": _CLIP_WIDTH, "intermediate_size": 37,
        "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": _CLIP_WIDTH, **cfg,
    })
    with _seeded(seed):
        return transformers.CLIPVisionModelWithProjection(config).eval()


def tiny_feature_extractor(size: int = 32):
    """A CLIP image processor resizing/cropping to ``size`` (the PIL backend when available: no torchvision)."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _qwen_processor(tokenizer, max_pixels: int = 64 * 64):
    """A Qwen2-VL processor (image + text). Without torchvision, transformers cannot check a video processor, so
    an image-only subclass is used then (the pipelines never pass videos)."""
    import transformers
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    image_cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    image_processor = image_cls(min_pixels=28 * 28, max_pixels=max_pixels)

    class _ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    try:
        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
    except (AttributeError, ValueError, TypeError):
        return _ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


@contextlib.contextmanager
def qwen_edit_resolution(area: int = 64 * 64) -> Iterator[None]:
    """Test-only: make ``QwenImageEditPipeline`` size its condition image to ``area`` pixels instead of 1024².

    The stock pipeline always VAE-encodes the reference at about one megapixel (seconds even for a tiny VAE); this
    temporarily replaces the module-level ``calculate_dimensions`` target area, and restores it on exit."""
    from unittest import mock

    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module

    original = module.calculate_dimensions
    with mock.patch.object(module, "calculate_dimensions", lambda _area, ratio: original(area, ratio)):
        yield


# --------------------------------------------------------------------------------------------- pipelines
def _schedulers(kind: str):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if kind == "sd3":
        return FlowMatchEulerDiscreteScheduler(shift=3.0)
    if kind in ("flux", "flux-kontext"):
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
            max_shift=1.15,
        )
    if kind == "qwen-image-edit":
        return FlowMatchEulerDiscreteScheduler(
            shift=1.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=8192, base_shift=0.5,
            max_shift=0.9, shift_terminal=0.02, time_shift_type="exponential",
        )
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, timestep_spacing="leading",
    )


def _component(overrides: dict, name: str, factory, *args, **kwargs):
    """Use ``overrides[name]`` as is when it is a ready object, as extra config when it is a dict."""
    value = overrides.pop(name, None)
    if value is None:
        return factory(*args, **kwargs)
    if isinstance(value, dict):
        return factory(*args, **{**kwargs, **value})
    return value


def tiny_pipeline(kind: str, *, seed: int = 0, **cfg):
    """A complete diffusers pipeline of tiny random parts with in-memory tokenizers, progress bars off.

    ``kind``: ``sd3`` (``StableDiffusion3Pipeline``: two CLIP towers + T5), ``flux`` (``FluxPipeline``),
    ``flux-kontext`` (``FluxKontextPipeline``), ``qwen-image-edit`` (``QwenImageEditPipeline``), ``sd15``,
    ``sdxl``, ``sd15-controlnet``, ``sdxl-controlnet`` (DDIM, SD's betas, "leading" spacing, ``steps_offset=1``).
    Schedulers carry the real models' settings (SD3 shift 3; FLUX dynamic shift; Qwen exponential dynamic shift).

    ``cfg``: per component, a ready object (``transformer=my_model``) or a dict of config overrides for its
    factory (``transformer={"num_layers": 1}``, ``vae={...}``, ``scheduler=...`` object only); unknown component
    names raise. Suggested call sizes: 64×64 px, 2 steps; Kontext with ``max_area=64*64, _auto_resize=False``;
    Qwen-Image-Edit inside :func:`qwen_edit_resolution`.
    """
    builders = {
        "sd3": _pipeline_sd3, "flux": _pipeline_flux, "flux-kontext": _pipeline_flux,
        "qwen-image-edit": _pipeline_qwen, "sd15": _pipeline_unet, "sdxl": _pipeline_unet,
        "sd15-controlnet": _pipeline_unet, "sdxl-controlnet": _pipeline_unet,
    }
    if kind not in builders:
        raise ValueError(f"unknown pipeline kind {kind!r}; use one of {list(PIPELINE_KINDS)}")
    overrides = dict(cfg)
    scheduler = overrides.pop("scheduler", None) or _schedulers(kind)
    pipe = builders[kind](kind, seed, overrides, scheduler)
    if overrides:
        raise TypeError(f"unknown component(s) for a {kind} pipeline: {sorted(overrides)}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_sd3(kind: str, seed: int, overrides: dict, scheduler):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=_component(overrides, "transformer", tiny_sd3, seed=seed),
        scheduler=scheduler,
        vae=_component(overrides, "vae", tiny_vae, "sd3", seed=seed),
        text_encoder=_component(overrides, "text_encoder", tiny_text_encoder, "clip-projection", seed=seed),
        tokenizer=_component(overrides, "tokenizer", tiny_tokenizer, "clip"),
        text_encoder_2=_component(overrides, "text_encoder_2", tiny_text_encoder, "clip-projection", seed=seed + 1),
        tokenizer_2=_component(overrides, "tokenizer_2", tiny_tokenizer, "clip"),
        text_encoder_3=_component(overrides, "text_encoder_3", tiny_text_encoder, "t5", seed=seed),
        tokenizer_3=_component(overrides, "tokenizer_3", tiny_tokenizer, "t5"),
    )


def _pipeline_flux(kind: str, seed: int, overrides: dict, scheduler):
    from diffusers import FluxKontextPipeline, FluxPipeline

    cls = FluxKontextPipeline if kind == "flux-kontext" else FluxPipeline
    return cls(
        transformer=_component(overrides, "transformer", tiny_flux, kontext=kind == "flux-kontext", seed=seed),
        scheduler=scheduler,
        vae=_component(overrides, "vae", tiny_vae, "flux", seed=seed),
        text_encoder=_component(overrides, "text_encoder", tiny_text_encoder, "clip", seed=seed),
        tokenizer=_component(overrides, "tokenizer", tiny_tokenizer, "clip"),
        text_encoder_2=_component(overrides, "text_encoder_2", tiny_text_encoder, "t5", seed=seed),
        tokenizer_2=_component(overrides, "tokenizer_2", tiny_tokenizer, "t5"),
    )


def _pipeline_qwen(kind: str, seed: int, overrides: dict, scheduler):
    from diffusers import QwenImageEditPipeline

    tokenizer = _component(overrides, "tokenizer", tiny_tokenizer, "qwen")
    return QwenImageEditPipeline(
        transformer=_component(overrides, "transformer", tiny_qwen_image_edit, seed=seed),
        scheduler=scheduler,
        vae=_component(overrides, "vae", tiny_vae, "qwen", seed=seed),
        text_encoder=_component(overrides, "text_encoder", tiny_text_encoder, "qwen", seed=seed),
        tokenizer=tokenizer,
        processor=_component(overrides, "processor", _qwen_processor, tokenizer),
    )


def _pipeline_unet(kind: str, seed: int, overrides: dict, scheduler):
    import diffusers

    family = "sdxl" if kind.startswith("sdxl") else "sd15"
    unet = _component(overrides, "unet", tiny_unet, family, seed=seed)
    parts: dict[str, Any] = dict(
        unet=unet,
        scheduler=scheduler,
        vae=_component(overrides, "vae", tiny_vae, "sdxl" if family == "sdxl" else "sd", seed=seed),
        text_encoder=_component(overrides, "text_encoder", tiny_text_encoder, "clip", seed=seed),
        tokenizer=_component(overrides, "tokenizer", tiny_tokenizer, "clip"),
        feature_extractor=overrides.pop("feature_extractor", None),
        image_encoder=overrides.pop("image_encoder", None),
    )
    if family == "sdxl":
        parts.update(
            text_encoder_2=_component(overrides, "text_encoder_2", tiny_text_encoder, "clip-projection",
                                      seed=seed + 1),
            tokenizer_2=_component(overrides, "tokenizer_2", tiny_tokenizer, "clip"),
            add_watermarker=False,
        )
    else:
        parts.update(safety_checker=None, requires_safety_checker=False)
    if kind.endswith("controlnet"):
        parts["controlnet"] = _component(overrides, "controlnet", tiny_controlnet, unet, seed=seed)
    names = {
        "sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
        "sd15-controlnet": "StableDiffusionControlNetPipeline",
        "sdxl-controlnet": "StableDiffusionXLControlNetPipeline",
    }
    return getattr(diffusers, names[kind])(**parts)


# ------------------------------------------------------------------------------------------ call counting
def _batch_rows(args: tuple, kwargs: dict) -> int:
    for value in args:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    for key in ("hidden_states", "sample", "x", "latents"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    for value in kwargs.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


class CallCounter:
    """Count the forward calls of ``module`` and the batch rows they carry, with a forward pre-hook.

    ``rows`` is the leading dimension of the first tensor argument (positional, else ``hidden_states``/
    ``sample``/``x``/``latents``, else any tensor keyword). The hook is installed on construction and removed on
    ``__exit__`` or :meth:`remove`::

        with CallCounter(pipe.transformer) as counter:
            pipe(...)
        assert counter.calls == 2 and counter.rows == 4
    """

    def __init__(self, module: nn.Module):
        if not isinstance(module, nn.Module):
            raise TypeError(f"CallCounter needs an nn.Module, got {type(module).__name__}")
        self.module = module
        self.calls = 0
        self.rows = 0
        self.per_call: list[int] = []
        self._handle: Any = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        rows = _batch_rows(args, kwargs)
        self.calls += 1
        self.rows += rows
        self.per_call.append(rows)

    def reset(self) -> None:
        self.calls, self.rows, self.per_call = 0, 0, []

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"CallCounter(calls={self.calls}, rows={self.rows})"
