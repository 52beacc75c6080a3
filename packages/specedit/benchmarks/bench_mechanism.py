"""B2 (spec §8.1): per-call wall time of every SpecEdit call type on a tiny-width FLUX Kontext, CPU.

    python packages/specedit/benchmarks/bench_mechanism.py [--repeats 5] [--out DIR]

Prints wall-time speed-ups next to the analytic FLOP speed-ups (both vs the full-resolution call), measured side
by side in one run (flowcore.bench.compare, interleaved repeats, 2 threads). Same as `specedit bench`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per call type (median)")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_mechanism.json")
    args = parser.parse_args()
    from flowcore.cli import format_summary
    from flowcore.io import write_json
    from specedit.bench import mechanism_bench, predicted_latency

    report = mechanism_bench(repeats=args.repeats)
    report["predicted_end_to_end"] = predicted_latency(report["rows"], branches=1)
    print(format_summary(report))
    if args.out is not None:
        print("wrote", write_json(args.out / "bench_mechanism.json", report))


if __name__ == "__main__":
    main()
