"""The toy-world demonstration (spec §6): DirectEdit and the baselines at equal NFE on exact edit pairs.

* ``run_demo(quick=True)``: 8 test pairs per toy, frozen defaults, setting A; DirectEdit in the three source-branch
  modes (snapped) and unsnapped, plus naive Euler, all sharing one inversion. Checks A1 (exact reconstruction) and
  A6 (modes agree).
* ``run_demo(quick=False)``: the pre-registered protocol. Grids on the dev split (``split="val"``), the best
  setting per method frozen (highest strict success; within 2 points, higher preserved PSNR), then the test split
  in setting A (no mask) and B (ground-truth region mask), the oracle, position edits, acceptance A1–A6.

Models come from ``flowcore.toy.load`` (trained weights; :class:`~flowcore.toy.ToyWeightsMissing` otherwise) or,
with ``random_init``, from ``flowcore.toy.build`` (plumbing only: the numbers mean nothing then).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from directedit import _toy, baselines
from directedit._toy import toy
from directedit.cache import InversionCache
from directedit.config import DirectEditConfig, ValueInjection, arch_of
from directedit.core import EditResult, edit, invert
from flowcore.images import dilate, to_pil
from flowcore.io import atomic_write, write_json
from flowcore.metrics import masked_psnr, psnr

__all__ = ["DEFAULT_TOYS", "FROZEN", "run_demo"]

DEFAULT_TOYS = ("toy-sd3", "toy-flux")
KINDS = ("color", "shape", "background")
# Frozen defaults for --quick (no grid): the method's target guidance and per-architecture ratio.
FROZEN = {"toy-sd3": {"target_guidance": 2.0, "ratio": 0.3}, "toy-flux": {"target_guidance": 2.0, "ratio": 0.15},
          "toy-kontext": {"target_guidance": 2.0, "ratio": 0.15}}
INJECTION_GRID = [(g, r) for g in (1.5, 2.0, 3.0) for r in (0.1, 0.2, 0.3)]
FLOWEDIT_GRID = [(1.0, 2.0), (1.5, 3.5), (1.5, 5.5)]
INJECTION_METHODS = ("directedit", "naive_euler", "rf_solver", "fireflow")
PSNR_CAP = 200.0
GATE = {"toy-sd3": {"steps": 28, "guidance": 5.0}, "toy-flux": {"steps": 28, "guidance": 3.5},
        "toy-kontext": {"steps": 28, "guidance": 3.5}}


# --- data ---------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A batch of edit pairs on one model: latents, prompts, exact images and the preserved-region mask."""

    pairs: list[Any]
    z0: Tensor
    src_cond: Any
    tar_cond: Any
    source: Tensor  # (B,3,H,W) exact source renders
    target: Tensor  # (B,3,H,W) exact target renders
    region: Tensor  # (B,1,H,W) float, the pair's region mask (1 = may change)
    keep: Tensor  # (B,1,H,W) float, outside the region dilated by one patch (2 px)


def edit_pairs(split: str, n: int, kinds: Sequence[str] = KINDS) -> list[Any]:
    """``n`` pairs of ``split`` (seeds 0..n-1, spec §6)."""
    sample_edit = toy("sample_edit")
    return [sample_edit(seed, split=split, kinds=tuple(kinds)) for seed in range(n)]


def make_batch(model: Any, pairs: list[Any]) -> Batch:
    source = torch.stack([p.source_image for p in pairs]).float()
    target = torch.stack([p.target_image for p in pairs]).float()
    region = torch.stack([p.region_mask for p in pairs]).float()
    keep = 1.0 - dilate(region, 2, shape="square")
    z0 = model.encode_image(source.to(model.device))
    src_cond = model.encode_prompt([p.source_caption for p in pairs])
    tar_cond = model.encode_prompt([p.target_caption for p in pairs])
    return Batch(pairs, z0, src_cond, tar_cond, source, target, region, keep)


def _decode(model: Any, latents: Tensor | None, size: tuple[int, int]) -> Tensor | None:
    if latents is None:
        return None
    return model.decode_image(latents, height=size[0], width=size[1]).float().cpu()


