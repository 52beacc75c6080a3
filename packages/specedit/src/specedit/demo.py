"""The toy-world demonstration (spec §6): SpecEdit vs the 50-step baseline vs plain step reduction on toy-kontext.

Rows: full-resolution 50 steps; SpecEdit at 30/18/11/9 NFE (default config); plain step reduction at the same NFE;
plain reduction at equal wall time (the largest step count whose fitted time is at most SpecEdit's); SpecEdit with
``reference_policy="mirror_mask"``. Wall times come from complete runs (draft and verification included) on a
timing subset, methods interleaved per pair after warm-up calls; quality runs on all pairs compute the draft mask
once per pair and inject it with ``mask_override`` (the mask does not depend on N; the demo checks on the first
pair that the injected run equals the complete run bit for bit).

Per row: judge edit success with the paired difference to the baseline and a 95 % bootstrap CI, background PSNR,
median/total wall time and their ratio, the analytic FLOP ratio from the hook's token counts (cross-checked against
``flowcore.bench.count_flops``), mean/max ρ and the draft-mask recall of exactly changed cells. Acceptance T1–T4
are evaluated at the end. ``quick=True`` is the CI smoke run (16 pairs, baseline and SpecEdit at 18 NFE).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specedit.config import SpecEditConfig
from specedit.flops import ArchSpec, forward_flops, measured_forward_flops
from specedit.stats import SpecEditStats

__all__ = ["DemoSettings", "ToyRunner", "acceptance", "run_demo"]

BASELINE_STEPS = 50
NFES = (30, 18, 11, 9)
GUIDANCE = 2.5
SIZE = 32
GALLERY_PAIRS = 6  # pairs shown in grid.png
GALLERY_COLUMNS = ("source", "exact target", "full-50", "SpecEdit", "fine cells")


@dataclass
class DemoSettings:
    """What the demo runs; ``quick`` = 16 pairs, baseline + SpecEdit@18 only."""

    pairs: int = 512
    split: str = "test"
    seed: int = 0
    quick: bool = False
    timing_pairs: int = 64
    warmup: int = 3
    nfes: tuple[int, ...] = NFES
    threads: int | None = 2
    config: SpecEditConfig = field(default_factory=SpecEditConfig)

    def __post_init__(self) -> None:
        if self.quick:
            self.pairs = min(self.pairs, 16)
            self.timing_pairs = min(self.timing_pairs, 4)
            self.nfes = (18,)
            self.warmup = 1
        if self.pairs < 1:
            raise ValueError(f"pairs must be >= 1, got {self.pairs}")


@dataclass
class RunResult:
    image: torch.Tensor
    wall_s: float
    stats: SpecEditStats | None = None


class ToyRunner:
    """toy-kontext with a SpecEdit pipeline and an unhooked stock pipeline (its own copy of the transformer)."""

    def __init__(self, bundle: Any, config: SpecEditConfig):
        from specedit.pipelines import SpecEditToyKontextPipeline

        self.bundle = bundle
        self.config = config
        plain_bundle = copy.copy(bundle)
        plain_bundle.denoiser = copy.deepcopy(bundle.denoiser)  # before the hook goes on the original
        self.plain = plain_bundle.pipeline()
        self.plain.set_progress_bar_config(disable=True)
        self.spec = SpecEditToyKontextPipeline.from_toy(bundle=bundle, specedit_config=config)
        self.spec.set_progress_bar_config(disable=True)
        self.arch = ArchSpec.from_transformer(bundle.denoiser)
        self._embeds: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def embeds(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt not in self._embeds:
            self._embeds[prompt] = self.bundle.encode_prompt([prompt])
        return self._embeds[prompt]

    def _common(self, pair: Any, seed: int, steps: int) -> dict[str, Any]:
        embeds, pooled = self.embeds(pair.instruction)
        return dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=steps,
                    guidance_scale=GUIDANCE, height=SIZE, width=SIZE, max_area=SIZE * SIZE, _auto_resize=False,
                    generator=torch.Generator().manual_seed(seed), output_type="pt")

    @torch.no_grad()
    def plain_run(self, pair: Any, seed: int, steps: int) -> RunResult:
        kw = self._common(pair, seed, steps)
        image = (pair.source_image[None] * 2 - 1).to(self.plain.transformer.dtype)
        start = time.perf_counter()
        out = self.plain(image=image, **kw).images
        return RunResult(out[0].float().clamp(0, 1), time.perf_counter() - start)

    @torch.no_grad()
    def spec_run(self, pair: Any, seed: int, steps: int, config: SpecEditConfig | None = None) -> RunResult:
        kw = self._common(pair, seed, steps)
        start = time.perf_counter()
        out = self.spec(image=pair.source_image[None], specedit_config=config or self.config, **kw)
        wall = time.perf_counter() - start
        return RunResult(out.images[0].float().clamp(0, 1), wall, out.specedit[0] if out.specedit else None)

    def run_flops(self, stats: SpecEditStats, draft_flops: int | None) -> int:
        total = 0
        for call in stats.calls:
            total += forward_flops(self.arch, call["target"] + call["reference"], call["text"])
        return total + int(draft_flops or 0)

    def baseline_flops(self, steps: int = BASELINE_STEPS) -> int:
        n_txt = int(self.embeds("")[0].shape[1])
        return steps * forward_flops(self.arch, 2 * (SIZE // 2) ** 2, n_txt)


def _changed_cells(pair: Any, grid: tuple[int, int]) -> torch.Tensor:
    from flowcore.images import mask_to_grid

    return mask_to_grid(pair.pixel_mask[None].float(), grid, mode="any")[0, 0] > 0


def _fit_time(steps: Sequence[int], times: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``t = a + b·steps``."""
    a_mat = np.stack([np.ones(len(steps)), np.asarray(steps, dtype=float)], 1)
    coef, *_ = np.linalg.lstsq(a_mat, np.asarray(times, dtype=float), rcond=None)
    return float(coef[0]), float(coef[1])


