"""One FEAT run on a flowcore adapter: masks → OFR → DDI → RANF → decode, with the sidecar record.

:func:`run_feat` is what both pipelines call. It takes the inputs as tensors (images (B,3,H,W) in [0,1], masks
(B,1,H,W)), builds every once-per-image quantity (§2.7: ``z̃``, the latent masks, ``[e_sty, e_img]`` and the
control image) and runs :func:`feat_tryon.ranf.ranf_sample` with the routing installed.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from feat_tryon.config import FEATConfig
from feat_tryon.cspe import center_crop_resize, content_proxy, cspe_embeddings
from feat_tryon.masks import RegionMasks, fill_sketch, region_masks
from feat_tryon.masks import control_image as make_control_image
from feat_tryon.ofr import OFRResult, garment_on_white, orthogonal_removal
from feat_tryon.ranf import CallStats, ranf_sample, start_index
from feat_tryon.routing import BlockRouting, cross_sites, install_routing, stack_slots
from flowcore.adapters import ControlInput
from flowcore.images import check_image

__all__ = ["SIDECAR_FORMAT", "FEATOutput", "encoder_size", "is_plus_adapter", "resolve_routing", "run_feat"]

SIDECAR_FORMAT = "feat-tryon/1"
_WHITE_CACHE: dict[tuple, Tensor] = {}


@dataclass
class FEATOutput:
    """Result of one FEAT call.

    Attributes:
        images: (B,3,H,W) in [0,1] (or PIL images / numpy per ``output_type`` in the pipelines).
        masks: the :class:`~feat_tryon.masks.RegionMasks` used.
        ofr: the :class:`~feat_tryon.ofr.OFRResult` (``None`` when OFR was off or had nothing to remove).
        info: the sidecar record (config, routing, areas, call counts, timings, warnings, …).
        intermediates: optional images (``mask``, ``ofr``, ``proxy``, ``control``) for ``--save-intermediates``.
    """

    images: Any
    masks: RegionMasks
    ofr: OFRResult | None
    info: dict[str, Any]
    intermediates: dict[str, Tensor] = field(default_factory=dict)

    def save(self, stem: str | Path, *, intermediates: bool = False) -> Path:
        """Write ``<stem>.png`` (``<stem>-<i>.png`` for a batch) and the sidecar ``<stem>.json`` atomically."""
        from flowcore.io import save_result

        extra = dict(self.intermediates) if intermediates else None
        return save_result(stem, self.images, {**self.info, "package": "feat-tryon"}, extra_images=extra)


def _sha256(t: Tensor | None) -> str | None:
    if t is None:
        return None
    return hashlib.sha256(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def _batch(x: Tensor | None, b: int, name: str) -> Tensor | None:
    if x is None:
        return None
    if x.shape[0] == b:
        return x
    if x.shape[0] == 1:
        return x.expand(b, *x.shape[1:])
    raise ValueError(f"{name} has {x.shape[0]} rows for {b} person images: pass one per image (or one for all)")


def _check_mask(mask: Tensor | None, size: tuple[int, int], name: str) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a (B,1,H,W) tensor; load files with flowcore.images.load_mask")
    m = mask[None, None] if mask.ndim == 2 else (mask[None] if mask.ndim == 3 else mask)
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(f"{name} must be (B,1,H,W), got shape {tuple(mask.shape)}")
    if tuple(m.shape[-2:]) != tuple(size):
        raise ValueError(f"{name} is {m.shape[-1]}×{m.shape[-2]} (W×H) but the person image is {size[1]}×{size[0]}: "
                         "pass the mask made for this image (flowcore.images.load_mask resizes same-aspect masks)")
    m = m.float()
    if not torch.isfinite(m).all():
        raise ValueError(f"{name} contains NaN/inf values")
    return m.clamp(0, 1)


def encoder_size(adapter: Any, default: int) -> int:
    """The image encoder's input side S (CLIP: the feature extractor's crop; toy-clip: 32)."""
    pipe = getattr(adapter, "pipe", None)
    extractor = getattr(pipe, "feature_extractor", None)
    crop = getattr(extractor, "crop_size", None)
    if isinstance(crop, dict) and "height" in crop:
        return int(crop["height"])
    encoder = getattr(pipe, "image_encoder", None)
    if encoder is None:
        owner = getattr(getattr(adapter, "image_encoder", None), "__self__", None)
        encoder = getattr(owner, "image_encoder", None)
    size = getattr(getattr(encoder, "config", None), "image_size", None)
    return int(size) if size else int(default)


def is_plus_adapter(unet: Any) -> bool:
    """True when the UNet's loaded IP-Adapter projects patch tokens (Plus / FaceID-Plus), not a global embedding."""
    proj = getattr(unet, "encoder_hid_proj", None)
    layers = getattr(proj, "image_projection_layers", None)
    if not layers:
        return False
    return any(type(layer).__name__ != "ImageProjection" for layer in layers)


