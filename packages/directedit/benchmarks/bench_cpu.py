"""CPU benchmarks B1–B4 of directedit (spec §8): ``python packages/directedit/benchmarks/bench_cpu.py --out DIR``.

Same as ``directedit bench --suite cpu``: DirectEdit / naive-Euler overhead ratios measured side by side
(flowcore.bench.compare), the source-branch modes, the NFE table against call counters, and memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from directedit.benchmarks import run_cpu_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs/directedit/bench"), help="output folder")
    parser.add_argument("--steps", type=int, default=30, help="steps N (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (default 5)")
    parser.add_argument("--quick", action="store_true", help="fewer cases, N <= 6, 2 repetitions")
    args = parser.parse_args()
    summary = run_cpu_suite(args.out, steps=args.steps, repeats=args.repeats, quick=args.quick)
    print(summary)


if __name__ == "__main__":
    main()
