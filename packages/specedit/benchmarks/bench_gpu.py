"""§8.2: one denoising call of the full-size FLUX.1-Kontext-dev and Qwen-Image architectures (random weights,
bf16, 1024² target + 1024² reference), baseline vs every SpecEdit call type, on one CUDA GPU.

    PYTHONPATH=shared/src:packages/specedit/src python packages/specedit/benchmarks/bench_gpu.py --out DIR

No downloads (configs only; meta init → to_empty → normal_(0, 0.02)). Times each call type with CUDA events
(2 warm-ups, median of 5, interleaved), composes predicted end-to-end latency ratios at 30/18/11/9 NFE next to
the paper's, reports the cost of the proportional-attention bias (a float mask rules out flash kernels), and
writes DIR/bench_gpu.json with the card's name. About a minute on an H100 (≈ 24 GB, then ≈ 40 GB of weights).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.json")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per call type (median)")
    parser.add_argument("--only", choices=("flux-kontext-dev", "qwen-image-edit"), default=None,
                        help="one architecture only")
    args = parser.parse_args()
    from flowcore.cli import format_summary
    from flowcore.io import write_json
    from specedit.bench import gpu_bench

    start = time.perf_counter()
    report = gpu_bench(repeats=args.repeats, only=args.only)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    print(format_summary(report))
    print("wrote", write_json(args.out / "bench_gpu.json", report))


if __name__ == "__main__":
    main()
