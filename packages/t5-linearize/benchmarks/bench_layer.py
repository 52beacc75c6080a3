#!/usr/bin/env python
"""B1 (spec §8): one attention operator on the CPU, SDPA vs TTT core vs TTT full, ratios side by side.

    python packages/t5-linearize/benchmarks/bench_layer.py --output-dir /tmp/b1      # = t5-linearize bench layer
"""

from __future__ import annotations

from t5_linearize.bench import layer_parser, main_layer

if __name__ == "__main__":
    main_layer(layer_parser().parse_args())
