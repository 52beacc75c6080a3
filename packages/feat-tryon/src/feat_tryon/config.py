"""FEAT's configuration: the three mechanism configs, the top-level knobs and the named presets (spec §3, §5).

Every default is the spec's §3 value. :meth:`FEATConfig.preset` resolves a named ablation of spec §5 and applies
overrides, either nested (``ranf={"sketch_gating": "residual_mask"}``) or flat by a sub-config field name
(``sketch_gating="residual_mask"``; ``enabled`` is ambiguous and must be nested).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["PRESETS", "DDIConfig", "FEATConfig", "OFRConfig", "RANFConfig"]


def _choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _range(name: str, value: float | None, lo: float, hi: float) -> None:
    if value is not None and not lo <= float(value) <= hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class DDIConfig:
    """Disentangled Dual Injection (§2.3): which IP-Adapter embedding each cross-attention site reads.

    ``enabled=False`` routes the raw image embedding to every site at ``image_scale`` (the ``no_sdi`` ablation;
    with ``text_scale=1`` it is the plain "ControlNet + IP-Adapter" baseline). ``style_blocks`` /
    ``content_blocks`` are attention groups or site names (``None``: the rule of §2.3). Scales ``None`` mean
    ``FEATConfig.image_scale``. ``cspe=False`` gives the style sites ``e_img`` instead of the CSPE embedding.
    """

    enabled: bool = True
    style_blocks: tuple[str, ...] | None = None
    content_blocks: tuple[str, ...] | None = None
    style_scale: float | None = None
    content_scale: float | None = None
    other_scale: float = 0.0
    text_scale: float = 0.5
    cspe: bool = True
    kappa: float = 1.0
    sigma_frac: float = 0.05
    renorm: bool = False
    ip_mask: Literal["none", "sketch", "operating"] = "none"
    routing_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("style_blocks", "content_blocks"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))
        _range("style_scale", self.style_scale, 0.0, 4.0)
        _range("content_scale", self.content_scale, 0.0, 4.0)
        _range("other_scale", self.other_scale, 0.0, 4.0)
        _range("text_scale", self.text_scale, 0.0, 4.0)
        _range("kappa", self.kappa, 0.0, 2.0)
        _range("sigma_frac", self.sigma_frac, 0.0, 0.25)
        _choice("ip_mask", self.ip_mask, ("none", "sketch", "operating"))


@dataclass(frozen=True)
class OFRConfig:
    """Orthogonal Fashion Removal (§2.2): ``z̃ = z_p − α·⟨z_p − c₀, û⟩·û`` around ``c₀ = z_w`` (white) or 0."""

    enabled: bool = True
    alpha: float = 1.0
    mode: Literal["global", "per_pixel"] = "global"
    center: Literal["white", "origin"] = "white"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        _range("alpha", self.alpha, 0.0, 2.0)
        _choice("OFR mode", self.mode, ("global", "per_pixel"))
        _choice("OFR center", self.center, ("white", "origin"))
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")


@dataclass(frozen=True)
class RANFConfig:
    """Regional Adaptive Noise Fusion (§2.4): the three-region sampling loop and its sketch gating."""

    enabled: bool = True
    sketch_gating: Literal["two_pass", "residual_mask", "none"] = "two_pass"
    batch_passes: bool = True
    reinject_noise: Literal["fresh", "fixed"] = "fresh"
    final_keep: Literal["clean", "noisy"] = "clean"
    keep_source: Literal["ofr", "person"] = "ofr"
    init_from: Literal["ofr", "person", "noise"] = "ofr"
    init_strength: float = 1.0
    dilate_px: int | None = None
    close_max_px: int | None = None
    mask_pooling: Literal["auto", "area", "nearest", "max"] = "auto"
    paste_back: Literal["off", "hard", "feather"] = "off"
    operating_area: Literal["union", "sketch"] = "union"

    def __post_init__(self) -> None:
        _choice("sketch_gating", self.sketch_gating, ("two_pass", "residual_mask", "none"))
        _choice("reinject_noise", self.reinject_noise, ("fresh", "fixed"))
        _choice("final_keep", self.final_keep, ("clean", "noisy"))
        _choice("keep_source", self.keep_source, ("ofr", "person"))
        _choice("init_from", self.init_from, ("ofr", "person", "noise"))
        _choice("mask_pooling", self.mask_pooling, ("auto", "area", "nearest", "max"))
        _choice("paste_back", self.paste_back, ("off", "hard", "feather"))
        _choice("operating_area", self.operating_area, ("union", "sketch"))
        if not 0.0 < float(self.init_strength) <= 1.0:
            raise ValueError(f"init_strength must lie in (0, 1], got {self.init_strength}")
        if self.dilate_px is not None and not 0 <= int(self.dilate_px) <= 64:
            raise ValueError(f"dilate_px must lie in [0, 64], got {self.dilate_px}")
        if self.close_max_px is not None and int(self.close_max_px) < 0:
            raise ValueError(f"close_max_px must be >= 0, got {self.close_max_px}")


@dataclass(frozen=True)
class FEATConfig:
    """All knobs of one FEAT run (defaults: the paper's setting, spec §3).

    ``control_image_mode``: ``filled`` (the sketch region white on black, edges blurred by 0.5% of the short
    side), ``outline`` (the sketch lines), ``user`` (``control_image=`` as given), ``toy`` (``edge_map`` of the
    sketch region, what toy-unet's edge ControlNet was trained on) or ``auto`` (``toy`` on toy models, else
    ``filled``).
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    sketch_scale: float = 0.7
    image_scale: float = 0.5
    control_image_mode: Literal["auto", "filled", "outline", "user", "toy"] = "auto"
    ddi: DDIConfig = field(default_factory=DDIConfig)
    ofr: OFRConfig = field(default_factory=OFRConfig)
    ranf: RANFConfig = field(default_factory=RANFConfig)

    def __post_init__(self) -> None:
        if not 1 <= int(self.num_inference_steps) <= 1000:
            raise ValueError(f"num_inference_steps must lie in [1, 1000], got {self.num_inference_steps}")
        if self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 = no CFG), got {self.guidance_scale}")
        _range("sketch_scale", self.sketch_scale, 0.0, 2.0)
        _range("image_scale", self.image_scale, 0.0, 1.5)
        _choice("control_image_mode", self.control_image_mode, ("auto", "filled", "outline", "user", "toy"))
        for name, cls in (("ddi", DDIConfig), ("ofr", OFRConfig), ("ranf", RANFConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")

    # --- derived values -----------------------------------------------------------------------------------------
    @property
    def style_scale(self) -> float:
        return self.image_scale if self.ddi.style_scale is None else float(self.ddi.style_scale)

    @property
    def content_scale(self) -> float:
        return self.image_scale if self.ddi.content_scale is None else float(self.ddi.content_scale)

    @property
    def cfg_on(self) -> bool:
        return self.guidance_scale != 1.0

    # --- construction --------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str = "feat", **overrides: Any) -> FEATConfig:
        """The named preset of spec §5 (``feat``, ``baseline``, ``baseline_sketch_region``, ``no_ofr``,
        ``no_ranf``, ``two_region``, ``paper_literal``, ``no_sdi``, ``no_cspe``, ``feat_residual_mask``) with
        ``overrides`` applied on top (``None`` values are ignored, so CLI flags that were not given pass through)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; use one of {sorted(PRESETS)}")
        base = cls()
        changes = PRESETS[name]
        config = base.with_overrides(**changes)
        return config.with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> FEATConfig:
        """A copy with top-level fields, nested sub-config dicts or flat sub-config field names changed."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {"ddi": {}, "ofr": {}, "ranf": {}}
        owners = _field_owners()
        for key, value in overrides.items():
            if value is None:
                continue
            if key in nested:
                if isinstance(value, Mapping):
                    nested[key].update({k: v for k, v in value.items() if v is not None})
                else:
                    top[key] = value
            elif key in _TOP_FIELDS:
                top[key] = value
            elif key in owners:
                if len(owners[key]) > 1:
                    raise ValueError(f"{key!r} exists in {owners[key]}: pass it nested, e.g. ranf={{'{key}': ...}}")
                nested[owners[key][0]][key] = value
            else:
                raise ValueError(f"unknown FEAT option {key!r}; options: {sorted([*_TOP_FIELDS, *owners])}")
        config = dataclasses.replace(self, **top) if top else self
        subs = {k: dataclasses.replace(getattr(config, k), **v) for k, v in nested.items() if v}
        return dataclasses.replace(config, **subs) if subs else config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FEATConfig:
        return cls(**{k: v for k, v in data.items()})


_TOP_FIELDS = ("num_inference_steps", "guidance_scale", "sketch_scale", "image_scale", "control_image_mode")


def _field_owners() -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for owner, cls in (("ddi", DDIConfig), ("ofr", OFRConfig), ("ranf", RANFConfig)):
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(owner)
    return owners


_BASELINE: dict[str, Any] = {
    "ddi": {"enabled": False, "text_scale": 1.0},
    "ofr": {"enabled": False},
    "ranf": {"sketch_gating": "none", "keep_source": "person", "init_from": "person"},
}

PRESETS: dict[str, dict[str, Any]] = {
    "feat": {},
    "baseline": _BASELINE,
    "baseline_sketch_region": {**_BASELINE, "ranf": {**_BASELINE["ranf"], "operating_area": "sketch"}},
    "no_ofr": {"ofr": {"enabled": False}},
    "no_ranf": {"ranf": {"enabled": False}},
    "two_region": {"ranf": {"sketch_gating": "none"}},
    "paper_literal": {"ofr": {"center": "origin"}},
    "no_sdi": {"ddi": {"enabled": False}},
    "no_cspe": {"ddi": {"cspe": False}},
    "feat_residual_mask": {"ranf": {"sketch_gating": "residual_mask"}},
}
"""Spec §5's preset table: the change from ``feat`` of each named ablation."""