def score(model: Any, batch: Batch, result: EditResult) -> list[dict[str, Any]]:
    """Per-pair metrics on float images (spec §6): reconstruction PSNR, judge outcomes, preserved PSNR."""
    edit_success = toy("edit_success")
    size = (batch.source.shape[-2], batch.source.shape[-1])
    edited = _decode(model, result.edited, size)
    assert edited is not None
    rec = _decode(model, result.reconstruction, size)
    judged = edit_success(edited, batch.pairs)
    judged = judged if isinstance(judged, list) else [judged]
    with warnings.catch_warnings():  # pairs whose whole image may change have no preserved region: NaN, skipped
        warnings.filterwarnings("ignore", message="masked metric over an empty mask")
        preserved = masked_psnr(edited, batch.target, batch.keep, mse_floor=1e-20, max_db=PSNR_CAP)
    ceiling = psnr(_decode(model, batch.z0, size), batch.source, max_db=PSNR_CAP)  # decode(encode(x)) vs x
    rows = []
    for b, verdict in enumerate(judged):
        row = {"success": bool(verdict.success), "edit_ok": bool(verdict.edit_ok),
               "preserve_ok": bool(verdict.preserve_ok), "bg_psnr": float(verdict.bg_psnr),
               "preserved_psnr": float(preserved[b])}
        if rec is not None and result.reconstruction is not None:
            row["rec_psnr"] = float(psnr(rec[b:b + 1], batch.source[b:b + 1], max_db=PSNR_CAP)[0])
            row["vae_ceiling_psnr"] = float(ceiling[b])
            row["rec_exact"] = bool(torch.equal(result.reconstruction[b].cpu(), batch.z0[b].cpu().to(
                result.reconstruction.dtype)))
        rows.append(row)
    return rows


# --- runners --------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """Method settings for one batch; shares inversions across settings where the inversion is unchanged."""

    model: Any
    batch: Batch
    steps: int
    seed: int
    _cache: InversionCache | None = None
    _inversions: dict[str, Any] | None = None

    def cache(self, ratio: float) -> InversionCache:
        """DirectEdit's inversion (recording the source Values for ``cached`` at this ratio's K)."""
        cfg = self._config(2.0, ratio, True, "cached")
        k_inject = cfg.injection_steps(arch_of(self.model))
        if self._cache is None or (self._cache.injection or {}).get("K") != k_inject:
            self._cache = invert(self.model, self.batch.z0, self.batch.src_cond, config=cfg)
        return self._cache

    def _config(self, g_tar: float, ratio: float, snap: bool, branch: str) -> DirectEditConfig:
        return DirectEditConfig(num_steps=self.steps, source_guidance=1.0, target_guidance=g_tar,
                                injection=ValueInjection(ratio=ratio), snap_source=snap,
                                source_branch=branch)  # type: ignore[arg-type]

    def mask(self, setting: str) -> Tensor | None:
        """Setting A: no mask; B: the pairs' ground-truth region masks (pixels; preprocessed per §2.9 by the
        method: pad, the family's dilation, resize to the blend grid)."""
        return None if setting == "A" else self.batch.region

    def directedit(self, g_tar: float, ratio: float, *, setting: str = "A", snap: bool = True,
                   branch: str = "batched") -> EditResult:
        cache = self.cache(ratio)
        cfg = self._config(g_tar, ratio, snap, branch)
        return edit(self.model, cache, self.batch.tar_cond, config=cfg, mask=self.mask(setting))

    def naive_euler(self, g_tar: float, ratio: float, *, setting: str = "A") -> EditResult:
        return baselines.naive_euler(self.model, self.batch.z0, self.batch.src_cond, self.batch.tar_cond,
                                     cache=self.cache(ratio), target_guidance=g_tar,
                                     injection=ValueInjection(ratio=ratio), mask=self.mask(setting))

    def second_order(self, method: str, g_tar: float, ratio: float, *, setting: str = "A") -> EditResult:
        steps = baselines.settings_for_nfe(method, 2 * self.steps, "flux")["num_steps"]
        self._inversions = self._inversions or {}
        if method not in self._inversions:
            self._inversions[method] = baselines.solve_inversion(self.model, self.batch.z0, self.batch.src_cond,
                                                                 solver=method, num_steps=steps)
        fn = baselines.rf_solver if method == "rf_solver" else baselines.fireflow
        return fn(self.model, self.batch.z0, self.batch.src_cond, self.batch.tar_cond, num_steps=steps,
                  target_guidance=g_tar, injection=ValueInjection(ratio=ratio), mask=self.mask(setting),
                  inversion=self._inversions[method])

    def flowedit(self, g_src: float, g_tar: float, *, defaults: bool = False) -> EditResult:
        family = "flux" if arch_of(self.model) == "flux" else "sd3"
        generator = torch.Generator().manual_seed(self.seed)
        if defaults:
            return baselines.flowedit(self.model, self.batch.z0, self.batch.src_cond, self.batch.tar_cond,
                                      generator=generator)
        kw = baselines.settings_for_nfe("flowedit", 2 * self.steps, family)
        return baselines.flowedit(self.model, self.batch.z0, self.batch.src_cond, self.batch.tar_cond,
                                  source_guidance=g_src, target_guidance=g_tar, generator=generator, **kw)

    def run(self, method: str, params: dict[str, Any], setting: str = "A") -> EditResult:
        if method == "directedit":
            return self.directedit(params["target_guidance"], params["ratio"], setting=setting,
                                   snap=params.get("snap", True), branch=params.get("branch", "batched"))
        if method == "naive_euler":
            return self.naive_euler(params["target_guidance"], params["ratio"], setting=setting)
        if method in ("rf_solver", "fireflow"):
            return self.second_order(method, params["target_guidance"], params["ratio"], setting=setting)
        if method == "flowedit":
            return self.flowedit(params.get("source_guidance", 1.5), params.get("target_guidance", 5.5),
                                 defaults=params.get("defaults", False))
        raise ValueError(f"unknown method {method!r}")


