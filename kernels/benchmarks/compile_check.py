#!/usr/bin/env python
"""Compile every Triton TTT kernel variant for a CUDA architecture on a machine without a GPU.

Runs Triton's full pipeline (TTIR → TTGIR → LLVM → PTX → cubin with the bundled ptxas) for each launch
config of ``triton_fwd._config_list``, dtype (bf16, fp16, fp32), head dim and fusion flag, and reports compile
time and shared memory against the per-block limit. Catches code the interpreter accepts but the compiler does
not. Uses Triton's internal ``triton.compile(ASTSource(...))`` API (checked with Triton 3.9).

    python kernels/benchmarks/compile_check.py --arch 90      # Hopper (H100/H200); 80 = Ampere
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtypes", default="bf16,fp16,fp32")
    p.add_argument("--head-dims", default="16,32,64,128")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: this compiles for real hardware")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _harness as hz

    hz.ensure_importable()
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from flowkernels.ops.ttt import triton_fwd as tf

    torch_dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    target = GPUTarget("cuda", args.arch, 32)
    limit = SMEM_LIMIT.get(args.arch, 101376)
    failures = 0

    def short(cfg) -> str:
        meta = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
        return f"[{meta} warps={cfg.num_warps} stages={cfg.num_stages}]"

    def compile_one(label, fn, types, consts, cfg):
        nonlocal failures
        sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in fn.arg_names}
        t0 = time.perf_counter()
        try:
            kernel = triton.compile(
                ASTSource(fn, sig, constexprs=consts), target=target,
                options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
            )  # fmt: skip
        except Exception as exc:
            failures += 1
            print(f"FAIL {label}: {type(exc).__name__}: {str(exc)[:600]}", flush=True)
            return
        smem = kernel.metadata.shared
        over = smem > limit
        failures += int(over)
        print(f"{'FAIL' if over else 'ok  '} {label}: {time.perf_counter() - t0:.1f} s, smem {smem} "
              f"(limit {limit})", flush=True)  # fmt: skip

    for name in args.dtypes.split(","):
        dt, tdt = DTYPES[name], torch_dtypes[name]
        prec = tf.dot_precision(tdt, allow_tf32=False)
        for D in (int(x) for x in args.head_dims.split(",")):
            for cfg in tf._config_list("update", D, tdt):
                for fused in (True, False):
                    types = {n: "*fp32" for n in ("w1_ptr", "w2_ptr", "mean_ptr", "rstd_ptr", "cw_ptr", "cb_ptr",
                                                  "ws_ptr")}  # fmt: skip
                    types.update(k_ptr=f"*{dt}", v_ptr=f"*{dt}", table_ptr="*i32")
                    consts = dict(D=D, NORMALIZE=fused, CONV=fused, DOT_PRECISION=prec, **cfg.kwargs)
                    compile_one(f"update {name} D{D} {short(cfg)} fused={fused}", tf._ttt_update_kernel, types, consts, cfg)
            for cfg in tf._config_list("apply", D, tdt):
                for fused in (True, False):
                    types = dict(q_ptr=f"*{dt}", wp_ptr="*fp32", cw_ptr="*fp32", cb_ptr="*fp32", table_ptr="*i32",
                                 o_ptr=f"*{dt}")  # fmt: skip
                    consts = dict(D=D, CONV=fused, DOT_PRECISION=prec, **cfg.kwargs)
                    compile_one(f"apply {name} D{D} {short(cfg)} conv={fused}", tf._ttt_apply_kernel, types, consts, cfg)
        for cfg in tf._config_list("stats", 64, tdt):
            types = dict(k_ptr=f"*{dt}", table_ptr="*i32", part_ptr="*fp32")
            compile_one(f"stats {name} {short(cfg)}", tf._kstats_kernel, types, dict(D=64, **cfg.kwargs), cfg)
    plain = triton.Config({}, num_warps=4, num_stages=2)
    types = dict(part_ptr="*fp32", table_ptr="*i32", slices_ptr="*i32", mean_ptr="*fp32", rstd_ptr="*fp32",
                 eps="fp32")  # fmt: skip
    compile_one("stats merge", tf._kstats_merge_kernel, types, dict(BLOCK_C=128), plain)
    for D in (int(x) for x in args.head_dims.split(",")):
        types = dict(ws_ptr="*fp32", w1_ptr="*fp32", w2_ptr="*fp32", wp_ptr="*fp32", factor="fp32")
        compile_one(f"reduce D{D}", tf._ttt_reduce_kernel, types, dict(D=D, BLOCK_R=min(D, 32)), plain)
    print(f"# compile_check sm_{args.arch}: {failures} failure(s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
