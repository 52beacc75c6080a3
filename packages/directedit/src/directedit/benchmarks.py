"""Benchmarks B1–B4 of spec §8: ratios measured side by side in one run with ``flowcore.bench.compare``.

* B1 overhead: time(DirectEdit, batched, snapped) / time(naive Euler dual path) at equal N, same rows and
  injection; both forward passes share one inversion (``forward``), and whole runs including the inversion
  (``total``). Target ≤ 1.05.
* B2 source-branch modes: ``batched`` / ``auto`` / ``cached`` at r ∈ {0.15, 0.3}: time, rows, memory (GPU
  ``max_memory_allocated``; CPU: bytes of the trajectory and recorded Values).
* B3 NFE table: analytic calls and rows checked against ``flowcore.testing.CallCounter``.
* B4 memory: the stored trajectory ((N+1) fp32 latents) and the cached Values, measured next to the formulas.

``run_cpu_suite`` uses toy-sd3 (random init) and tiny random SD3 / FLUX; ``run_gpu_suite`` builds full-size
SD3.5-medium and FLUX.1-dev configs with random bf16 weights (meta device, then ``to_empty``) on the CUDA card.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from directedit import baselines
from directedit.config import DirectEditConfig, ValueInjection, arch_of
from directedit.core import edit, invert
from directedit.injection import injection_sites
from flowcore.bench import compare, device_info
from flowcore.io import atomic_write, write_json

__all__ = ["nfe_table", "predicted", "run_cpu_suite", "run_gpu_suite", "trajectory_memory_table"]

MIB = 2**20


# --- shared measurement --------------------------------------------------------------------------------------
def _case(model: Any, z0: torch.Tensor, *, steps: int, ratio: float, g_src: float = 1.0,
          g_tar: float = 2.0) -> dict[str, Any]:
    src = model.encode_prompt(["a red circle on a blue background"])  # words every model here knows (toy too)
    tar = model.encode_prompt(["a green circle on a blue background"])
    cfg = DirectEditConfig(num_steps=steps, source_guidance=g_src, target_guidance=g_tar,
                           injection=ValueInjection(ratio=ratio))
    return {"model": model, "z0": z0, "src": src, "tar": tar, "cfg": cfg}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def overhead(case: dict[str, Any], *, repeats: int, device: torch.device, total: bool = True) -> dict[str, Any]:
    """B1: forward-only (one shared inversion) and total (inversion + forward) ratios, DirectEdit / naive."""
    model, z0, src, tar, cfg = case["model"], case["z0"], case["src"], case["tar"], case["cfg"]
    cache = invert(model, z0, src, config=cfg)

    def de_forward() -> None:
        edit(model, cache, tar, config=cfg)
        _sync(device)

    def naive_forward() -> None:
        baselines.naive_euler(model, z0, src, tar, cache=cache, target_guidance=cfg.target_guidance,
                              injection=cfg.injection)
        _sync(device)

    def de_total() -> None:
        edit(model, invert(model, z0, src, config=cfg), tar, config=cfg)
        _sync(device)

    def naive_total() -> None:
        baselines.naive_euler(model, z0, src, tar, num_steps=cfg.num_steps, source_guidance=cfg.source_guidance,
                              target_guidance=cfg.target_guidance, injection=cfg.injection)
        _sync(device)

    cpu: dict[str, list[float]] = {}
    fwd = compare(_with_cpu_time({"naive_forward": naive_forward, "directedit_forward": de_forward}, cpu),
                  baseline="naive_forward", repeats=repeats, warmup=1, device=device)
    out = {"overhead_forward": fwd["directedit_forward"]["median_ms"] / fwd["naive_forward"]["median_ms"],
           "overhead_total": None, "forward": fwd.to_dict(), "forward_text": fwd.format(),
           "overhead_forward_cpu_time": _cpu_ratio(cpu, "directedit_forward", "naive_forward", repeats)}
    if total:
        tot = compare(_with_cpu_time({"naive_total": naive_total, "directedit_total": de_total}, cpu),
                      baseline="naive_total", repeats=repeats, warmup=1, device=device)
        out.update(overhead_total=tot["directedit_total"]["median_ms"] / tot["naive_total"]["median_ms"],
                   total=tot.to_dict(), total_text=tot.format(),
                   overhead_total_cpu_time=_cpu_ratio(cpu, "directedit_total", "naive_total", repeats))
    return out


def _with_cpu_time(providers: dict[str, Any], record: dict[str, list[float]]) -> dict[str, Any]:
    """Wrap providers to also record this process's CPU time per call (steadier than wall time on a shared
    machine; the wall-time ratio of ``flowcore.bench.compare`` stays the reported one)."""

    def wrap(name: str, fn: Any) -> Any:
        def run() -> None:
            start = time.process_time()
            fn()
            record.setdefault(name, []).append(time.process_time() - start)

        return run

    return {name: wrap(name, fn) for name, fn in providers.items()}


def _cpu_ratio(record: dict[str, list[float]], name: str, baseline: str, repeats: int) -> float | None:
    import statistics

    mine, base = record.get(name, [])[-repeats:], record.get(baseline, [])[-repeats:]
    if not mine or not base or statistics.median(base) == 0:
        return None
    return statistics.median(mine) / statistics.median(base)


def predicted(arch: str, mode: str, steps: int, k_inject: int, *, cfg_rows: bool) -> dict[str, int]:
    """Analytic calls and rows of DirectEdit (one target): spec §2.7 / §8 B3."""
    per = 2 if cfg_rows else 1  # rows per branch
    fwd = {"batched": 2 * steps, "auto": 2 * k_inject + (steps - k_inject), "cached": steps}[mode] * per
    return {"calls": 2 * steps, "rows": steps * per + fwd}


def modes(case: dict[str, Any], *, ratios: tuple[float, ...], repeats: int, device: torch.device,
          warmup: int = 1) -> list[dict]:
    """B2: the three source-branch modes at each ratio (time, rows, memory)."""
    model, z0, src, tar = case["model"], case["z0"], case["src"], case["tar"]
    arch = arch_of(model)
    out = []
    for ratio in ratios:
        base = case["cfg"].replace(injection=ValueInjection(ratio=ratio))
        caches = {m: invert(model, z0, src, config=base.replace(source_branch=m)) for m in ("batched", "cached")}
        providers, results = {}, {}
        for mode in ("batched", "auto", "cached"):
            cfg = base.replace(source_branch=mode)
            cache = caches["cached" if mode == "cached" else "batched"]

            def run(cfg: DirectEditConfig = cfg, cache: Any = cache, mode: str = mode,
                    results: dict = results) -> None:
                results[mode] = edit(model, cache, tar, config=cfg)
                _sync(device)

            providers[mode] = run
        table = compare(providers, baseline="batched", repeats=repeats, warmup=warmup, device=device,
                        memory=device.type == "cuda")
        k_inject = base.injection_steps(arch)
        for mode in ("batched", "auto", "cached"):
            res = results[mode]
            cache = caches["cached" if mode == "cached" else "batched"]
            pred = predicted(arch, mode, base.num_steps, k_inject, cfg_rows=model.guidance_kind == "cfg")
            out.append({"ratio": ratio, "K": k_inject, "mode": mode, "median_ms": table[mode]["median_ms"],
                        "time_vs_batched": table[mode]["median_ms"] / table["batched"]["median_ms"],
                        "calls": res.nfe.calls, "rows": res.nfe.rows, "predicted_rows": pred["rows"],
                        "trajectory_mib": cache.trajectory_nbytes / MIB, "values_mib": cache.value_nbytes / MIB,
                        "peak_mem_mib": table[mode]["peak_mem_mb"]})
    return out


# --- B3 / B4 ------------------------------------------------------------------------------------------------
def nfe_table(steps: int = 30) -> list[dict[str, Any]]:
    """B3 on tiny FLUX (embedded guidance) and tiny SD3 (true CFG, g ≠ 1): analytic vs counted calls and rows."""
    from directedit.testing import tiny_flux_model, tiny_sd3_model
    from flowcore.testing import CallCounter

    rows = []
    for family, model, z0 in (("flux", tiny_flux_model(), torch.randn(1, 16, 16)),
                              ("sd3", tiny_sd3_model(), torch.randn(1, 4, 8, 8))):
        src, tar = model.encode_prompt(["a cat"]), model.encode_prompt(["a dog"])
        per = 2 if family == "sd3" else 1
        g_src = 1.5 if family == "sd3" else 1.0
        cfg = DirectEditConfig(num_steps=steps, source_guidance=g_src, injection=ValueInjection(ratio=0.15))
        k_inject = cfg.injection_steps(arch_of(model))
        specs: list[tuple[str, Any, dict[str, int]]] = []
        for mode in ("batched", "cached", "auto"):
            specs.append((f"directedit ({mode}, r=0.15)", ("de", mode),
                          predicted(family, mode, steps, k_inject, cfg_rows=family == "sd3")))
        nfe = 2 * steps
        for method in ("naive_euler", "rf_solver", "fireflow", "flowedit"):
            kw = baselines.settings_for_nfe(method, nfe, family)
            rows_pred = {"naive_euler": 3 * steps * per, "rf_solver": 3 * 2 * kw["num_steps"] * per,
                         "fireflow": 3 * (kw["num_steps"] + 1) * per, "flowedit": 2 * nfe * per}[method]
            specs.append((f"{method} {kw}", (method, kw), {"calls": nfe, "rows": rows_pred}))
        for label, spec, pred in specs:
            with CallCounter(model.denoiser) as counter:
                if spec[0] == "de":
                    mode = spec[1]
                    c = cfg.replace(source_branch=mode)
                    res = edit(model, invert(model, z0, src, config=c), tar, config=c)
                elif spec[0] == "flowedit":
                    res = baselines.flowedit(model, z0, src, tar, source_guidance=g_src, target_guidance=2.0,
                                             generator=torch.Generator().manual_seed(0), **spec[1])
                else:
                    res = baselines.run(spec[0], model, z0, src, tar, source_guidance=g_src, **spec[1])
            rows.append({"family": family, "method": label, "calls_predicted": pred["calls"],
                         "calls_counted": counter.calls, "calls_reported": res.nfe.calls,
                         "rows_predicted": pred["rows"], "rows_counted": counter.rows,
                         "ok": counter.calls == pred["calls"] == res.nfe.calls and counter.rows == pred["rows"]})
    return rows


def trajectory_memory_table(steps: int = 30) -> list[dict[str, Any]]:
    """B4 (analytic): (N+1) fp32 latents for FLUX / SD3 at 512² and 1024², and bf16 cond-row Values."""
    rows = []
    for side in (512, 1024):
        per_latent = 16 * (side // 8) ** 2 * 4  # SD3 (16, H/8, W/8) = FLUX packed (H/16·W/16, 64): same count
        rows.append({"what": f"trajectory, FLUX or SD3, {side}²", "per_latent_mib": per_latent / MIB,
                     "total_mib": (steps + 1) * per_latent / MIB})
    for name, tokens, d_model, sites, k_inject, extra in (
            ("FLUX 512², 38 sites, K=4", 512 + 1024, 3072, 38, 4, 0),
            ("FLUX 1024², 38 sites, K=4", 512 + 4096, 3072, 38, 4, 0),
            ("SD3.5-medium 1024², 24 sites, K=9", 4096 + 333, 1536, 24, 9, 0),
            ("SD3.5-medium 1024², + attn2 (13 sites)", 4096, 1536, 13, 9, 1)):
        per_site = tokens * d_model * 2
        rows.append({"what": f"cached V (bf16, cond rows), {name}", "per_site_mib": per_site / MIB,
                     "per_step_mib": per_site * sites / MIB, "total_gib": per_site * sites * k_inject / 2**30,
                     "extra": bool(extra)})
    return rows


def value_memory_check(case: dict[str, Any], ratio: float) -> dict[str, Any]:
    """Measured recorded-Value bytes of a cached inversion against K × sites × rows × S × d × bytes."""
    model, z0, src = case["model"], case["z0"], case["src"]
    cfg = case["cfg"].replace(injection=ValueInjection(ratio=ratio), source_branch="cached")
    cache = invert(model, z0, src, config=cfg)
    sites = injection_sites(model, cfg.injection)  # type: ignore[arg-type]
    k_inject = cfg.injection_steps(arch_of(model))
    any_v = next(iter(next(iter(cache.value_cache.values())).values())) if cache.value_cache else None
    formula = None
    if any_v is not None:
        rows, seq, heads, d = any_v.shape
        formula = k_inject * len(sites) * rows * seq * heads * d * any_v.element_size()
    return {"K": k_inject, "sites": len(sites), "measured_mib": cache.value_nbytes / MIB,
            "formula_mib": None if formula is None else formula / MIB,
            "trajectory_mib": cache.trajectory_nbytes / MIB,
            "trajectory_formula_mib": (cfg.num_steps + 1) * z0.numel() * 4 / MIB}


# --- suites -------------------------------------------------------------------------------------------------------
def _cpu_cases(steps: int, quick: bool) -> list[tuple[str, dict[str, Any]]]:
    from directedit._toy import toy_bundle
    from directedit.testing import tiny_flux_model, tiny_sd3_model

    toy = toy_bundle("toy-sd3", random_init=True).adapter()
    cases = [("toy-sd3 (random init, 32²)", _case(toy, torch.rand(1, 3, 32, 32) * 2 - 1, steps=steps, ratio=0.3))]
    sd3 = tiny_sd3_model(num_layers=6, attention_head_dim=32, num_attention_heads=4, sample_size=64,
                         pos_embed_max_size=64, dual_attention_layers=(), text_len=32)
    flux = tiny_flux_model(num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
                           axes_dims_rope=(8, 12, 12), text_len=32)
    for tokens in ((256,) if quick else (256, 1024)):
        side = int(math.isqrt(tokens))
        cases.append((f"tiny SD3 6 layers w128, {tokens} tokens",
                      _case(sd3, torch.randn(1, 4, 2 * side, 2 * side), steps=steps, ratio=0.3)))
        cases.append((f"tiny FLUX 2+4 blocks w128, {tokens} tokens",
                      _case(flux, torch.randn(1, tokens, 16), steps=steps, ratio=0.15)))
    return cases


def run_cpu_suite(out_dir: Path, *, steps: int = 30, repeats: int = 5, quick: bool = False) -> dict[str, Any]:
    """B1–B4 on the CPU; writes ``bench-cpu.json`` and ``bench-cpu.md``; returns the summary."""
    if quick:
        steps, repeats = min(steps, 6), min(repeats, 2)
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one intra-op thread: ratios stay steady on a shared machine
    try:
        return _cpu_suite(out_dir, device, steps, repeats, quick)
    finally:
        torch.set_num_threads(threads)


def _cpu_suite(out_dir: Path, device: torch.device, steps: int, repeats: int, quick: bool) -> dict[str, Any]:
    start = time.perf_counter()
    b1, b2, b4_measured = [], [], []
    for label, case in _cpu_cases(steps, quick):
        res = overhead(case, repeats=repeats, device=device)
        b1.append({"case": label, "steps": steps, "overhead_forward": res["overhead_forward"],
                   "overhead_total": res["overhead_total"], "detail": res})
        print(f"B1 {label}: DirectEdit / naive = {res['overhead_forward']:.3f} (forward), "
              f"{res['overhead_total']:.3f} (inversion + forward), "
              f"{res['overhead_forward_cpu_time']:.3f} (forward, CPU time)", flush=True)
        if label.startswith("toy-sd3") or (quick and "FLUX" in label):
            for row in modes(case, ratios=(0.15, 0.3), repeats=repeats, device=device):
                b2.append({"case": label, **row})
            b4_measured.append({"case": label, **value_memory_check(case, 0.3)})
    b3 = nfe_table(steps=30)
    report = {"device": device_info(), "steps": steps, "repeats": repeats, "B1": b1, "B2": b2, "B3": b3,
              "B4_formulas": trajectory_memory_table(30), "B4_measured": b4_measured,
              "wall_s": time.perf_counter() - start}
    _write(out_dir, "bench-cpu", report)
    return _summary(report)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {"device": report["device"].get("device"),
            "B1_overhead": [{"case": r["case"], "forward": r["overhead_forward"], "total": r["overhead_total"],
                             "forward_cpu_time": r["detail"].get("overhead_forward_cpu_time")}
                            for r in report["B1"]],
            "B2_modes": [{k: r[k] for k in ("case", "ratio", "mode", "time_vs_batched", "rows", "predicted_rows",
                                            "trajectory_mib", "values_mib", "peak_mem_mib") if k in r}
                         for r in report["B2"]],
            "B3_nfe_ok": all(r["ok"] for r in report.get("B3", [])) if report.get("B3") else None,
            "B4_measured": report.get("B4_measured", []), "wall_s": report["wall_s"]}


def _write(out_dir: Path, stem: str, report: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    lines = [f"# directedit benchmarks ({report['device'].get('device')})", "",
             f"N = {report['steps']}, median of {report['repeats']} interleaved repetitions.", "",
             "## B1 overhead (DirectEdit batched+snapped / naive Euler dual path; target ≤ 1.05)", "",
             "| case | forward only | inversion + forward | forward, CPU time |", "|---|---|---|---|"]
    for r in report["B1"]:
        total = "n/a" if r["overhead_total"] is None else f"{r['overhead_total']:.3f}"
        cpu = r["detail"].get("overhead_forward_cpu_time")
        cpu_text = "n/a" if cpu is None else f"{cpu:.3f}"
        lines.append(f"| {r['case']} | {r['overhead_forward']:.3f} | {total} | {cpu_text} |")
    if report.get("B2"):
        lines += ["", "## B2 source-branch modes", "",
                  "| case | r | K | mode | time / batched | rows | predicted rows | trajectory MiB | values MiB | "
                  "peak MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["B2"]:
            peak = "n/a" if r.get("peak_mem_mib") is None else f"{r['peak_mem_mib']:.0f}"
            lines.append(f"| {r['case']} | {r['ratio']} | {r['K']} | {r['mode']} | {r['time_vs_batched']:.3f} | "
                         f"{r['rows']} | {r['predicted_rows']} | {r['trajectory_mib']:.2f} | "
                         f"{r['values_mib']:.2f} | {peak} |")
    if report.get("B3"):
        lines += ["", "## B3 NFE (N = 30)", "", "| family | method | calls (pred / counted / reported) | rows "
                  "(pred / counted) | ok |", "|---|---|---|---|---|"]
        lines += [f"| {r['family']} | {r['method']} | {r['calls_predicted']} / {r['calls_counted']} / "
                  f"{r['calls_reported']} | {r['rows_predicted']} / {r['rows_counted']} | {r['ok']} |"
                  for r in report["B3"]]
    if report.get("B4_formulas"):
        lines += ["", "## B4 memory (formulas)", ""]
        lines += [f"- {r['what']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()
                                                 if isinstance(v, float)) for r in report["B4_formulas"]]
    if report.get("B4_measured"):
        lines += ["", "## B4 memory (measured)", ""]
        lines += [f"- {r['case']}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in r.items() if k != "case") for r in report["B4_measured"]]
    lines += ["", f"Wall time {report['wall_s']:.1f} s."]
    atomic_write(out_dir / f"{stem}.md", "\n".join(lines) + "\n")
    write_json(out_dir / f"{stem}.json", report)


# --- GPU: full-size random-init configs ---------------------------------------------------------------------------
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
FLUX_DEV = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def random_full_size(kind: str, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                     config: dict[str, Any] | None = None) -> Any:
    """A full-size transformer with random weights: built on the meta device (buffers real), cast, moved with
    ``to_empty``, buffers restored, parameters drawn N(0, 1/(3·fan_in)) (norm weights 1, biases 0)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = SD3Transformer2DModel if kind == "sd3" else FluxTransformer2DModel
    cfg = config or (SD35_MEDIUM if kind == "sd3" else FLUX_DEV)
    with init_empty_weights(include_buffers=False):
        model = cls(**cfg)
    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    model = model.to(dtype=dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(buffers[name].to(device, buf.dtype))
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.normal_(0.0, (1.0 / (3.0 * fan_in)) ** 0.5, generator=gen)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return model.eval()


def full_size_model(kind: str, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                    config: dict[str, Any] | None = None) -> Any:
    """A FlowModel (SD3Model / FluxModel) over :func:`random_full_size`, random prompt embeddings, no VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from directedit.testing import hash_encoder
    from flowcore.adapters import FluxModel, SD3Model

    den = random_full_size(kind, device, dtype, config)
    vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=(1, 1, 1, 1), latent_channels=16))
    if kind == "sd3":
        enc = hash_encoder(333, den.config.joint_attention_dim, den.config.pooled_projection_dim)
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        cls: Any = SD3Model
    else:
        enc = hash_encoder(512, den.config.joint_attention_dim, den.config.pooled_projection_dim, text_ids=True)
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
        cls = FluxModel

    def encode(prompts: list[str], **_: Any) -> Any:
        return enc(prompts).to(device, dtype)

    return cls(den, vae, sched, prompt_encoder=encode, model_id=f"random-{kind}")  # type: ignore[arg-type]


def run_gpu_suite(out_dir: Path, *, steps: int = 10, repeats: int = 3, quick: bool = False,
                  budget_s: float = 100.0, only: str | None = None, tiny: bool = False) -> dict[str, Any]:
    """B1, B2 and measured B4 on the CUDA card within a time budget (``tiny``: small configs on any device).

    Stages, each written to ``bench-gpu.md/json`` when done, later ones skipped once ``budget_s`` is spent:
    B1 forward-only ratio for both models; B2 + B4 for FLUX.1-dev, then SD3.5-medium; B1 with the inversion.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not tiny:
        raise ValueError("--suite gpu needs a CUDA device (use --suite cpu here)")
    start = time.perf_counter()
    report: dict[str, Any] = {"device": device_info(), "steps": steps, "repeats": repeats, "B1": [], "B2": [],
                              "B4_measured": [], "B4_formulas": trajectory_memory_table(30), "skipped": []}
    specs = [("sd3", "SD3.5-medium random bf16, 1024² (4096+333 tokens)", 1024, 0.3),
             ("flux", "FLUX.1-dev random bf16, 512² (1024+512 tokens)", 512, 0.15)]
    cases: dict[str, tuple[str, dict[str, Any]]] = {}
    for kind, label, side, ratio in specs:
        if only is not None and kind != only:
            continue
        config = None
        if tiny:
            config = ({**SD35_MEDIUM, "num_layers": 2, "num_attention_heads": 2, "caption_projection_dim": 128,
                       "joint_attention_dim": 64, "pooled_projection_dim": 32, "dual_attention_layers": (0,)}
                      if kind == "sd3" else {**FLUX_DEV, "num_layers": 1, "num_single_layers": 2,
                                             "num_attention_heads": 2, "joint_attention_dim": 64,
                                             "pooled_projection_dim": 32})
            side = 128
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = full_size_model(kind, device, dtype, config)
        gen = torch.Generator(device=device).manual_seed(0)
        z0 = (torch.randn(1, 16, side // 8, side // 8, generator=gen, device=device) if kind == "sd3" else
              torch.randn(1, (side // 16) ** 2, 64, generator=gen, device=device))
        cases[kind] = (label, _case(model, z0, steps=steps, ratio=ratio))
    report["build_s"] = time.perf_counter() - start

    def save() -> None:
        _write(out_dir, "bench-gpu", {**report, "wall_s": time.perf_counter() - start})

    def over_budget(stage: str) -> bool:
        if time.perf_counter() - start > budget_s:
            report["skipped"].append(stage)
            return True
        return False

    for label, case in cases.values():
        res = overhead(case, repeats=repeats, device=device, total=False)
        report["B1"].append({"case": label, "steps": steps, "overhead_forward": res["overhead_forward"],
                             "overhead_total": None, "detail": res})
        print(f"B1 {label}: {res['overhead_forward']:.3f} (forward)", flush=True)
        save()
    if not quick:
        for kind in ("flux", "sd3"):
            if kind not in cases or over_budget(f"B2/B4 {kind}"):
                continue
            label, case = cases[kind]
            report["B2"] += [{"case": label, **row} for row in modes(case, ratios=(0.15, 0.3), repeats=1,
                                                                    device=device)]
            report["B4_measured"].append({"case": label, **value_memory_check(case, 0.15 if kind == "flux" else 0.3)})
            save()
        for i, (kind, (_, case)) in enumerate(cases.items()):
            if over_budget(f"B1 total {kind}"):
                continue
            res = overhead(case, repeats=repeats, device=device, total=True)
            report["B1"][i]["overhead_total"] = res["overhead_total"]
            report["B1"][i]["detail"] = res
            save()
    report["wall_s"] = time.perf_counter() - start
    _write(out_dir, "bench-gpu", report)
    return _summary(report)