# --- aggregation --------------------------------------------------------------------------------------------
def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def summarize(rows: list[dict[str, Any]], results: list[EditResult], n_pairs: int) -> dict[str, Any]:
    """Aggregate per-pair rows of one method (rates in %, PSNR means in dB, cost per pair)."""
    out: dict[str, Any] = {"pairs": len(rows)}
    for key in ("success", "edit_ok", "preserve_ok"):
        out[key] = 100.0 * sum(r[key] for r in rows) / max(len(rows), 1)
    for key in ("preserved_psnr", "bg_psnr", "rec_psnr", "vae_ceiling_psnr"):
        if any(key in r for r in rows):
            out[key] = _mean([r[key] for r in rows if key in r])
    if any("rec_psnr" in r for r in rows):
        out["rec_psnr_min"] = min(r["rec_psnr"] for r in rows if "rec_psnr" in r)
        out["rec_exact"] = sum(bool(r.get("rec_exact")) for r in rows)
    out["calls"] = results[0].nfe.calls if results else 0
    out["rows_per_pair"] = sum(r.nfe.rows for r in results) / max(n_pairs, 1)
    out["wall_s_per_pair"] = sum(r.timings.get("total_s", r.timings.get("inversion_s", 0.0)
                                                + r.timings.get("forward_s", 0.0)) for r in results) / max(n_pairs, 1)
    return out


