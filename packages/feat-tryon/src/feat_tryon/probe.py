"""Block-sensitivity probe (spec §2.6): which attention groups carry style and which carry content.

For each candidate (an attention group, or a site with ``granularity="site"``) the raw design embedding is routed
to it alone at λ = ``scale`` (τ = 1, empty prompt) and the FEAT loop runs on N probe pairs with fixed seeds; one
more run has no injection. A style score S and a content score C per run give ΔS, ΔC against no injection; the
style block is argmax(ΔS − ΔC) and the content blocks the top 3 by ΔC. Cost: (candidates + 1)·N·steps samples.

Scorers: toy (the judge): style = design-colour accuracy in ``M_s``, content = motif fraction. Real models (no
downloaded network): style = CIELAB a*b* histogram intersection (16×16 bins) of design vs the ``M_s`` region;
content = SSIM of the CSPE proxies of the design (warped to the ``M_s`` box) and of the region.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from feat_tryon.config import FEATConfig
from feat_tryon.core import run_feat
from feat_tryon.cspe import content_proxy, srgb_to_linear
from feat_tryon.routing import BlockRouting, attention_groups, cross_sites

__all__ = ["ProbeReport", "ProbeSample", "lab_histogram_intersection", "probe_blocks", "proxy_ssim", "toy_samples"]

Scorer = Callable[[Tensor, "ProbeSample"], float]


@dataclass
class ProbeSample:
    """One probe pair: person (3,H,W), garment mask and sketch mask (1,H,W), design (3,h,w) in [0,1].
    ``palette``/``motif`` are the toy judge's design palette and motif colour (toy scorers only)."""

    person: Tensor
    garment_mask: Tensor
    sketch_mask: Tensor
    design: Tensor
    palette: tuple[str, ...] = ()
    motif: str | None = None


@dataclass
class ProbeReport:
    """Scores per candidate and the routing they suggest."""

    candidates: list[str]
    style: dict[str, float]
    content: dict[str, float]
    base_style: float
    base_content: float
    routing: BlockRouting
    rule: BlockRouting | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def delta_style(self) -> dict[str, float]:
        return {c: self.style[c] - self.base_style for c in self.candidates}

    @property
    def delta_content(self) -> dict[str, float]:
        return {c: self.content[c] - self.base_content for c in self.candidates}

    def agreement(self) -> dict[str, Any]:
        """How the probe's routing agrees with the rule: same style block, content overlap."""
        if self.rule is None:
            return {}
        return {"style_same": set(self.routing.style) == set(self.rule.style),
                "content_overlap": len(set(self.routing.content) & set(self.rule.content)),
                "content_of": len(self.rule.content)}

    def table(self) -> list[dict[str, Any]]:
        ds, dc = self.delta_style, self.delta_content
        return [{"candidate": c, "style": self.style[c], "content": self.content[c], "d_style": ds[c],
                 "d_content": dc[c], "d_style_minus_d_content": ds[c] - dc[c],
                 "role": "style" if c in self.routing.style else ("content" if c in self.routing.content else "")}
                for c in self.candidates]

    def to_dict(self) -> dict[str, Any]:
        return {"base_style": self.base_style, "base_content": self.base_content, "table": self.table(),
                "routing": self.routing.to_dict(), "rule": self.rule.to_dict() if self.rule else None,
                "agreement": self.agreement(), **self.info}


