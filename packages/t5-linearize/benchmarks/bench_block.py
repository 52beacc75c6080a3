#!/usr/bin/env python
"""B2 (spec §8): one SD3.5-Medium-shaped JointTransformerBlock on the CPU (joint and dual), softmax vs TTT.

    python packages/t5-linearize/benchmarks/bench_block.py --output-dir /tmp/b2      # = t5-linearize bench block
"""

from __future__ import annotations

from t5_linearize.bench import block_parser, main_block

if __name__ == "__main__":
    main_block(block_parser().parse_args())
