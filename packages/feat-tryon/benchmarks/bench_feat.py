"""FEAT's benchmark rows (spec §8), side by side in one run; same as ``feat-tryon bench``.

    python packages/feat-tryon/benchmarks/bench_feat.py --output-dir outputs/feat-tryon/bench [--device cuda]
"""

from __future__ import annotations

import sys

from feat_tryon.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
