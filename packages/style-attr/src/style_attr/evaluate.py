"""The toy-world demonstration (§6 step 4): slider monotonicity, content preservation, smoothness against the
prompt-level baseline, and null-parameter vs plain inversion, on held-out toy scenes.

Per held-out scene (``flowcore.toy.sample_scene(seed, i, "test")``): the exact caption, ``c_e = edge_map(render)``,
one fixed noise per scene, λ over the grid (one batch), ``w1`` = the toy's default CFG, ``w2 = 1``, ``act_t = 0.1``.

* monotonicity: per-scene Spearman ρ(λ, ``measure(out, primary)``); median (acceptance ≥ 0.9) and pooled ρ;
* content preservation: SSIM between ``out(λ)`` and ``out(0)`` averaged outside ``change_mask(out(0), λ, 0)``;
  mean over scenes and λ > 0 (acceptance ≥ 0.9);
* smoothness (ISTD-style): ``100·std_j(1 − SSIM(out(λ_j), out(λ_{j+1})))`` per scene, averaged; ours ≤ 0.8 × the
  baseline's;
* inversion: rendered held-out scenes as "real" images; latent MSE to x0 of plain (CFG-1 pivot, sampled at w1)
  over null-parameter; median ratio ≥ 2;
* report only: ``SSIM(out(1), F(out(0), 1))``.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowcore.metrics import spearman, ssim
from style_attr.composition import (
    AttributeTerm,
    edit_inverted,
    null_parameter_inversion,
    plain_inversion,
    sample,
)
from style_attr.filters import get_family
from style_attr.metrics import istd, masked_ssim, spearman_rho
from style_attr.models import MissingAssetError, asset_path, default_cfg, default_steps, load_base
from style_attr.network import AttributeControlNet

__all__ = ["ACCEPTANCE", "FULL_GRID", "QUICK_GRID", "evaluate_toy", "run_demo"]

FULL_GRID = [round(0.1 * k, 1) for k in range(13)]
QUICK_GRID = [0.0, 0.4, 0.8, 1.2]
ACCEPTANCE = {"median_rho": 0.9, "content_ssim": 0.9, "smoothness_ratio": 0.8, "inversion_ratio": 2.0}


def _scene_inputs(index: int, seed: int) -> tuple[Tensor, Tensor, str]:
    from flowcore.toy import edge_map, sample_scene

    scene = sample_scene(seed, index, "test")
    image = scene.render(size=32)[None].float()
    return image, edge_map(image), scene.caption("full")


@torch.no_grad()
def sweep_scene(model: Any, net_name: str, lams: Sequence[float], image_edges: Tensor, caption: str, *, seed: int,
                w1: float, steps: int, act_t: float = 0.1, w2: float = 1.0, baseline: Any = None) -> Tensor:
    """Images ``(len(lams), 3, 32, 32)`` of one scene over the λ grid (one batch, one noise for every λ)."""
    n = len(lams)
    g = torch.Generator().manual_seed(seed)
    x = model.prepare_noise(1, 32, 32, generator=g).expand(n, *([-1] * (len(model.latent_shape(1, 32, 32)) - 1)))
    x = x.contiguous()
    cond = model.encode_prompt([caption] * n)
    uncond = model.encode_prompt([""] * n)
    sched = model.schedule(steps, height=32, width=32)
    lam = torch.tensor(lams, dtype=torch.float32)[:, None]
    edges = image_edges.expand(n, -1, -1, -1).to(model.device)
    if baseline is not None:
        from style_attr.baseline import baseline_sample

        out = baseline_sample(model, baseline, x, sched, cond, w1=w1, lam=lam, scale=w2, act_t=act_t, uncond=uncond,
                              control_image=edges)
    else:
        out = sample(model, x, sched, cond, w1=w1, uncond=uncond, control_image=edges,
                     terms=[AttributeTerm(net_name, lam, scale=w2, act_t=act_t)])
    return model.decode_image(out, height=32, width=32).cpu()


def _metrics(images: Tensor, lams: Sequence[float], family: str) -> dict[str, float]:
    flt = get_family(family)
    values = flt.measure(images, flt.primary).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearman_rho(lams, values)
    ref = images[:1]
    preserved = []
    for j, lam in enumerate(lams):
        if lam <= 0:
            continue
        mask = flt.change_mask(ref, float(lam), 0.0)
        preserved.append(float(masked_ssim(images[j:j + 1], ref, ~mask)[0]))
    out: dict[str, float] = {"rho": rho, "content_ssim": float(np.nanmean(preserved)) if preserved else math.nan,
                             "istd": istd(images), "measures": values}  # type: ignore[dict-item]
    if 1.0 in lams:
        target = flt(ref, 1.0)
        out["ssim_to_filter_at_1"] = float(ssim(images[list(lams).index(1.0)][None], target)[0])
    return out


def evaluate_toy(model_name: str, net: str | Path | AttributeControlNet | None = None, *, family: str = "outline",
                 scenes: int = 64, lams: Sequence[float] = FULL_GRID, seed: int = 0, baseline: str | Path | None = None,
                 inversion_scenes: int = 16, inner_steps: int = 10, steps: int | None = None,
                 device: str | torch.device = "cpu", model: Any = None, progress: bool = False) -> dict[str, Any]:
    """Run §6 step 4 for one toy; returns the metrics, per-scene values and the sweep images of the first scenes.

    ``net``: a trained network folder (default: the committed asset ``<model>-outline``); ``baseline``: a prompt-level
    baseline folder (default: the committed asset, if present). Raises ``ToyWeightsMissing`` / ``MissingAssetError``
    when the toy weights or the style-attr assets are not there yet.
    """
    start = time.perf_counter()
    model = model or load_base(model_name, device=device)
    if isinstance(net, AttributeControlNet):
        attr = net
    else:
        path = Path(net) if net is not None else asset_path(f"{model_name}-{family}")
        if not (path / "attribute_config.json").is_file():
            raise MissingAssetError(
                f"no trained {family} attribute network for {model_name} at {path}. Train it once toy weights exist: "
                f"style-attr build-dataset --toy 4096 --family {family} --output-dir runs/{model_name}-data && "
                f"style-attr train --model {model_name} --data runs/{model_name}-data --output-dir {path}")
        attr = AttributeControlNet.from_pretrained(path, model.controlnet, name="attr")
    if attr.spec.family != family:
        raise ValueError(f"the network controls {attr.spec.family!r}, not {family!r}")
    base_model = None
    if baseline is not None or asset_path(f"{model_name}-{family}-baseline").is_dir():
        from style_attr.baseline import PromptLevelBaseline

        base_path = Path(baseline) if baseline is not None else asset_path(f"{model_name}-{family}-baseline")
        base_model = PromptLevelBaseline.from_pretrained(base_path).to(model.device)
    w1, n_steps = default_cfg(model), steps or default_steps(model)
    per_scene: list[dict[str, Any]] = []
    strips: list[Tensor] = []
    indices = range(scenes)
    if progress:
        from flowcore.cli import progress as bar

        indices = bar(indices, desc=f"{model_name} sweeps", unit="scene")
    for i in indices:
        _, edges, caption = _scene_inputs(i, seed)
        imgs = sweep_scene(model, attr.name, lams, edges, caption, seed=seed * 100003 + i, w1=w1, steps=n_steps)
        row = _metrics(imgs, lams, family)
        if base_model is not None:
            b_imgs = sweep_scene(model, attr.name, lams, edges, caption, seed=seed * 100003 + i, w1=w1, steps=n_steps,
                                 baseline=base_model)
            row["baseline_istd"] = istd(b_imgs)
            row["baseline_rho"] = _metrics(b_imgs, lams, family)["rho"]
        per_scene.append(row)
        if len(strips) < 4:
            strips.append(torch.cat(list(imgs), dim=-1))
    rhos = [r["rho"] for r in per_scene if not math.isnan(r["rho"])]
    pooled_l = [lam for _ in per_scene for lam in lams]
    pooled_v = [v for r in per_scene for v in r["measures"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pooled = spearman(pooled_l, pooled_v)
    result: dict[str, Any] = {
        "model": model_name, "family": family, "scenes": scenes, "lams": list(lams), "w1": w1, "steps": n_steps,
        "median_rho": statistics.median(rhos) if rhos else math.nan, "pooled_rho": pooled,
        "content_ssim": float(np.nanmean([r["content_ssim"] for r in per_scene])),
        "istd": float(np.mean([r["istd"] for r in per_scene])),
        "ssim_to_filter_at_1": float(np.mean([r.get("ssim_to_filter_at_1", math.nan) for r in per_scene])),
        "network": attr.fingerprint(),
    }
    if base_model is not None:
        result["baseline_istd"] = float(np.mean([r["baseline_istd"] for r in per_scene]))
        result["smoothness_ratio"] = result["istd"] / max(result["baseline_istd"], 1e-12)
        result["baseline_median_rho"] = statistics.median([r["baseline_rho"] for r in per_scene])
    if inversion_scenes > 0:
        result.update(_inversion_metrics(model, attr.name, inversion_scenes, seed, w1, n_steps, inner_steps))
    result["wall_s"] = round(time.perf_counter() - start, 2)
    result["passed"] = _acceptance(result)
    result["per_scene"] = [{k: v for k, v in r.items() if k != "measures"} for r in per_scene]
    result["strips"] = strips
    return result


def _inversion_metrics(model: Any, net_name: str, count: int, seed: int, w1: float, steps: int,
                       inner_steps: int) -> dict[str, Any]:
    ratios, null_mse, plain_mse = [], [], []
    sched = model.schedule(steps, height=32, width=32)
    for i in range(count):
        image, edges, caption = _scene_inputs(10_000 + i, seed)
        x0 = model.encode_image(image.to(model.device))
        cond, uncond = model.encode_prompt([caption]), model.encode_prompt([""])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inv = null_parameter_inversion(model, x0, sched, cond, [AttributeTerm(net_name, 0.0, act_t=0.0)], w1=w1,
                                           uncond=uncond, control_image=edges, num_inner_steps=inner_steps)
        plain = plain_inversion(model, x0, sched, cond, w1=w1, uncond=uncond, control_image=edges)
        m_null = float(((inv.reconstruction - x0) ** 2).mean())
        m_plain = float(((edit_inverted(model, plain) - x0) ** 2).mean())
        null_mse.append(m_null)
        plain_mse.append(m_plain)
        ratios.append(m_plain / max(m_null, 1e-20))
    return {"inversion_ratio": statistics.median(ratios), "inversion_mse_null": statistics.median(null_mse),
            "inversion_mse_plain": statistics.median(plain_mse), "inversion_scenes": count}


def _acceptance(result: dict[str, Any]) -> dict[str, bool | None]:
    def ok(key: str, good: bool) -> bool | None:
        value = result.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else good

    return {
        "median_rho>=0.9": ok("median_rho", result.get("median_rho", math.nan) >= ACCEPTANCE["median_rho"]),
        "content_ssim>=0.9": ok("content_ssim", result.get("content_ssim", math.nan) >= ACCEPTANCE["content_ssim"]),
        "smoothness<=0.8x_baseline": ok("smoothness_ratio",
                                        result.get("smoothness_ratio", math.inf) <= ACCEPTANCE["smoothness_ratio"]),
        "inversion_ratio>=2": ok("inversion_ratio", result.get("inversion_ratio", 0.0) >= ACCEPTANCE["inversion_ratio"]),
    }


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """The §6 acceptance table as Markdown."""
    head = ("| model | scenes | median ρ (≥0.9) | pooled ρ | content SSIM (≥0.9) | ISTD ours | ISTD baseline | ratio "
            "(≤0.8) | inversion plain/null (≥2) | SSIM to F(out(0),1) |")
    lines = [head, "|" + "---|" * 10]

    def f(v: Any, digits: int = 3) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    for r in results:
        lines.append(f"| {r['model']} | {r['scenes']} | {f(r.get('median_rho'))} | {f(r.get('pooled_rho'))} | "
                     f"{f(r.get('content_ssim'))} | {f(r.get('istd'), 2)} | {f(r.get('baseline_istd'), 2)} | "
                     f"{f(r.get('smoothness_ratio'), 2)} | {f(r.get('inversion_ratio'), 2)} | "
                     f"{f(r.get('ssim_to_filter_at_1'))} |")
    return "\n".join(lines)


def run_demo(models: Sequence[str], output_dir: str | Path, *, family: str = "outline", scenes: int | None = None,
             quick: bool = False, seed: int = 0, attrs: Sequence[str | Path] | None = None,
             baselines: Sequence[str | Path] | None = None, device: str | torch.device = "cpu",
             progress: bool = False) -> dict[str, Any]:
    """``style-attr demo`` / ``eval-toy``: evaluate each toy, write ``table.md``, ``results.json`` and λ-sweep strips.

    ``quick``: λ ∈ {0, 0.4, 0.8, 1.2}, 2 inversion scenes and 4 held-out scenes unless ``scenes`` is given
    (default 64 without ``quick``).
    """
    from flowcore.io import atomic_write, save_result, write_json

    out = Path(output_dir)
    lams = QUICK_GRID if quick else FULL_GRID
    n_scenes = scenes if scenes is not None else (4 if quick else 64)
    if n_scenes < 1:
        raise ValueError(f"scenes must be at least 1, got {n_scenes}")
    results = []
    for k, name in enumerate(models):
        net = attrs[k] if attrs and k < len(attrs) else None
        base = baselines[k] if baselines and k < len(baselines) else None
        res = evaluate_toy(name, net, family=family, scenes=n_scenes, lams=lams, seed=seed, baseline=base,
                           inversion_scenes=2 if quick else 16, device=device, progress=progress)
        strips = res.pop("strips")
        save_result(out / f"{name}-{family}-sweep", torch.cat(strips, dim=-2)[None] if strips else None,
                    {"model": name, "family": family, "lams": lams, "seed": seed, "package": "style-attr",
                     "rows": "held-out scenes", "columns": "λ"})
        results.append(res)
    table = results_table(results)
    atomic_write(out / "table.md", f"# style-attr toy demonstration ({family})\n\n{table}\n")
    summary = {"family": family, "quick": quick, "seed": seed, "results": results, "table": table}
    write_json(out / "results.json", summary)
    return summary