def _pick(candidates: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Highest strict success; among settings within 2 points of it, the highest preserved PSNR (spec §6)."""
    best = max(s["success"] for _, s in candidates)
    close = [(p, s) for p, s in candidates if s["success"] >= best - 2.0]
    return max(close, key=lambda ps: ps[1]["preserved_psnr"])[0]


# --- the demo -------------------------------------------------------------------------------------------------
@dataclass
class DemoOptions:
    models: tuple[str, ...] = DEFAULT_TOYS
    quick: bool = False
    pairs: int = 256
    dev_pairs: int = 64
    batch_size: int = 32
    steps: int = 30
    seed: int = 2024
    random_init: bool = False
    preset: str = "full"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32  # model dtype (the state is fp32); the protocol is fp32, bf16 report-only
    position: bool = True
    oracle: bool = True


def _batches(model: Any, pairs: list[Any], size: int) -> list[Batch]:
    return [make_batch(model, pairs[i:i + size]) for i in range(0, len(pairs), size)]


def _run_method(batches: list[Batch], runners: list[Runner], method: str, params: dict[str, Any], setting: str,
                model: Any, keep: dict[str, list] | None = None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    results: list[EditResult] = []
    for batch, runner in zip(batches, runners):
        res = runner.run(method, params, setting)
        rows += score(model, batch, res)
        results.append(res)
        if keep is not None:
            keep.setdefault("edited", []).append(res.edited.cpu())
    summary = summarize(rows, results, sum(len(b.pairs) for b in batches))
    summary["per_pair"] = rows
    return summary


def quick_toy(name: str, opts: DemoOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """A7: 8 pairs, frozen defaults, setting A; DirectEdit (three modes, snapped; unsnapped) and naive Euler."""
    bundle = _toy.toy_bundle(name, random_init=opts.random_init, device=opts.device, preset=opts.preset, dtype=opts.dtype)
    model = bundle.adapter()
    pairs = edit_pairs("test", opts.pairs)
    batches = _batches(model, pairs, opts.batch_size)
    runners = [Runner(model, b, opts.steps, opts.seed) for b in batches]
    frozen = FROZEN[name]
    methods = {
        "directedit": ("directedit", {**frozen}),
        "directedit_auto": ("directedit", {**frozen, "branch": "auto"}),
        "directedit_cached": ("directedit", {**frozen, "branch": "cached"}),
        "directedit_unsnapped": ("directedit", {**frozen, "snap": False}),
        "naive_euler": ("naive_euler", {**frozen}),
    }
    table: dict[str, Any] = {}
    edits: dict[str, list[Tensor]] = {}
    for label, (method, params) in methods.items():
        keep: dict[str, list] = {}
        table[label] = _run_method(batches, runners, method, params, "A", model, keep)
        edits[label] = keep["edited"]
        log(f"{name} {label}: success {table[label]['success']:.1f}% rec {table[label].get('rec_psnr', 0):.1f} dB")
    checks = {"A1": check_a1(table), "A6": check_a6(table)}
    return {"model": name, "settings": frozen, "methods": table, "acceptance": checks,
            "grid": _grid_image(model, batches, {k: edits[k] for k in ("directedit", "naive_euler")})}


def check_a1(table: dict[str, Any]) -> dict[str, Any]:
    de, un = table.get("directedit"), table.get("directedit_unsnapped")
    if de is None or un is None:
        return {"pass": None, "why": "needs DirectEdit snapped and unsnapped"}
    exact = de["rec_exact"] == de["pairs"]
    ok = exact and un["rec_psnr"] >= 80.0 and un["rec_psnr_min"] >= 60.0
    return {"pass": bool(ok), "snapped_exact": f"{de['rec_exact']}/{de['pairs']}",
            "unsnapped_mean_db": un["rec_psnr"], "unsnapped_min_db": un["rec_psnr_min"]}


def check_a6(table: dict[str, Any]) -> dict[str, Any]:
    base = table.get("directedit")
    out: dict[str, Any] = {"pass": True}
    for label in ("directedit_auto", "directedit_cached"):
        other = table.get(label)
        if base is None or other is None:
            return {"pass": None, "why": f"needs {label}"}
        same = all(a[k] == b[k] for a, b in zip(base["per_pair"], other["per_pair"])
                   for k in ("success", "edit_ok", "preserve_ok"))
        diffs = [abs(a[k] - b[k]) for a, b in zip(base["per_pair"], other["per_pair"])
                 for k in ("preserved_psnr", "rec_psnr") if k in a and k in b]
        nan_mismatch = any(math.isnan(a[k]) != math.isnan(b[k]) for a, b in zip(base["per_pair"], other["per_pair"])
                           for k in ("preserved_psnr", "rec_psnr") if k in a and k in b)
        worst = max([d for d in diffs if not math.isnan(d)], default=0.0)
        same = same and not nan_mismatch
        out[label] = {"identical_judge": same, "max_psnr_diff_db": worst}
        out["pass"] = bool(out["pass"] and same and worst <= 0.01)
    return out


def _grid_image(model: Any, batches: list[Batch], edits: dict[str, list[Tensor]], max_rows: int = 8) -> Tensor:
    """Rows of pairs: source | exact target | one column per method; ×4 nearest upscale."""
    batch = batches[0]
    n = min(max_rows, len(batch.pairs))
    size = (batch.source.shape[-2], batch.source.shape[-1])
    cols = [batch.source[:n], batch.target[:n]]
    for latents in edits.values():
        decoded = _decode(model, latents[0][:n], size)
        assert decoded is not None
        cols.append(decoded)
    rows = [torch.cat([c[i] for c in cols], dim=-1) for i in range(n)]
    grid = torch.cat(rows, dim=-2)[None]
    return torch.nn.functional.interpolate(grid, scale_factor=4, mode="nearest")[0]


def full_toy(name: str, opts: DemoOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """The pre-registered protocol on one toy (dev grid → frozen settings → test, settings A and B)."""
    bundle = _toy.toy_bundle(name, random_init=opts.random_init, device=opts.device, preset=opts.preset, dtype=opts.dtype)
    model = bundle.adapter()
    start = time.perf_counter()
    dev = _batches(model, edit_pairs("val", opts.dev_pairs), opts.batch_size)
    dev_runners = [Runner(model, b, opts.steps, opts.seed) for b in dev]
    chosen: dict[str, dict[str, Any]] = {}
    dev_table: dict[str, list[dict[str, Any]]] = {}
    for method in INJECTION_METHODS:
        cands = []
        for g, r in INJECTION_GRID:
            params = {"target_guidance": g, "ratio": r}
            summ = _run_method(dev, dev_runners, method, params, "A", model)
            summ.pop("per_pair")
            cands.append((params, summ))
            log(f"{name} dev {method} g={g} r={r}: success {summ['success']:.1f}%")
        chosen[method] = _pick(cands)
        dev_table[method] = [{**p, **s} for p, s in cands]
    cands = []
    for gs, gt in FLOWEDIT_GRID:
        params = {"source_guidance": gs, "target_guidance": gt}
        summ = _run_method(dev, dev_runners, "flowedit", params, "A", model)
        summ.pop("per_pair")
        cands.append((params, summ))
    chosen["flowedit"] = _pick(cands)
    dev_table["flowedit"] = [{**p, **s} for p, s in cands]
    log(f"{name} frozen settings: {chosen}")

    test = _batches(model, edit_pairs("test", opts.pairs), opts.batch_size)
    runners = [Runner(model, b, opts.steps, opts.seed) for b in test]
    de = chosen["directedit"]
    rows_a = {
        "directedit": ("directedit", de), "directedit_unsnapped": ("directedit", {**de, "snap": False}),
        "directedit_auto": ("directedit", {**de, "branch": "auto"}),
        "directedit_cached": ("directedit", {**de, "branch": "cached"}),
        "naive_euler": ("naive_euler", chosen["naive_euler"]), "rf_solver": ("rf_solver", chosen["rf_solver"]),
        "fireflow": ("fireflow", chosen["fireflow"]), "flowedit": ("flowedit", chosen["flowedit"]),
        "flowedit_defaults": ("flowedit", {"defaults": True}),
    }
    table_a: dict[str, Any] = {}
    edits: dict[str, list[Tensor]] = {}
    for label, (method, params) in rows_a.items():
        keep: dict[str, list] = {}
        table_a[label] = _run_method(test, runners, method, params, "A", model, keep)
        edits[label] = keep["edited"]
        log(f"{name} test A {label}: success {table_a[label]['success']:.1f}%")
    table_b: dict[str, Any] = {}
    for label in ("directedit", "directedit_unsnapped", "naive_euler", "rf_solver", "fireflow"):
        method, params = rows_a[label]
        table_b[label] = _run_method(test, runners, method, params, "B", model)
        log(f"{name} test B {label}: preserved {table_b[label]['preserved_psnr']:.1f} dB")
    result: dict[str, Any] = {"model": name, "chosen": chosen, "dev": dev_table, "test_A": table_a,
                              "test_B": table_b}
    if opts.oracle:
        result["oracle"] = oracle(bundle, test, opts.seed)
    if opts.position:
        pos = _batches(model, edit_pairs("test", opts.pairs, kinds=("position",)), opts.batch_size)
        pos_runners = [Runner(model, b, opts.steps, opts.seed) for b in pos]
        result["position_A"] = {label: _strip(_run_method(pos, pos_runners, method, params, "A", model))
                                for label, (method, params) in rows_a.items()
                                if label in ("directedit", "naive_euler", "rf_solver", "fireflow", "flowedit")}
    result["acceptance"] = acceptance(result)
    result["grid"] = _grid_image(model, test, {k: edits[k] for k in ("directedit", "naive_euler", "rf_solver",
                                                                     "fireflow", "flowedit")})
    result["wall_s"] = time.perf_counter() - start
    return result


def _strip(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "per_pair"}


@torch.no_grad()
def oracle(bundle: Any, batches: list[Batch], seed: int) -> dict[str, Any]:
    """Strict alignment of toy text-to-image samples of the target captions at the toy's gate settings."""
    alignment = toy("alignment")
    gate = GATE[bundle.name]
    hits, total = 0, 0
    for batch in batches:
        captions = [p.target_caption for p in batch.pairs]
        images = bundle.generate(captions, seed=seed, steps=gate["steps"], guidance=gate["guidance"])
        verdicts = alignment(images, captions)
        verdicts = verdicts if isinstance(verdicts, list) else [verdicts]
        hits += sum(bool(v.strict) for v in verdicts)
        total += len(verdicts)
    return {"strict": 100.0 * hits / max(total, 1), "pairs": total, **gate}


def acceptance(res: dict[str, Any]) -> dict[str, Any]:
    """A1–A6 of spec §6 on the test tables (A7 is the --quick wall time)."""
    a, b = res["test_A"], res["test_B"]
    de = a["directedit"]
    inv_baselines = ("naive_euler", "rf_solver", "fireflow")
    others = [k for k in a if not k.startswith("directedit")]
    out: dict[str, Any] = {"A1": check_a1(a)}
    best_rec = max(a[k]["rec_psnr"] for k in inv_baselines)
    out["A2"] = {"pass": bool(de["rec_psnr"] >= best_rec + 20 and de["rec_psnr"] >= a["naive_euler"]["rec_psnr"] + 30),
                 "directedit_db": de["rec_psnr"], "best_baseline_db": best_rec}
    a3 = de["success"] >= a["naive_euler"]["success"] and all(de["success"] >= a[k]["success"] - 3 for k in others)
    if "oracle" in res:
        a3 = a3 and de["success"] >= 0.8 * res["oracle"]["strict"]
    out["A3"] = {"pass": bool(a3), "directedit": de["success"],
                 "others": {k: a[k]["success"] for k in others},
                 "oracle": res.get("oracle", {}).get("strict")}
    out["A4"] = {"pass": bool(all(de["preserved_psnr"] >= a[k]["preserved_psnr"] for k in others)
                              and de["preserved_psnr"] >= a["naive_euler"]["preserved_psnr"] + 3),
                 "directedit_db": de["preserved_psnr"], "others": {k: a[k]["preserved_psnr"] for k in others}}
    deb = b["directedit"]
    out["A5"] = {"pass": bool(deb["preserved_psnr"] >= 60 and all(deb["preserved_psnr"] > b[k]["preserved_psnr"]
                                                                for k in b if not k.startswith("directedit"))
                              and abs(deb["success"] - de["success"]) <= 3),
                 "directedit_db": deb["preserved_psnr"], "success_B": deb["success"], "success_A": de["success"]}
    out["A6"] = check_a6(a)
    return out


# --- report -----------------------------------------------------------------------------------------------------
_COLUMNS = (("success", "strict success %", "{:.1f}"), ("edit_ok", "attr hit %", "{:.1f}"),
            ("rec_psnr", "rec PSNR dB", "{:.1f}"), ("vae_ceiling_psnr", "VAE ceiling dB", "{:.1f}"),
            ("preserved_psnr", "preserved PSNR dB", "{:.1f}"),
            ("bg_psnr", "bg PSNR (8-bit) dB", "{:.1f}"), ("calls", "calls", "{}"),
            ("rows_per_pair", "rows/pair", "{:.0f}"), ("wall_s_per_pair", "wall s/pair", "{:.3f}"))


def markdown_table(table: dict[str, Any]) -> str:
    head = "| method | " + " | ".join(c[1] for c in _COLUMNS) + " |"
    sep = "|---|" + "---|" * len(_COLUMNS)
    lines = [head, sep]
    for label, s in table.items():
        cells = []
        for key, _, fmt in _COLUMNS:
            v = s.get(key)
            cells.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict[str, Any]) -> list[Path]:
    """``table.md``, ``results.json`` and one grid PNG per toy, all written atomically."""
    out_dir = Path(out_dir)
    written = []
    lines = [f"# directedit toy demonstration ({'quick' if report['quick'] else 'full protocol'})", ""]
    if report.get("random_init"):
        lines += ["**Random-init weights: a plumbing check; success and preservation numbers mean nothing.**", ""]
    for res in report["toys"]:
        name = res["model"]
        lines += [f"## {name}", ""]
        for key, title in (("methods", "Setting A (no mask), test pairs"), ("test_A", "Setting A (no mask)"),
                           ("test_B", "Setting B (ground-truth region mask)"), ("position_A", "Position edits")):
            if key in res:
                lines += [f"### {title}", "", markdown_table(res[key]), ""]
        if "oracle" in res:
            lines += [f"Oracle (text-to-image strict alignment): {res['oracle']['strict']:.1f}%", ""]
        if "chosen" in res:
            lines += [f"Frozen settings (chosen on dev): `{res['chosen']}`", ""]
        lines += ["### Acceptance", ""]
        for key, val in res["acceptance"].items():
            verdict = {True: "pass", False: "FAIL", None: "n/a"}[val.get("pass")]
            detail = {k: v for k, v in val.items() if k != "pass"}
            lines.append(f"- {key}: **{verdict}** {detail}")
        lines.append("")
        grid = res.pop("grid", None)
        if grid is not None:
            path = out_dir / f"grid-{name}.png"
            image = to_pil(grid)[0]
            atomic_write(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
            written.append(path)
            lines += [f"![{name}]({path.name}) (rows: pairs; columns: source, exact target, then "
                      f"{', '.join(res.get('grid_columns', []))})", ""]
    lines.append(f"Wall time: {report['wall_s']:.1f} s.")
    written.append(atomic_write(out_dir / "table.md", "\n".join(lines) + "\n"))
    written.append(write_json(out_dir / "results.json", report))
    return written


def run_demo(opts: DemoOptions, out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demonstration on every model of ``opts`` and write the report; returns it."""
    start = time.perf_counter()
    toys = []
    for name in opts.models:
        if name not in FROZEN:
            raise ValueError(f"the demo runs on toy-sd3 and toy-flux (toy-kontext weights), got {name!r}")
        res = quick_toy(name, opts, log) if opts.quick else full_toy(name, opts, log)
        res["grid_columns"] = ["DirectEdit", "naive Euler"] if opts.quick else \
            ["DirectEdit", "naive Euler", "RF-Solver", "FireFlow", "FlowEdit"]
        toys.append(res)
    report = {"quick": opts.quick, "random_init": opts.random_init, "options": {**vars(opts), "dtype": str(opts.dtype)},
              "toys": toys, "wall_s": time.perf_counter() - start}
    report["options"]["models"] = list(opts.models)
    write_report(out_dir, report)
    return report
