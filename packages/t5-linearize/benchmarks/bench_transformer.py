#!/usr/bin/env python
"""B3 (spec §8): full SD3.5-Medium/Large-shaped SD3Transformer2DModel with random bf16 weights built on the GPU,
B = 2 (one CFG pair), 1K and 2K, transformer-only forward. Providers: SDPA flash and cuDNN (the faster one is the
baseline), TTT torch (eager), TTT Triton (flowkernels). Also one site's operator time (SDPA vs TTT) at each shape
and the peak memory of every provider. Prints the ratio table and writes bench_transformer.csv/.json to
--output-dir (alias --out) after every measurement, so a timeout keeps what was measured.

Needs only torch, Triton and diffusers (a wheel beside it) with the monorepo sources on the path; nothing is
downloaded (random-init full-size configs):

    export PYTHONPATH=shared/src:kernels/src:packages/t5-linearize/src
    python packages/t5-linearize/benchmarks/bench_transformer.py --output-dir /tmp/b3            # ≈ 2–5 min
    python packages/t5-linearize/benchmarks/bench_transformer.py --models medium --output-dir /tmp/b3
    python packages/t5-linearize/benchmarks/bench_transformer.py --tiny --device cpu              # CPU smoke test
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parents[3]  # the monorepo root, when run from a checkout
    for sub in ("shared/src", "kernels/src", "packages/t5-linearize/src"):
        if (root / sub).is_dir() and str(root / sub) not in sys.path:
            sys.path.insert(0, str(root / sub))
    from t5_linearize.bench import main_transformer, transformer_parser

    main_transformer(transformer_parser().parse_args())