def has_ip_adapter(adapter: Any) -> bool:
    return getattr(getattr(adapter, "denoiser", None), "encoder_hid_proj", None) is not None


def _ip_embed_dim(adapter: Any) -> int:
    layers = adapter.denoiser.encoder_hid_proj.image_projection_layers
    first = layers[0]
    for module in first.modules():
        if isinstance(module, torch.nn.Linear):
            return int(module.in_features)
    raise ValueError("cannot infer the IP-Adapter's image embedding width")


def resolve_routing(adapter: Any, config: FEATConfig, routing: BlockRouting | None = None) -> BlockRouting:
    """The routing a config asks for: DDI off → uniform; else ``routing`` / ``routing_file`` / explicit blocks /
    the rule, with the config's scales."""
    ddi = config.ddi
    if not ddi.enabled:
        return BlockRouting.uniform_scale(config.image_scale, ddi.text_scale)
    if routing is None and ddi.routing_file:
        routing = BlockRouting.from_json(Path(ddi.routing_file).read_text())
    if routing is None:
        style, content = BlockRouting.rule_groups(adapter.denoiser.config)
        routing = BlockRouting(ddi.style_blocks or style, ddi.content_blocks or content, 0.0, 0.0)
    elif ddi.style_blocks or ddi.content_blocks:
        routing = BlockRouting(ddi.style_blocks or routing.style, ddi.content_blocks or routing.content, 0, 0)
    return BlockRouting(routing.style, routing.content, config.style_scale, config.content_scale, ddi.other_scale,
                        ddi.text_scale, routing.group_scales, routing.uniform)


def _white_latent(adapter: Any, height: int, width: int, stats: CallStats) -> Tensor:
    key = (id(adapter.vae), height, width, str(adapter.device), str(getattr(adapter.vae, "dtype", "")))
    if key not in _WHITE_CACHE:
        white = torch.ones(1, 3, height, width, device=adapter.device)
        _WHITE_CACHE[key] = adapter.to_grid(adapter.encode_image(white), height, width).float()
        stats.vae_encode_images += 1
    return _WHITE_CACHE[key]


def _encode_person(adapter: Any, person: Tensor, garment: Tensor, config: FEATConfig, masks: RegionMasks,
                   stats: CallStats) -> tuple[Tensor, Tensor, OFRResult | None]:
    """``(z_p, z̃)`` on the latent grid (fp32) and the OFR result."""
    height, width = person.shape[-2:]
    b = person.shape[0]
    need_ofr = config.ofr.enabled and bool(garment.any())
    if need_ofr:
        g = garment_on_white(person, garment)
        both = adapter.to_grid(adapter.encode_image(torch.cat([person, g])), height, width).float()
        stats.vae_encode_images += 2 * b
        z_p, z_g = both[:b], both[b:]
        z_w = _white_latent(adapter, height, width, stats).to(z_p.device)
        ofr = config.ofr
        result = orthogonal_removal(z_p, z_g, z_w, alpha=ofr.alpha, mode=ofr.mode, center=ofr.center,
                                    mask=masks.garment_latent.to(z_p.device), eps=ofr.eps)
        return z_p, result.latent, result
    z_p = adapter.to_grid(adapter.encode_image(person), height, width).float()
    stats.vae_encode_images += b
    return z_p, z_p, None


