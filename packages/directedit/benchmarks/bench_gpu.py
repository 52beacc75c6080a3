"""GPU benchmark of directedit (spec §8 B1, B2, B4) on one CUDA card, self-contained, about 1–2 minutes.

Full-size SD3.5-medium (1024², 4096+333 tokens, true CFG batch 4) and FLUX.1-dev (512², 1024+512 tokens)
transformers with random bf16 weights (meta device, then ``to_empty``; no downloads, no text encoders: random
prompt embeddings of the real shapes), N = 10 steps. Prints and writes ``bench-gpu.md`` / ``bench-gpu.json`` to
``--out DIR`` after every stage (so a timeout still leaves the finished tables):

* B1: time(DirectEdit batched+snapped) / time(naive Euler dual path), forward only (both models first), then
  inversion + forward if the budget allows;
* B2: batched / auto / cached at r ∈ {0.15, 0.3}: time, rows, peak ``max_memory_allocated``, Value-cache MiB;
* B4: measured trajectory and Value-cache bytes next to the formulas.

Run:  PYTHONPATH=shared/src:packages/directedit/src python packages/directedit/benchmarks/bench_gpu.py --out DIR
(``--tiny`` checks the script on a CPU with small configs; ``--only sd3|flux``; ``--quick`` skips B2/B4.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from directedit.benchmarks import run_gpu_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for bench-gpu.md / bench-gpu.json")
    parser.add_argument("--steps", type=int, default=10, help="steps N (default 10; the ratio does not depend on N)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions for B1 (default 3)")
    parser.add_argument("--budget", type=float, default=70.0,
                        help="seconds after which the remaining stages are skipped (default 70)")
    parser.add_argument("--only", choices=("sd3", "flux"), default=None, help="run one model only")
    parser.add_argument("--quick", action="store_true", help="B1 only")
    parser.add_argument("--tiny", action="store_true", help="small configs (script check on any device)")
    args = parser.parse_args()
    summary = run_gpu_suite(args.out, steps=args.steps, repeats=args.repeats, quick=args.quick,
                            budget_s=args.budget, only=args.only, tiny=args.tiny)
    print(summary)


if __name__ == "__main__":
    main()