# --- scorers ---------------------------------------------------------------------------------------------------------
def _rgb_to_ab(img: Tensor) -> Tensor:
    """CIELAB (a*, b*) of (3,H,W) sRGB [0,1] (D65) → (2,H,W)."""
    lin = srgb_to_linear(img.double().clamp(0, 1))
    m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
                     dtype=lin.dtype)
    xyz = torch.einsum("ij,jhw->ihw", m, lin) / torch.tensor([0.95047, 1.0, 1.08883], dtype=lin.dtype)[:, None, None]
    eps = 216 / 24389
    f = torch.where(xyz > eps, xyz.clamp(min=1e-12) ** (1 / 3), (24389 / 27 * xyz + 16) / 116)
    return torch.stack([500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def lab_histogram_intersection(a: Tensor, b: Tensor, mask_b: Tensor | None = None, bins: int = 16) -> float:
    """Histogram intersection of the a*b* distributions of image ``a`` and the (masked) image ``b``; 1 = same."""
    def hist(img: Tensor, mask: Tensor | None) -> Tensor:
        ab = _rgb_to_ab(img).flatten(1)
        if mask is not None:
            ab = ab[:, mask.flatten() > 0.5]
        idx = ((ab + 128) / 256 * bins).long().clamp(0, bins - 1)
        h = torch.bincount(idx[0] * bins + idx[1], minlength=bins * bins).double()
        return h / h.sum().clamp(min=1)

    return float(torch.minimum(hist(a, None), hist(b, mask_b)).sum())


def proxy_ssim(output: Tensor, sample: ProbeSample, sigma_frac: float = 0.05) -> float:
    """SSIM of the CSPE proxy of the design, warped to the ``M_s`` box, and the proxy of the output there."""
    from flowcore.metrics import ssim

    ms = sample.sketch_mask[0] > 0.5
    if not ms.any():
        return math.nan
    rows, cols = ms.any(dim=1).nonzero(), ms.any(dim=0).nonzero()
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    box = output[None, :, y0:y1, x0:x1].float()
    design = F.interpolate(sample.design[None].float(), size=box.shape[-2:], mode="bilinear", align_corners=False)
    pa, pb = content_proxy(box, sigma_frac), content_proxy(design.clamp(0, 1), sigma_frac)
    weight = sample.sketch_mask[None, :, y0:y1, x0:x1].float()
    return float(ssim(pa, pb, mask=weight)[0])


def real_style_score(output: Tensor, sample: ProbeSample) -> float:
    return lab_histogram_intersection(sample.design, output, sample.sketch_mask)


def toy_style_score(output: Tensor, sample: ProbeSample) -> float:
    from feat_tryon.toy import _labels_in, _share
    from flowcore.toy import color_map

    labels = color_map(output[None].clamp(0, 1))[0]
    return _share(_labels_in(labels, sample.palette), sample.sketch_mask[0] > 0.5)


def toy_content_score(output: Tensor, sample: ProbeSample) -> float:
    from feat_tryon.toy import _labels_in, _share
    from flowcore.toy import color_map

    if sample.motif is None:
        return math.nan
    labels = color_map(output[None].clamp(0, 1))[0]
    return _share(_labels_in(labels, (sample.motif,)), sample.sketch_mask[0] > 0.5)


def toy_samples(n: int = 16, *, seed: int = 0) -> list[ProbeSample]:
    """Probe pairs from the toy demonstration's motif scenes (scene designs, so content is measurable)."""
    from feat_tryon.toy import build_scenes

    scenes = build_scenes(n, seed=seed, categories=("same", "shrink", "grow"), design_kinds=("scene",), start=1000)
    return [ProbeSample(s.person_image, s.garment_mask, s.sketch_mask, s.design_image, s.design_palette,
                        s.motif_color) for s in scenes]


# --- the probe -------------------------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _run(adapter: Any, samples: Sequence[ProbeSample], routing: BlockRouting, config: FEATConfig, seed: int,
         batch: int) -> list[Tensor]:
    outputs: list[Tensor] = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        generator = torch.Generator(device="cpu").manual_seed(seed + start)
        out = run_feat(adapter, torch.stack([s.person for s in chunk]), torch.stack([s.garment_mask for s in chunk]),
                       design=torch.stack([s.design for s in chunk]), prompt="",
                       sketch_mask=torch.stack([s.sketch_mask for s in chunk]), config=config, routing=routing,
                       generator=generator)
        outputs += list(out.images.cpu())
    return outputs


def probe_blocks(
    pipe: Any,
    samples: Sequence[ProbeSample] | str,
    *,
    granularity: str = "group",
    scale: float = 1.0,
    steps: int = 30,
    scorers: tuple[Scorer, Scorer] | None = None,
    seed: int = 0,
    batch: int = 8,
    progress: Callable[[Any], Any] | None = None,
) -> ProbeReport:
    """Score every candidate block (spec §2.6).

    Args:
        pipe: a :class:`~feat_tryon.pipelines.FEATPipeline` or a flowcore UNet adapter with an IP-Adapter.
        samples: probe pairs, or ``"toy"`` for 16 toy motif scenes.
        granularity: ``"group"`` (attention groups) or ``"site"``.
        scale: λ of the probed candidate; steps: sampling steps.
        scorers: ``(style, content)`` callables ``(output (3,H,W), sample) -> float``; default: the toy judge for
            toy models, CIELAB histogram / proxy SSIM otherwise.
    """
    adapter = pipe.adapter() if hasattr(pipe, "adapter") and callable(pipe.adapter) else pipe
    if isinstance(samples, str):
        if samples != "toy":
            raise ValueError(f"samples must be a list of ProbeSample or 'toy', got {samples!r}")
        samples = toy_samples()
    if not samples:
        raise ValueError("probe_blocks needs at least one sample")
    toy = bool(getattr(adapter, "is_toy", False))
    style_fn, content_fn = scorers or ((toy_style_score, toy_content_score) if toy else
                                       (real_style_score, proxy_ssim))
    sites = list(cross_sites(adapter.denoiser))
    if granularity == "group":
        candidates = list(attention_groups(sites))
    elif granularity == "site":
        candidates = sites
    else:
        raise ValueError(f"granularity must be 'group' or 'site', got {granularity!r}")
    config = FEATConfig.preset("feat", num_inference_steps=steps,
                               ddi={"cspe": False, "text_scale": 1.0, "style_scale": 0.0, "content_scale": scale})
    iterate = progress or (lambda x: x)

    def score(routing: BlockRouting) -> tuple[float, float]:
        outs = _run(adapter, samples, routing, config, seed, batch)
        return (_mean([style_fn(o, s) for o, s in zip(outs, samples)]),
                _mean([content_fn(o, s) for o, s in zip(outs, samples)]))

    base_style, base_content = score(BlockRouting((), (), 0.0, 0.0, 0.0, 1.0))
    style: dict[str, float] = {}
    content: dict[str, float] = {}
    for cand in iterate(candidates):
        style[cand], content[cand] = score(BlockRouting((), (cand,), 0.0, scale, 0.0, 1.0))

    def finite(v: float) -> float:
        return -math.inf if math.isnan(v) else v

    ds = {c: finite(style[c] - base_style) for c in candidates}
    dc = {c: finite(content[c] - base_content) for c in candidates}
    style_block = max(candidates, key=lambda c: ds[c] - dc[c] if math.isfinite(ds[c] - dc[c]) else -math.inf)
    content_blocks = sorted([c for c in candidates if c != style_block], key=lambda c: -dc[c])[:3]
    routing = BlockRouting((style_block,), tuple(content_blocks), 0.5, 0.5)
    rule = None
    try:
        rule = BlockRouting.default_for(adapter.denoiser.config)
    except (ValueError, KeyError):
        rule = None
    info = {"granularity": granularity, "scale": scale, "steps": steps, "n_samples": len(samples),
            "sample_steps": (len(candidates) + 1) * len(samples) * steps}
    return ProbeReport(candidates, style, content, base_style, base_content, routing, rule, info)
