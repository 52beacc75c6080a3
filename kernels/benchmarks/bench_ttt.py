#!/usr/bin/env python
"""Benchmark TTT attention (torch reference, Triton) against SDPA at SD3.5-Medium shapes (kernels.md §8).

GPU (default): B 2, 24 heads, d 64, bf16; N = 4429 (64×64 grid + 333 text, 1K) and 16717 (128×128 + 333, 2K).
Providers: sdpa_flash / sdpa_cudnn / sdpa_efficient (the fastest is the baseline), torch_ref (eager reference,
fp32 maths), torch_ref_lowp (reference with bf16 matmuls), triton_fused (norm + convs inside the TTT tiles),
triton_unfused (norm + convs materialised by torch, then the TTT kernels).
``--tiny``: a CPU smoke run (fp32, tiny shapes; Triton through TRITON_INTERPRET=1) that finishes in < 1 min.

Every (shape, provider) runs inside try/except: a failing compile is recorded in the CSV and the run goes on.
Writes ``ttt_<device>_<timestamp>.csv`` and ``.txt`` (the ratio table) into ``--out`` (default
benchmarks/results/) and prints one CSV line per measurement. Exit code 1 when any provider failed.

    python kernels/benchmarks/bench_ttt.py --out /tmp/bench            # GPU, < 4 min on an H100/H200
    python kernels/benchmarks/bench_ttt.py --check --out /tmp/bench    # correctness check first (gpu_check)
    python kernels/benchmarks/bench_ttt.py --tiny                      # CPU smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as hz

GPU_SHAPES = [
    hz.Shape("sd35m_1k", B=2, H=24, D=64, grid=(64, 64), n_text=333),
    hz.Shape("sd35m_2k", B=2, H=24, D=64, grid=(128, 128), n_text=333),
]
EXTENDED_SHAPES = [
    hz.Shape("sd35m_1k_b1", B=1, H=24, D=64, grid=(64, 64), n_text=333),
    hz.Shape("plain_1024", B=2, H=24, D=64, grid=(32, 32), n_text=0),
    hz.Shape("sd35l_1k", B=2, H=38, D=64, grid=(64, 64), n_text=333),
    hz.Shape("flux_1k", B=1, H=24, D=128, grid=(64, 64), n_text=512, text_first=True),
]
TINY_SHAPES = [
    hz.Shape("tiny_sd3", B=1, H=2, D=64, grid=(8, 8), n_text=13),
    hz.Shape("tiny_flux", B=1, H=2, D=32, grid=(6, 10), n_text=9, text_first=True),
]
GPU_PROVIDERS = ["sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "triton_fused", "triton_unfused", "torch_ref",
                 "torch_ref_lowp"]  # fmt: skip
CPU_PROVIDERS = ["sdpa", "triton_fused", "triton_unfused", "torch_ref"]
SDPA_BACKENDS = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION",
                 "sdpa_efficient": "EFFICIENT_ATTENTION", "sdpa_math": "MATH"}  # fmt: skip
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                   help="folder for the CSV and the table (created)")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="tiny CPU-sized shapes (smoke test)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--providers", default=None, help="comma-separated subset of the providers")
    p.add_argument("--extended", action="store_true", help="also B=1, N=1024, SD3.5-L and FLUX (D=128) shapes")
    p.add_argument("--budget-s", type=float, default=210.0,
                   help="stop starting new measurements after this many seconds (default 210)")  # fmt: skip
    p.add_argument("--reps", type=int, default=5, help="CPU repetitions (median of >= 5)")
    p.add_argument("--allow-tf32", action="store_true",
                   help="let torch's fp32 matmuls use TF32 (Triton fp32 dots stay IEEE)")  # fmt: skip
    p.add_argument("--check", action="store_true", help="run gpu_check.py's correctness comparison first")
    return p.parse_args(argv)


def make_inputs(shape: hz.Shape, dtype: torch.dtype, device: torch.device) -> dict:
    """q, k, v [B, N, H, D] (contiguous, as the projections produce them), fast weights, convs, segments."""
    from flowkernels import Segment

    gen = torch.Generator(device=device).manual_seed(0)
    B, N, H, D, C = shape.B, shape.N, shape.H, shape.D, shape.C

    def randn(*size, scale=1.0, dt=dtype):
        return (torch.randn(*size, device=device, generator=gen, dtype=torch.float32) * scale).to(dt)

    start = shape.n_text if shape.text_first else 0
    return dict(
        q=randn(B, N, H, D), k=randn(B, N, H, D), v=randn(B, N, H, D),
        w1=randn(H, D, D, scale=0.02, dt=torch.float32), w2=randn(H, D, D, scale=0.02, dt=torch.float32),
        q_conv=(randn(C, 1, 3, 3, scale=0.1, dt=torch.float32), randn(C, scale=0.1, dt=torch.float32)),
        k_conv=(randn(C, 1, 3, 3, scale=0.1, dt=torch.float32), randn(C, scale=0.1, dt=torch.float32)),
        segments=(Segment(start, *shape.grid),),
    )  # fmt: skip


def make_provider(name: str, x: dict, dtype: torch.dtype) -> Callable[[], object]:
    """A zero-argument callable running one forward of provider ``name`` on the inputs ``x``."""
    import torch.nn.functional as F

    from flowkernels import ttt_attention, ttt_attention_reference

    if name == "sdpa" or name in SDPA_BACKENDS:
        qh, kh, vh = (x[n].transpose(1, 2) for n in "qkv")  # [B, H, N, D] views, no copy (as diffusers)
        if name == "sdpa":
            return lambda: F.scaled_dot_product_attention(qh, kh, vh)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, SDPA_BACKENDS[name])

        def run_sdpa():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qh, kh, vh)

        return run_sdpa
    args = (x["q"], x["k"], x["v"], x["w1"], x["w2"])
    kw = dict(segments=x["segments"], q_conv=x["q_conv"], k_conv=x["k_conv"])
    if name == "torch_ref":
        return lambda: ttt_attention(*args, backend="torch", **kw)
    if name == "torch_ref_lowp":
        return lambda: ttt_attention_reference(*args, compute_dtype=dtype, **kw)
    if name == "triton_fused":
        return lambda: ttt_attention(*args, backend="triton", fuse_conv=True, **kw)
    if name == "triton_unfused":
        return lambda: ttt_attention(*args, backend="triton", fuse_conv=False, **kw)
    raise ValueError(f"unknown provider {name!r}")


def flops_and_bytes(provider: str, shape: hz.Shape, dtype: torch.dtype) -> tuple[float, float]:
    """Nominal work: SDPA 4·B·N²·C FLOPs, 4 passes over [B, N, C]; TTT 14·B·N·C·D FLOPs, 5 passes."""
    elem = torch.finfo(dtype).bits // 8
    one_pass = shape.B * shape.N * shape.C * elem
    if provider.startswith("sdpa"):
        return 4.0 * shape.B * shape.N**2 * shape.C, 4.0 * one_pass
    return 14.0 * shape.B * shape.N * shape.C * shape.D, 5.0 * one_pass


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return "error: " + text[:300]


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    shapes = TINY_SHAPES if args.tiny else GPU_SHAPES + (EXTENDED_SHAPES if args.extended else [])
    providers = args.providers.split(",") if args.providers else (
        GPU_PROVIDERS if device.type == "cuda" else CPU_PROVIDERS
    )  # fmt: skip
    if device.type == "cpu" and any(p.startswith("triton") for p in providers):
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
    hz.ensure_importable()
    torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32

    started = time.perf_counter()  # the budget covers the optional check too
    card = hz.device_name(device)
    meta = {**hz.versions(), "device": card, "git_commit": hz.git_commit(), "timestamp": hz.timestamp()}
    hz.log(f"# bench_ttt on {card}; torch {meta['torch']}, triton {meta['triton']}, "
           f"flowkernels {meta['flowkernels']}; dtype {dtype}; providers {providers}")  # fmt: skip
    if args.check:
        import gpu_check

        hz.log("# correctness check (gpu_check) first")
        check_rc = gpu_check.run(device, quick=True)
        hz.log(f"# correctness check finished: {'PASS' if check_rc == 0 else 'FAIL'}")

    rows: list[dict] = []
    with torch.inference_mode():
        for shape in shapes:
            rows.extend(bench_shape(shape, providers, dtype, device, args, meta, started))
    return finish(rows, providers, args, meta, device)


def bench_shape(shape, providers, dtype, device, args, meta, started) -> list[dict]:
    hz.log(f"## {shape.name}: B {shape.B}, N {shape.N} ({shape.grid[0]}x{shape.grid[1]} + {shape.n_text} text), "
           f"H {shape.H}, D {shape.D}")  # fmt: skip
    base = dict(op="ttt", mode="fwd", dtype=str(dtype).replace("torch.", ""), B=shape.B, N=shape.N, H=shape.H,
                D=shape.D, n_text=shape.n_text, grid=f"{shape.grid[0]}x{shape.grid[1]}", shape=shape.name, **meta)
    try:
        x = make_inputs(shape, dtype, device)
    except Exception as exc:  # e.g. out of memory
        hz.log(f"   inputs failed: {_short_error(exc)}")
        return [dict(base, provider=p, status=_short_error(exc)) for p in providers]
    fns: dict[str, Callable[[], object]] = {}
    rows: dict[str, dict] = {}
    for name in providers:
        row = rows[name] = dict(base, provider=name, status="ok")
        if time.perf_counter() - started > args.budget_s:
            row["status"] = "skipped: time budget"
            hz.log(f"   {name}: skipped (time budget of {args.budget_s:.0f} s used)")
            continue
        try:
            t0 = time.perf_counter()
            fn = make_provider(name, x, dtype)
            fn()  # compile / autotune / check that the backend exists
            if device.type == "cuda":
                torch.cuda.synchronize()
                row["ms_p50"], row["ms_p20"], row["ms_p80"] = hz.time_cuda(fn)
                hz.log(f"   {name}: {row['ms_p50']:.3f} ms (first call {time.perf_counter() - t0:.1f} s)")
            else:
                fns[name] = fn
        except Exception as exc:
            row["status"] = _short_error(exc)
            hz.log(f"   {name}: {row['status']}")
            traceback.print_exc(limit=3)
            sys.stderr.flush()
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if fns:
        for name, ms in hz.time_cpu_interleaved(fns, reps=args.reps).items():
            rows[name]["ms_p50"], rows[name]["ms_p20"], rows[name]["ms_p80"] = ms
            hz.log(f"   {name}: {ms[0]:.3f} ms")
    add_ratios(list(rows.values()), shape, dtype)
    for row in rows.values():
        hz.log("csv: " + hz.csv_line(row))
    return list(rows.values())


def add_ratios(rows: list[dict], shape: hz.Shape, dtype: torch.dtype) -> None:
    """Baseline = the fastest SDPA provider of this shape; ratio = t_baseline / t_provider (> 1: faster)."""
    sdpa = [r for r in rows if r["provider"].startswith("sdpa") and r["status"] == "ok" and "ms_p50" in r]
    best = min(sdpa, key=lambda r: r["ms_p50"], default=None)
    for r in rows:
        if r["status"] != "ok" or "ms_p50" not in r:
            continue
        flops, nbytes = flops_and_bytes(r["provider"], shape, dtype)
        r["tflops"] = _sig(flops / (r["ms_p50"] * 1e-3) / 1e12)
        r["gbps"] = _sig(nbytes / (r["ms_p50"] * 1e-3) / 1e9)
        if best is not None:
            r["baseline"] = best["provider"]
            r["ratio_vs_baseline"] = _sig(best["ms_p50"] / r["ms_p50"])
        for key in ("ms_p50", "ms_p20", "ms_p80"):
            r[key] = _sig(r[key])


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def finish(rows, providers, args, meta, device) -> int:
    table = hz.ratio_table(rows, providers)
    hz.log("\n# time per call (ratio = t(fastest SDPA) / t(provider); > 1 means faster than SDPA)\n" + table)
    stem = f"ttt_{device.type}_{meta['timestamp']}"
    try:
        hz.write_atomic(args.out / f"{stem}.csv", hz.csv_text(rows))
        hz.write_atomic(args.out / f"{stem}.txt", f"{meta['device']}\n{table}\n")
        hz.log(f"# wrote {args.out / (stem + '.csv')} and .txt")
    except OSError as exc:
        hz.log(f"# could not write results to {args.out}: {exc}")
        return 1
    failed = [f"{r['shape']}/{r['provider']}" for r in rows if r["status"].startswith("error")]
    if failed:
        hz.log(f"# {len(failed)} measurement(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