def _design_embeddings(adapter: Any, design: Tensor | None, config: FEATConfig, b: int,
                       stats: CallStats) -> tuple[Tensor, dict]:
    """(B, 2, D) slot embeddings [e_sty, e_img] and the CSPE record."""
    if design is None:
        dim = _ip_embed_dim(adapter)
        return torch.zeros(b, 2, dim, device=adapter.device, dtype=adapter.dtype), {}
    size = encoder_size(adapter, min(design.shape[-2:]))
    ddi = config.ddi
    if ddi.enabled and ddi.cspe:
        e_img, e_sty, info = cspe_embeddings(adapter.encode_ip_image, design, kappa=ddi.kappa,
                                             sigma_frac=ddi.sigma_frac, renorm=ddi.renorm, size=size,
                                             return_info=True)
        stats.encoder_images += 2 * design.shape[0]
    else:
        e_img = adapter.encode_ip_image(center_crop_resize(design, size))
        e_sty, info = e_img, {"encoder_size": size, "cspe": False}
        stats.encoder_images += design.shape[0]
    return stack_slots(e_sty, e_img), info


def _paste_back(x: Tensor, person: Tensor, masks: RegionMasks, mode: str) -> Tensor:
    if mode == "off":
        return x
    m = masks.operating.to(x.device, x.dtype)
    if mode == "feather":
        from feat_tryon.cspe import gaussian_blur

        m = gaussian_blur(m, masks.dilate_px / 2).clamp(0, 1)
        m = torch.maximum(m, masks.operating.to(x.device, x.dtype))
    return m * x + (1 - m) * person


def _prompts(prompt: str | Sequence[str], b: int) -> list[str]:
    prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
    if len(prompts) != b:
        raise ValueError(f"got {len(prompts)} prompts for {b} person images")
    return prompts


