#!/usr/bin/env python
"""Correctness of the Triton TTT kernels against the torch reference on the device at hand.

Compares o, W1', W2' with the float64 reference by the rules of kernels.md §7 (fp32: rel ≤ 1e-5 and
err ≤ 1e-4·max|ref|; fp16/bf16: err ≤ 2·err(torch in that dtype) + c·rms(ref)) over small layouts (text first
and last, non-square grids, two segments, D 16/32/64/128), one SD3.5-M 1K shape in bf16, and checks
determinism (two runs bitwise equal), n_split invariance, out_rows slicing and fused vs unfused convs.
Prints the max errors of every case and a PASS/FAIL summary; exit code 1 on any failure.

On CUDA: fp32 (IEEE dots), fp16, bf16. Without CUDA it runs the small cases under TRITON_INTERPRET=1
(fp32, fp16) so the script itself can be tried on a CPU.

    python kernels/benchmarks/gpu_check.py            # full check (≈ 1.5 min on an H100, mostly compiles)
    python kernels/benchmarks/gpu_check.py --quick    # no fp16, no 2K shape (≈ 1 min)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as hz

# (name, B, H, D, make_layout args, n_split)
SMALL_CASES = [
    ("plain_N17_d16", 1, 1, 16, (17,), 1),
    ("sd3_order_9x7_d64", 2, 3, 64, (0, ((9, 7),), 5), None),
    ("flux_order_two_grids_d32", 1, 2, 32, (7, ((12, 10), (6, 5)), 3, 2), 3),
    ("text_first_8x12_d128", 1, 2, 128, (4, ((8, 12),)), 2),
]
REALISTIC_CASES = [
    ("sd35m_1k", 2, 24, 64, (0, ((64, 64),), 333), None),
    ("sd35m_2k", 2, 24, 64, (0, ((128, 128),), 333), None),
]


class Checker:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.results.append((name, ok, detail))
        hz.log(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")

    def guard(self, name: str, fn) -> None:
        """Run one check; an exception (e.g. a compile error) is a failure that does not stop the others."""
        try:
            fn()
        except Exception as exc:
            self.record(name, False, f"{type(exc).__name__}: {str(exc)[:500]}")
            traceback.print_exc(limit=4)
            sys.stderr.flush()


def _inputs(B, H, D, layout, dtype, device, seed=0):
    from flowkernels._testing import make_layout, make_ttt_inputs

    N, segments = make_layout(*layout)
    x = make_ttt_inputs(B, N, H, D, generator=torch.Generator().manual_seed(seed))
    return x.to(dtype, device), segments


def _call(x, segments, **kw):
    from flowkernels import ttt_attention

    return ttt_attention(*x.args(), segments=segments, q_conv=x.q_conv, k_conv=x.k_conv, **kw)


def check_against_reference(chk: Checker, case, dtype, device) -> None:
    from flowkernels import ttt_attention_reference
    from flowkernels._testing import check_fp32, check_lowp

    name, B, H, D, layout, n_split = case
    label = f"{name} {str(dtype).replace('torch.', '')}"

    def body():
        x, segments = _inputs(B, H, D, layout, dtype, device)
        t0 = time.perf_counter()
        got = _call(x, segments, backend="triton", n_split=n_split, return_state=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        x64 = x.to(torch.float64)
        ref = ttt_attention_reference(*x64.args(), segments=segments, q_conv=x64.q_conv, k_conv=x64.k_conv,
                                      return_state=True)  # fmt: skip
        reports, ok = [], True
        if dtype == torch.float32:
            checks = [check_fp32(g, r, t) for g, r, t in zip(got, ref, ("o", "W1'", "W2'"))]
        else:
            xl = x.to(torch.float32)
            low = ttt_attention_reference(*xl.args(), segments=segments, q_conv=xl.q_conv, k_conv=xl.k_conv,
                                          compute_dtype=dtype, return_state=True)  # fmt: skip
            checks = [check_lowp(g, r, lo, dtype, t) for g, r, lo, t in zip(got, ref, low, ("o", "W1'", "W2'"))]
        for passed, report in checks:
            ok = ok and passed
            reports.append(report.strip())
        chk.record(label, ok, f"N {x.q.shape[1]}, first call {first:.1f} s | " + " | ".join(reports))

    chk.guard(label, body)


def check_invariances(chk: Checker, device, dtype) -> None:
    from flowkernels._testing import rel_error

    case = SMALL_CASES[2]
    _, B, H, D, layout, _ = case
    tag = str(dtype).replace("torch.", "")

    def determinism():
        x, segs = _inputs(B, H, D, layout, dtype, device, seed=1)
        a = _call(x, segs, backend="triton", n_split=3, return_state=True)
        b = _call(x, segs, backend="triton", n_split=3, return_state=True)
        same = all(torch.equal(u, v) for u, v in zip(a, b))
        chk.record(f"determinism {tag}", same, "two runs bitwise equal" if same else "runs differ")

    def n_split():
        x, segs = _inputs(B, H, D, layout, dtype, device, seed=2)
        a = _call(x, segs, backend="triton", n_split=1, return_state=True)
        b = _call(x, segs, backend="triton", return_state=True)
        rels = [rel_error(u, v) for u, v in zip(a, b)]
        bound = 1e-5 if dtype == torch.float32 else 1e-2
        chk.record(f"n_split 1 vs default {tag}", max(rels) <= bound, f"rel {max(rels):.2e} (≤ {bound})")

    def out_rows():
        x, segs = _inputs(B, H, D, layout, dtype, device, seed=3)
        full = _call(x, segs, backend="triton")
        part = _call(x, segs, backend="triton", out_rows=(5, 90))
        err = (part.float() - full[:, 5:90].float()).abs().max().item()
        chk.record(f"out_rows slicing {tag}", err <= 1e-6 * max(1.0, full.float().abs().max().item()),
                   f"max diff {err:.2e}")  # fmt: skip

    def fused_vs_unfused():
        x, segs = _inputs(B, H, D, layout, dtype, device, seed=4)
        a = _call(x, segs, backend="triton", fuse_conv=True)
        b = _call(x, segs, backend="triton", fuse_conv=False)
        rel = rel_error(a, b)
        bound = 1e-5 if dtype == torch.float32 else 2e-2
        chk.record(f"fused vs unfused conv {tag}", rel <= bound, f"rel {rel:.2e} (≤ {bound})")

    for name, fn in (("determinism", determinism), ("n_split", n_split), ("out_rows", out_rows),
                     ("fused_vs_unfused", fused_vs_unfused)):  # fmt: skip
        chk.guard(f"{name} {tag}", fn)


def run(device: torch.device | None = None, quick: bool = False, autotune: bool = False) -> int:
    """Run every check; ``quick`` skips fp16 (same code path as bf16) and the 2K shape. Autotuning is off
    unless asked for (each extra config is another compile; correctness does not depend on it)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    hz.ensure_importable()
    import flowkernels

    previous = os.environ.get("FLOWKERNELS_AUTOTUNE")
    os.environ["FLOWKERNELS_AUTOTUNE"] = "1" if autotune else "0"
    try:
        return _run_checks(device, quick, flowkernels)
    finally:
        if previous is None:
            os.environ.pop("FLOWKERNELS_AUTOTUNE", None)
        else:
            os.environ["FLOWKERNELS_AUTOTUNE"] = previous


