"""Filter families: the exact image filters whose continuous parameter λ an attribute network learns (spec §2.3).

Each family wraps the toy world's filters (``flowcore.toy.apply_style`` / ``measure_style``, toyworld §4), which
work on RGB images of any size: every length scales with the short side and every random element lives in
normalised canvas coordinates. A family adds the λ-vector convention of style-attr (one column per parameter,
``(B, P)``), the per-parameter measurement and the change mask used by the content-preservation metric.

Families and parameters (the single-parameter names are ours):

=============  ====================================================  ===========
``outline``    ``width`` (ink line width ``0.6 + 2.4λ`` px at 32²)   ``width``
``contrast``   ``amount`` (detail gain ``1 + 3λ``)                   ``amount``
``watercolor`` ``wobble, edge_darkening, granulation, splatter``     ``edge_darkening``
``pattern``    ``width`` (hatch line width ``0.4 + 1.2λ`` px)        ``width``
=============  ====================================================  ===========
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FAMILY_PARAMS",
    "AttributeSpec",
    "FilterFamily",
    "ToyFilterFamily",
    "canny_edges",
    "get_family",
]

FAMILY_PARAMS: dict[str, tuple[str, ...]] = {
    "outline": ("width",),
    "contrast": ("amount",),
    "watercolor": ("wobble", "edge_darkening", "granulation", "splatter"),
    "pattern": ("width",),
}
PRIMARY: dict[str, str] = {"outline": "width", "contrast": "amount", "watercolor": "edge_darkening",
                           "pattern": "width"}
FILTER_VERSION = "flowcore.toy.styles/toyworld-4"


@dataclass(frozen=True)
class AttributeSpec:
    """What an attribute network controls: a filter family and the parameters it was trained on.

    Attributes:
        family: the filter family (``outline``, ``contrast``, ``watercolor``, ``pattern``).
        params: the parameters (a subset of the family's, in the family's order).
        ranges: the trained range of each parameter (default ``(0, 1)``).
        allowed_range: λ values outside it are refused; values outside ``[0, 1.2]`` get a warning.
    """

    family: str
    params: tuple[str, ...]
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    allowed_range: tuple[float, float] = (-0.5, 2.0)

    def __post_init__(self) -> None:
        if self.family not in FAMILY_PARAMS:
            raise ValueError(f"unknown filter family {self.family!r}; use one of {sorted(FAMILY_PARAMS)}")
        params = tuple(self.params)
        if not params:
            raise ValueError("an AttributeSpec needs at least one parameter")
        unknown = [p for p in params if p not in FAMILY_PARAMS[self.family]]
        if unknown:
            raise ValueError(f"{self.family!r} has no parameter(s) {unknown}; it has {FAMILY_PARAMS[self.family]}")
        if len(set(params)) != len(params):
            raise ValueError(f"parameters repeat in {params}")
        object.__setattr__(self, "params", params)
        ranges = {p: tuple(float(v) for v in self.ranges.get(p, (0.0, 1.0))) for p in params}
        object.__setattr__(self, "ranges", ranges)
        lo, hi = (float(v) for v in self.allowed_range)
        if not lo < hi:
            raise ValueError(f"allowed_range must be (low, high) with low < high, got {self.allowed_range}")
        object.__setattr__(self, "allowed_range", (lo, hi))

    @classmethod
    def for_family(cls, family: str, params: tuple[str, ...] | list[str] | None = None) -> AttributeSpec:
        """The spec of ``family`` with all its parameters (or the given subset)."""
        if family not in FAMILY_PARAMS:
            raise ValueError(f"unknown filter family {family!r}; use one of {sorted(FAMILY_PARAMS)}")
        return cls(family, tuple(params) if params else FAMILY_PARAMS[family])

    @property
    def num_params(self) -> int:
        return len(self.params)

    def to_dict(self) -> dict:
        return {"family": self.family, "params": list(self.params),
                "ranges": {k: list(v) for k, v in self.ranges.items()}, "allowed_range": list(self.allowed_range)}

    @classmethod
    def from_dict(cls, data: dict) -> AttributeSpec:
        return cls(data["family"], tuple(data["params"]), {k: tuple(v) for k, v in data.get("ranges", {}).items()},
                   tuple(data.get("allowed_range", (-0.5, 2.0))))  # type: ignore[arg-type]


class FilterFamily(Protocol):
    """A filter family over any ``(B,3,H,W)`` RGB images in [0, 1]."""

    name: str
    params: tuple[str, ...]
    primary: str

    def __call__(self, images: Tensor, lam: Tensor, *, seed: int | Tensor = 0) -> Tensor: ...

    def measure(self, images: Tensor, param: str, *, ref: Tensor | None = None) -> Tensor: ...

    def change_mask(self, images: Tensor, lam: Tensor, lam_ref: Tensor, *, seed: int | Tensor = 0,
                    thresh: float = 0.05) -> Tensor: ...


class ToyFilterFamily:
    """A :class:`FilterFamily` over ``flowcore.toy.apply_style`` / ``measure_style``.

    ``lam`` is ``(B, P)`` in this family's parameter order (``(P,)``, ``(B,)`` for P = 1 and scalars broadcast).
    """

    def __init__(self, name: str):
        if name not in FAMILY_PARAMS:
            raise ValueError(f"unknown filter family {name!r}; use one of {sorted(FAMILY_PARAMS)}")
        self.name = name
        self.params = FAMILY_PARAMS[name]
        self.primary = PRIMARY[name]

    def __repr__(self) -> str:
        return f"ToyFilterFamily({self.name!r}, params={self.params})"

    def lam_matrix(self, lam: Tensor | float | list | np.ndarray, batch: int) -> Tensor:
        """``lam`` as a float64 ``(batch, P)`` tensor."""
        t = torch.as_tensor(lam, dtype=torch.float64).detach().cpu()
        p = len(self.params)
        if t.ndim == 0 or (t.ndim == 1 and t.shape[0] == p and (p > 1 or batch == 1)):
            t = t.expand(batch, p)
        elif t.ndim == 1 and t.shape[0] == batch and p == 1:
            t = t[:, None]
        elif t.ndim == 2 and t.shape[1] == p and t.shape[0] in (1, batch):
            t = t.expand(batch, p)
        else:
            raise ValueError(f"{self.name}: λ must be a scalar, ({p},) or ({batch}, {p}); got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{self.name}: λ must be finite")
        return t.contiguous()

    def __call__(self, images: Tensor, lam: Tensor | float, *, seed: int | Tensor | list[int] = 0) -> Tensor:
        """Filtered images ``(B,3,H,W)`` in [0, 1] (same dtype and device as ``images``)."""
        from flowcore.toy import apply_style

        images = _as_batch(images)
        lam_m = self.lam_matrix(lam, images.shape[0])
        seeds = _seeds(seed, images.shape[0])
        return apply_style(images, self.name, lam_m, seed=seeds)

    def measure(self, images: Tensor, param: str, *, ref: Tensor | None = None) -> Tensor:
        """A ``(B,)`` float64 reading of ``param`` that increases with its λ.

        ``watercolor``/``wobble`` compares against ``ref``, the same rendition with ``wobble = 0``.
        """
        from flowcore.toy import measure_style

        if param not in self.params:
            raise ValueError(f"{self.name} has no parameter {param!r}; it has {self.params}")
        images = _as_batch(images)
        if self.name == "watercolor":
            if param == "wobble" and ref is None:
                raise ValueError("measuring watercolor/wobble needs ref= (the same rendition with wobble = 0)")
            return measure_style(images, "watercolor", ref=_as_batch(ref) if param == "wobble" else None,
                                 component=param)
        return measure_style(images, self.name)

    def change_mask(self, images: Tensor, lam: Tensor | float, lam_ref: Tensor | float, *,
                    seed: int | Tensor | list[int] = 0, thresh: float = 0.05) -> Tensor:
        """Where the filter itself changes the image between ``lam_ref`` and ``lam``: ``(B,1,H,W)`` bool.

        A pixel is in the mask when any channel of ``F(I, λ)`` and ``F(I, λ_ref)`` differs by more than
        ``thresh``; the mask is dilated by one 32-px reference pixel (``max(1, round(min(H, W)/32))`` pixels,
        square), so its area fraction does not depend on the image size.
        """
        from flowcore.images import dilate

        images = _as_batch(images)
        a = self(images, lam, seed=seed)
        b = self(images, lam_ref, seed=seed)
        changed = ((a.double() - b.double()).abs().amax(dim=1, keepdim=True) > thresh)
        return dilate(changed, max(1, round(min(images.shape[-2:]) / 32)))


_FAMILIES: dict[str, ToyFilterFamily] = {}


def get_family(name: str) -> ToyFilterFamily:
    """The filter family called ``name`` (``outline``, ``contrast``, ``watercolor``, ``pattern``)."""
    if name not in _FAMILIES:
        _FAMILIES[name] = ToyFilterFamily(name)
    return _FAMILIES[name]


def canny_edges(images: Tensor, low: int = 100, high: int = 200) -> Tensor:
    """OpenCV Canny edges of RGB images: ``(B,1,H,W)`` float in {0, 1}.

    ``images``: ``(B,3,H,W)`` in [0, 1]; they are converted to 8-bit grey (Rec.601, as OpenCV's
    ``COLOR_RGB2GRAY``) before ``cv2.Canny(gray, low, high)``. The toy models use ``flowcore.toy.edge_map``
    instead, on which their ControlNets were trained.
    """
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("canny_edges needs OpenCV: pip install opencv-python-headless") from err
    images = _as_batch(images)
    if not 0 <= low <= high:
        raise ValueError(f"Canny thresholds must satisfy 0 <= low <= high, got low={low}, high={high}")
    arr = (images.detach().to("cpu", torch.float32).clamp(0, 1) * 255.0).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).numpy()
    out = []
    for img in arr:
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        out.append(cv2.Canny(gray, int(low), int(high)) > 0)
    edges = torch.from_numpy(np.stack(out)[:, None].astype(np.float32))
    return edges.to(images.device, images.dtype if images.is_floating_point() else torch.float32)


def _as_batch(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor (B,3,H,W) in [0,1], got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B,3,H,W) RGB, got shape {tuple(images.shape)}")
    return images


def _seeds(seed: int | Tensor | list[int], batch: int) -> list[int]:
    if isinstance(seed, Tensor):
        seed = seed.detach().cpu().reshape(-1).tolist() if seed.ndim else int(seed)
    if isinstance(seed, (int, np.integer)):
        return [int(seed)] * batch
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for {batch} images")
    return seeds