def run_feat(
    adapter: Any,
    person: Tensor,
    garment_mask: Tensor | None = None,
    sketch: Tensor | None = None,
    design: Tensor | None = None,
    prompt: str | Sequence[str] = "",
    *,
    sketch_mask: Tensor | None = None,
    negative_prompt: str = "",
    control_image: Tensor | None = None,
    config: FEATConfig | None = None,
    routing: BlockRouting | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], Tensor | None] | None = None,
    intermediates: bool = False,
    progress: bool = False,
) -> FEATOutput:
    """Edit or dress ``person`` (spec §2) with a flowcore adapter.

    Args:
        adapter: a flowcore ``FlowModel``: ``UNetModel`` (SDXL, SD1.5, toy-unet; DDI needs its IP-Adapter loaded)
            or a rectified-flow adapter (SD3, FLUX, toy-sd3; OFR + RANF only, the design is ignored).
        person: (B,3,H,W) in [0,1]; H, W multiples of ``adapter.pad_multiple``.
        garment_mask: ``M_p`` (B|1,1,H,W), the worn item to replace; ``None`` or empty = add an accessory.
        sketch: the new item's outline (B|1,1|3,H,W), filled into ``M_s`` (a ``sketch_mask`` wins).
        design: the design image (B|1,3,H_i,W_i) in [0,1], any size.
        prompt: text (or one per image); ``negative_prompt`` the CFG negative.
        sketch_mask: ``M_s`` given directly; an all-zero mask means removal only.
        control_image: the ControlNet image for ``control_image_mode="user"``.
        config: a :class:`~feat_tryon.config.FEATConfig` (default: ``FEATConfig.preset("feat")``).
        routing: an explicit :class:`~feat_tryon.routing.BlockRouting` (its scales are replaced by the config's).
        generator: the noise generator (ξ₀ then one ξ per step).
        callback: ``callback(i, z)`` after each fused step.
        intermediates: keep the region map, the decoded ``z̃``, the CSPE proxy and the control image.
    """
    config = config or FEATConfig.preset("feat")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    person = check_image(person, multiple=adapter.pad_multiple, name="person image").float().to(adapter.device)
    b, (height, width) = person.shape[0], tuple(person.shape[-2:])
    size = (height, width)
    garment = _batch(_check_mask(garment_mask, size, "garment mask"), b, "garment mask")
    user_ms = _batch(_check_mask(sketch_mask, size, "sketch mask"), b, "sketch mask")
    kernels: list[int] | None = None
    if sketch is not None and user_ms is None:
        sk = sketch if sketch.ndim == 4 else sketch[None]
        if tuple(sk.shape[-2:]) != size:
            raise ValueError(f"the sketch is {sk.shape[-1]}×{sk.shape[-2]} (W×H) but the person image is "
                             f"{width}×{height}: draw it on the person's canvas")
        filled, kernels = fill_sketch(sk.float(), close_max_px=config.ranf.close_max_px, return_kernel=True)
        user_ms = _batch(filled.to(person.device), b, "sketch")
    garment = garment.to(person.device) if garment is not None else torch.zeros(b, 1, *size, device=person.device)
    grid = (height // adapter.vae_scale_factor, width // adapter.vae_scale_factor)
    masks = region_masks(garment, user_ms, grid, dilate_px=config.ranf.dilate_px, pooling=config.ranf.mask_pooling,
                         operating_area=config.ranf.operating_area)
    masks.info["closing_kernel"] = kernels
    stats = CallStats()

    # --- once per image: OFR, prompts, design embeddings, control image --------------------------------------------
    t0 = time.perf_counter()
    z_p, z_tilde_grid, ofr = _encode_person(adapter, person, masks.garment, config, masks, stats)
    timings["ofr_s"] = time.perf_counter() - t0
    if ofr is not None:
        notes += ofr.warnings
    prompts = _prompts(prompt, b)
    cond = adapter.encode_prompt(prompts)
    use_cfg = config.cfg_on and getattr(adapter, "guidance_kind", "cfg") == "cfg"
    uncond = adapter.encode_prompt([negative_prompt] * b) if use_cfg else None
    design_t = None
    if design is not None:
        design_t = _batch(check_image(design, name="design image").float().to(person.device), b, "design image")
    ddi_active = has_ip_adapter(adapter) and bool(cross_sites(adapter.denoiser))
    if design_t is not None and not ddi_active:
        notes.append("the model has no IP-Adapter (or no UNet cross-attention): the design image is ignored; "
                     "describe the design in the prompt")
        warnings.warn(notes[-1], stacklevel=2)
    image_embeds, cspe_info, route_summary = None, {}, None
    handle = None
    t0 = time.perf_counter()
    if ddi_active and design_t is not None and config.ddi.enabled and config.ddi.cspe \
            and is_plus_adapter(adapter.denoiser):
        raise ValueError("CSPE needs a global-embedding IP-Adapter (ip-adapter_sdxl / ip-adapter_sd15); this UNet has "
                         "a Plus (patch-token) adapter: load a non-Plus adapter or set cspe=False")
    if ddi_active:
        image_embeds, cspe_info = _design_embeddings(adapter, design_t, config, b, stats)
        chosen = resolve_routing(adapter, config, routing)
        if design_t is None:  # text only: no image branch, full text weight
            chosen = BlockRouting.uniform_scale(0.0, 1.0)
        ip_mask = {"none": None, "sketch": masks.sketch, "operating": masks.operating}[config.ddi.ip_mask]
        handle = install_routing(adapter, chosen, ip_mask=ip_mask)
        route_summary = handle.summary()
    timings["encoder_s"] = time.perf_counter() - t0
    mode = config.control_image_mode
    if mode == "auto":
        mode = "toy" if getattr(adapter, "is_toy", False) else "filled"
    has_sketch = user_ms is not None and not bool(masks.new_empty.all())
    control = None
    ctrl_img = None
    if adapter.controlnet is not None and has_sketch and config.sketch_scale > 0:
        ctrl_img = make_control_image(mode, sketch, masks.sketch, user=control_image).to(person.device)
        control = ControlInput(image=ctrl_img, scale=config.sketch_scale)
    elif has_sketch and adapter.controlnet is None:
        notes.append("the model has no ControlNet: the sketch only shapes the regions")

    # --- the loop -------------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    try:
        z_tilde = adapter.from_grid(z_tilde_grid)
        z_person = adapter.from_grid(z_p)
        z = ranf_sample(adapter, z_tilde, masks, cond, config=config, control=control, generator=generator,
                        callback=callback, uncond=uncond, image_embeds=image_embeds, z_person=z_person, stats=stats,
                        progress=progress)
    finally:
        if handle is not None:
            handle.remove()
    timings["sampling_s"] = time.perf_counter() - t0
    images = adapter.decode_image(z, height=height, width=width).float()
    stats.vae_decode_images += b
    images = _paste_back(images, person, masks, config.ranf.paste_back)
    timings["total_s"] = time.perf_counter() - started

    extra: dict[str, Tensor] = {}
    if intermediates:
        extra["mask"] = _region_map(masks, height, width)
        extra["ofr"] = adapter.decode_image(z_tilde, height=height, width=width).float()
        if design_t is not None:
            extra["proxy"] = content_proxy(center_crop_resize(design_t, encoder_size(adapter, 224)),
                                           config.ddi.sigma_frac)
        if ctrl_img is not None:
            extra["control"] = ctrl_img
    info = {
        "format": SIDECAR_FORMAT,
        "model_id": getattr(adapter, "model_id", "") or type(adapter).__name__,
        "is_toy": bool(getattr(adapter, "is_toy", False)),
        "config": config.to_dict(),
        "routing": route_summary,
        "size": [height, width],
        "batch": b,
        "start_index": start_index(config.num_inference_steps, config.ranf.init_strength),
        "inputs_sha256": {"person": _sha256(person), "garment_mask": _sha256(garment_mask),
                          "sketch": _sha256(sketch), "sketch_mask": _sha256(sketch_mask), "design": _sha256(design)},
        "mask_areas": masks.areas(),
        "dilate_px": masks.dilate_px,
        "closing_kernel": kernels,
        "control_image_mode": mode if control is not None else None,
        "sketch_gating": _gating_note(config, control, masks),
        "ofr": ofr.to_dict() if ofr is not None else {"noop": [True] * b, "enabled": config.ofr.enabled},
        "cspe": cspe_info,
        "calls": stats.to_dict(),
        "timings": timings,
        "warnings": notes,
    }
    return FEATOutput(images, masks, ofr, info, extra)


def _gating_note(config: FEATConfig, control: ControlInput | None, masks: RegionMasks) -> str:
    if control is None:
        return "off (no ControlNet input)"
    if not config.ranf.enabled:
        return "none (no fusion)"
    gating = config.ranf.sketch_gating
    if gating == "two_pass" and bool(masks.removal_empty.all()):
        return "two_pass (removal region empty: one pass)"
    return gating


def _region_map(masks: RegionMasks, height: int, width: int) -> Tensor:
    """RGB picture of the latent regions at pixel size: new = green, removal = red, keep = grey."""
    import torch.nn.functional as F

    new = F.interpolate(masks.new, size=(height, width), mode="nearest")
    removal = F.interpolate(masks.removal, size=(height, width), mode="nearest")
    keep = 1 - new - removal
    colours = torch.tensor([[0.2, 0.8, 0.2], [0.9, 0.2, 0.2], [0.5, 0.5, 0.5]], device=new.device)
    stack = torch.cat([new, removal, keep], dim=1)
    return torch.einsum("bkhw,kc->bchw", stack, colours)