def _run_checks(device: torch.device, quick: bool, flowkernels) -> int:

    hz.log(f"# gpu_check on {hz.device_name(device)}; {hz.versions()}; has_triton {flowkernels.has_triton()}")
    dtypes = [torch.float32] + ([] if quick and device.type == "cuda" else [torch.float16])
    dtypes += [torch.bfloat16] if device.type == "cuda" else []
    chk = Checker()
    started = time.perf_counter()
    for dtype in dtypes:
        for case in SMALL_CASES:
            check_against_reference(chk, case, dtype, device)
    for dtype in (torch.float32, torch.bfloat16) if device.type == "cuda" else (torch.float32,):
        check_invariances(chk, device, dtype)
    if device.type == "cuda":
        for case in REALISTIC_CASES[: 1 if quick else 2]:
            check_against_reference(chk, case, torch.bfloat16, device)
    _print_autotune_choices()
    failed = [n for n, ok, _ in chk.results if not ok]
    hz.log(f"# gpu_check: {len(chk.results) - len(failed)}/{len(chk.results)} passed "
           f"in {time.perf_counter() - started:.1f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


def _print_autotune_choices() -> None:
    mod = sys.modules.get("flowkernels.ops.ttt.triton_fwd")
    for (kind, head_dim, dtype, n_configs, _), tuner in getattr(mod, "_KERNELS", {}).items():
        for key, cfg in getattr(tuner, "cache", {}).items():
            hz.log(f"# config {kind} D{head_dim} {dtype} ({n_configs} candidates) {key}: {cfg}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="skip fp16 and the 2K shape")
    p.add_argument("--autotune", action="store_true", help="autotune launch configs (more compiles)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None)
    args = p.parse_args(argv)
    with torch.inference_mode():
        return run(torch.device(args.device) if args.device else None, quick=args.quick, autotune=args.autotune)


if __name__ == "__main__":
    sys.exit(main())