def _summary(name: str, successes: list[bool], base_success: list[bool], psnrs: list[float],
             walls: list[float], base_walls: list[float], flop_ratio: float | None, rhos: list[float],
             recalls: list[float], extra: dict | None = None) -> dict[str, Any]:
    from flowcore.metrics import bootstrap_ci

    succ = np.asarray(successes, dtype=float)
    base = np.asarray(base_success, dtype=float)
    diff, lo, hi = bootstrap_ci(succ, paired=base, n=2000) if len(succ) > 1 else (0.0, 0.0, 0.0)
    finite = [p for p in psnrs if math.isfinite(p)]
    row = {
        "method": name,
        "success_%": round(100 * float(succ.mean()), 2),
        "diff_pts": round(100 * diff, 2),
        "ci95_pts": [round(100 * lo, 2), round(100 * hi, 2)],
        "bg_psnr_db": round(float(np.mean(finite)), 3) if finite else float("nan"),
        "median_wall_ms": round(1e3 * float(np.median(walls)), 2) if walls else None,
        "total_wall_s": round(float(np.sum(walls)), 3) if walls else None,
        "wall_ratio": round(float(np.median(base_walls) / np.median(walls)), 3) if walls and base_walls else None,
        "flop_ratio": None if flop_ratio is None else round(flop_ratio, 3),
        "rho_mean": round(float(np.mean(rhos)), 4) if rhos else None,
        "rho_max": round(float(np.max(rhos)), 4) if rhos else None,
        "recall": round(float(np.mean(recalls)), 4) if recalls else None,
    }
    row.update(extra or {})
    return row


