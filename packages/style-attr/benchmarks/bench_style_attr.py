"""style-attr benchmarks B1–B6 (spec §8): ratios measured side by side in one run.

    python packages/style-attr/benchmarks/bench_style_attr.py --output-dir outputs/style-attr/bench [--quick]
    python packages/style-attr/benchmarks/bench_style_attr.py --device cuda --output-dir OUT   # GPU shapes

Same as ``style-attr bench``. On CUDA it builds random SD1.5-shaped (512², fp16) and SD3.5-medium-shaped (1024²,
bf16) models (no downloads) and runs B1–B4; ``bench.json`` names the card.
"""

from __future__ import annotations

import sys

from style_attr.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