def run_demo(settings: DemoSettings, *, bundle: Any = None, progress: Callable | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demonstration; returns the report dict (rows, acceptance, settings, timings)."""
    from specedit import toy

    started = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if bundle is None:
        bundle = toy.load_bundle("toy-kontext")
    factor, factor_reason = toy.draft_factor_for(bundle)
    if not (factor == 2 and settings.config.draft_factor == 4):  # keep an explicit choice unless out of distribution
        factor = settings.config.draft_factor
    config = settings.config.replace(draft_factor=factor, keep_maps=False)
    runner = ToyRunner(bundle, config)
    pairs = [toy.sample_edit(settings.seed, i, settings.split) for i in range(settings.pairs)]
    seeds = [settings.seed * 100_003 + i for i in range(settings.pairs)]
    wrap = progress or (lambda it, **kw: it)
    timing = min(settings.timing_pairs, len(pairs))

    # ---- warm-up ----
    for _ in range(settings.warmup):
        runner.plain_run(pairs[0], seeds[0], 4)
        runner.spec_run(pairs[0], seeds[0], settings.nfes[0])

    # ---- quality pass: baseline, masks once per pair, SpecEdit/plain at every NFE ----
    grid = (SIZE // 4, SIZE // 4)
    results: dict[str, list[Any]] = {}
    masks: list[torch.Tensor] = []
    mask_stats: list[SpecEditStats] = []
    walls: dict[str, list[float]] = {}

    def judge(name: str, index: int, image: torch.Tensor) -> None:
        res = toy.edit_success(image, pairs[index])
        results.setdefault(name, []).append((bool(res.success), float(res.bg_psnr)))

    injected_equal = None
    gallery: list[torch.Tensor] = []
    for index in wrap(range(len(pairs)), desc="pairs"):
        pair, seed = pairs[index], seeds[index]
        timed = index < timing
        base = runner.plain_run(pair, seed, BASELINE_STEPS)
        judge("full-50", index, base.image)
        if timed:
            walls.setdefault("full-50", []).append(base.wall_s)
        first = runner.spec_run(pair, seed, settings.nfes[0])
        assert first.stats is not None and first.stats.mask is not None
        mask = first.stats.fine_cells
        masks.append(mask)
        mask_stats.append(first.stats)
        if index < GALLERY_PAIRS:
            gallery.append(_gallery_row(pair, base.image, first.image, mask))
        for nfe in settings.nfes:
            if nfe == settings.nfes[0]:
                spec = first
            elif timed:
                spec = runner.spec_run(pair, seed, nfe)
            else:
                spec = runner.spec_run(pair, seed, nfe, config.replace(mask_override=mask))
            judge(f"specedit-{nfe}", index, spec.image)
            if timed:
                walls.setdefault(f"specedit-{nfe}", []).append(spec.wall_s)
            if injected_equal is None and nfe != settings.nfes[0]:
                again = runner.spec_run(pair, seed, nfe, config.replace(mask_override=mask))
                injected_equal = bool(torch.equal(again.image, spec.image))
            if not settings.quick:
                plain = runner.plain_run(pair, seed, nfe)
                judge(f"plain-{nfe}", index, plain.image)
                if timed:
                    walls.setdefault(f"plain-{nfe}", []).append(plain.wall_s)
                mirror_cfg = config.replace(reference_policy="mirror_mask")
                mirror = runner.spec_run(pair, seed, nfe, mirror_cfg if timed else
                                         mirror_cfg.replace(mask_override=mask))
                judge(f"specedit-mirror-{nfe}", index, mirror.image)
                if timed:
                    walls.setdefault(f"specedit-mirror-{nfe}", []).append(mirror.wall_s)

    # ---- plain reduction at equal wall time ----
    equal_steps: dict[int, int] = {}
    if not settings.quick:
        plain_steps = [BASELINE_STEPS, *settings.nfes]
        plain_times = [float(np.median(walls["full-50"]))] + [float(np.median(walls[f"plain-{n}"]))
                                                               for n in settings.nfes]
        a, b = _fit_time(plain_steps, plain_times)
        for nfe in settings.nfes:
            budget = float(np.median(walls[f"specedit-{nfe}"]))
            equal_steps[nfe] = max(1, min(BASELINE_STEPS, int(math.floor((budget - a) / b)) if b > 0 else 1))
        for index in wrap(range(len(pairs)), desc="equal-time"):
            for nfe, k in equal_steps.items():
                name = f"plain-eqtime-{nfe}"
                if k in settings.nfes and name != f"plain-{k}" and f"plain-{k}" in results:
                    results.setdefault(name, []).append(results[f"plain-{k}"][index])
                    continue
                run = runner.plain_run(pairs[index], seeds[index], k)
                judge(name, index, run.image)
                if index < timing:
                    walls.setdefault(name, []).append(run.wall_s)
        for nfe in settings.nfes:
            walls.setdefault(f"plain-eqtime-{nfe}", walls.get(f"plain-{equal_steps[nfe]}", []))

    # ---- FLOPs and mask quality ----
    base_flops = runner.baseline_flops()
    draft_flops = [s.flops_draft for s in mask_stats]
    recalls_edit, recalls_union, rhos = [], [], []
    kinds: dict[str, list[float]] = {}
    for pair, stats in zip(pairs, mask_stats):
        changed = _changed_cells(pair, grid)
        edit = stats.edit_cells if stats.edit_cells is not None else stats.fine_cells
        union = stats.fine_cells
        if changed.any():
            recalls_edit.append(float((edit & changed).sum() / changed.sum()))
            recalls_union.append(float((union & changed).sum() / changed.sum()))
        rhos.append(stats.rho)
        kinds.setdefault(pair.kind, []).append(stats.rho)
    flop_check = _flop_crosscheck(runner, mask_stats[0])

    def flop_ratio(nfe: int, policy: str = "full") -> float:
        cfg = config.replace(reference_policy=policy)
        ratios = []
        for stats, dflops in zip(mask_stats, draft_flops):
            calls = _predicted_calls(cfg, stats, nfe)
            run = sum(forward_flops(runner.arch, t + r, x) for t, r, x in calls) + int(dflops or 0)
            ratios.append(base_flops / run)
        return float(np.mean(ratios))

    base_success = [s for s, _ in results["full-50"]]
    rows = [_summary("full-50", base_success, base_success, [p for _, p in results["full-50"]],
                     walls["full-50"], walls["full-50"], 1.0, [], [], {"steps": BASELINE_STEPS})]
    for nfe in settings.nfes:
        for name, ratio, extra in (
            (f"specedit-{nfe}", flop_ratio(nfe), {"steps": nfe}),
            (f"plain-{nfe}", BASELINE_STEPS / nfe, {"steps": nfe}),
            (f"plain-eqtime-{nfe}", BASELINE_STEPS / equal_steps.get(nfe, nfe), {"steps": equal_steps.get(nfe)}),
            (f"specedit-mirror-{nfe}", flop_ratio(nfe, "mirror_mask"), {"steps": nfe}),
        ):
            if name not in results:
                continue
            spec_like = name.startswith("specedit")
            rows.append(_summary(name, [s for s, _ in results[name]], base_success, [p for _, p in results[name]],
                                 walls.get(name, []), walls["full-50"], ratio, rhos if spec_like else [],
                                 recalls_edit if spec_like else [], extra))
    pareto = sorted(({"method": r["method"].rsplit("-", 1)[0], "steps": r.get("steps"),
                      "median_wall_ms": r["median_wall_ms"], "success_%": r["success_%"]}
                     for r in rows if r["median_wall_ms"] is not None), key=lambda p: p["median_wall_ms"])
    rho_non_bg = [r for k, v in kinds.items() if k != "background" for r in v]
    report = {
        "settings": {"pairs": settings.pairs, "split": settings.split, "seed": settings.seed, "quick": settings.quick,
                     "timing_pairs": timing, "warmup": settings.warmup, "threads": torch.get_num_threads(),
                     "draft_factor": factor, "draft_factor_reason": factor_reason, "config": config.to_dict(),
                     "model_info": getattr(bundle, "info", {})},
        "rows": rows,
        "equal_time_steps": equal_steps,
        "pareto": pareto,
        "mask": {"recall_edit": float(np.mean(recalls_edit)) if recalls_edit else None,
                 "recall_union": float(np.mean(recalls_union)) if recalls_union else None,
                 "rho_mean": float(np.mean(rhos)), "rho_max": float(np.max(rhos)),
                 "rho_mean_non_background": float(np.mean(rho_non_bg)) if rho_non_bg else None,
                 "rho_per_kind": {k: round(float(np.mean(v)), 4) for k, v in sorted(kinds.items())}},
        "flop_crosscheck": flop_check,
        "injected_mask_bitwise_equal": injected_equal,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    report["acceptance"] = acceptance(report) if not settings.quick else {"note": "quick run: mechanics only"}
    report["gallery"] = {"columns": list(GALLERY_COLUMNS), "nfe": settings.nfes[0],
                         "pairs": [pairs[i].instruction for i in range(len(gallery))]}
    report["_gallery_images"] = torch.stack(gallery) if gallery else None  # not JSON; write_report saves it
    return report


def _gallery_row(pair: Any, baseline: torch.Tensor, spec: torch.Tensor, fine_cells: torch.Tensor) -> torch.Tensor:
    """``(5, 3, S, S)``: source, exact target, full-50, SpecEdit, and its fine cells (white) upsampled."""
    cells = fine_cells.float()[None, None]
    cells = torch.nn.functional.interpolate(cells, size=tuple(baseline.shape[-2:]), mode="nearest")[0]
    return torch.stack([pair.source_image, pair.target_image, baseline.cpu(), spec.cpu(), cells.expand(3, -1, -1)])


def _predicted_calls(config: SpecEditConfig, stats: SpecEditStats, nfe: int) -> list[tuple[int, int, int]]:
    """Per-call (target, reference, text) token counts of a run at ``nfe`` steps with the mask of ``stats``."""
    from specedit.layout import Grid, plan_call

    grid = Grid(*stats.grid)
    ref = Grid(*stats.reference_grid) if stats.reference_grid else None
    split = config.split(nfe)
    n_txt = stats.calls[0]["text"] if stats.calls else 0
    calls = []
    for stage, count in (("coarse", split.coarse), ("mixed", split.mixed), ("full", split.full)):
        if count == 0:
            continue
        if stage == "full":
            calls += [(grid.n_tokens, ref.n_tokens if ref else 0, n_txt)] * count
            continue
        cells = stats.fine_cells if stage == "mixed" else torch.zeros(grid.hc, grid.wc, dtype=torch.bool)
        plan = plan_call(stage, grid, ref, cells, reference_policy=config.reference_policy,
                         coarse_positions=config.coarse_positions,
                         proportional_attention=config.proportional_attention)
        calls += [(plan.n_target, plan.n_reference, n_txt)] * count
    return calls


def _flop_crosscheck(runner: ToyRunner, stats: SpecEditStats) -> dict[str, Any]:
    """The analytic count of one mixed call against ``flowcore.bench.count_flops`` on the real toy transformer."""
    mixed = [c for c in stats.calls if c["stage"] == "mixed"] or stats.calls
    call = mixed[0]
    n_img, n_txt = call["target"] + call["reference"], call["text"]
    dev, dtype = runner.bundle.device, runner.spec.transformer.dtype
    kwargs = dict(hidden_states=torch.zeros(1, n_img, 12, device=dev, dtype=dtype),
                  encoder_hidden_states=torch.zeros(1, n_txt, 128, device=dev, dtype=dtype),
                  pooled_projections=torch.zeros(1, 128, device=dev, dtype=dtype),
                  timestep=torch.full((1,), 0.5, device=dev), img_ids=_row_major_ids(n_img).to(dev),
                  txt_ids=torch.zeros(n_txt, 3, device=dev), guidance=torch.full((1,), GUIDANCE, device=dev),
                  return_dict=False)
    measured = measured_forward_flops(runner.plain.transformer, **kwargs)  # the unhooked copy
    analytic = forward_flops(runner.arch, n_img, n_txt)
    return {"tokens": [n_img, n_txt], "analytic": analytic, "measured": measured, "equal": analytic == measured}


def _row_major_ids(n: int) -> torch.Tensor:
    ids = torch.zeros(n, 3)
    ids[:, 2] = torch.arange(n, dtype=torch.float32)
    return ids


def acceptance(report: dict[str, Any]) -> dict[str, Any]:
    """T1–T4 of spec §6 from a full report."""
    rows = {r["method"]: r for r in report["rows"]}
    base = rows["full-50"]
    t1 = {}
    for nfe in (18, 11):
        r = rows.get(f"specedit-{nfe}")
        if r is None:
            continue
        ok = (r["wall_ratio"] or 0) >= 3.0 and r["diff_pts"] >= -2.0 and r["bg_psnr_db"] >= base["bg_psnr_db"] - 1.0
        t1[nfe] = {"wall_ratio": r["wall_ratio"], "diff_pts": r["diff_pts"], "bg_psnr_db": r["bg_psnr_db"],
                   "pass": bool(ok)}
    t2 = {}
    for nfe in (18, 11, 9):
        s, p = rows.get(f"specedit-{nfe}"), rows.get(f"plain-eqtime-{nfe}")
        if s is None or p is None:
            continue
        t2[nfe] = {"specedit_%": s["success_%"], "plain_equal_time_%": p["success_%"],
                   "pass": s["success_%"] >= p["success_%"]}
    mask = report["mask"]
    t4 = {nfe: {"wall": rows[f"specedit-{nfe}"]["wall_ratio"], "flop": rows[f"specedit-{nfe}"]["flop_ratio"]}
          for nfe in (30, 18, 11, 9) if f"specedit-{nfe}" in rows}
    return {
        "T1": {"rows": t1, "pass": any(v["pass"] for v in t1.values())},
        "T2": {"rows": t2, "pass": bool(t2) and all(v["pass"] for v in t2.values())},
        "T3": {"recall_edit": mask["recall_edit"], "rho_mean_non_background": mask["rho_mean_non_background"],
               "pass": (mask["recall_edit"] or 0) >= 0.90 and (mask["rho_mean_non_background"] or 1) <= 0.45,
               "note": "T3 is defined on the dev split (split='val')"},
        "T4": {"rows": t4, "pass": all(v["wall"] is not None and v["flop"] is not None for v in t4.values())},
    }


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``demo.json`` and ``demo.md`` (the table for the README) in ``out_dir``, written atomically."""
    from flowcore.io import atomic_write, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    images = report.pop("_gallery_images", None)
    paths = [write_json(out_dir / "demo.json", report)]
    if images is not None:  # rows: pairs; columns: GALLERY_COLUMNS
        from PIL import Image

        n, k, _, s, _ = images.shape
        grid = images.clamp(0, 1).permute(0, 3, 1, 4, 2).reshape(n * s, k * s, 3)
        picture = Image.fromarray((grid.numpy() * 255).round().astype(np.uint8))
        paths.append(atomic_write(out_dir / "grid.png", lambda tmp: picture.save(tmp, format="PNG")))
    cols = ["method", "steps", "success_%", "diff_pts", "ci95_pts", "bg_psnr_db", "median_wall_ms", "wall_ratio",
            "flop_ratio", "rho_mean", "recall"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in report["rows"]:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    text = "\n".join(lines) + "\n\nacceptance: " + str(report.get("acceptance")) + "\n"
    paths.append(atomic_write(out_dir / "demo.md", text))
    return paths
