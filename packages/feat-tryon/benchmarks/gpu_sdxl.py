"""GPU measurement for the lead (spec §8): full-size SDXL UNet + ControlNet, random init, fp16, 1024², 10 steps.

Builds the SDXL UNet from its config directly on the GPU (PyTorch's default init, nothing downloaded, no
transformers), and a ControlNet of the same architecture; runs FEAT's RANF loop variants side by side
(baseline, two_pass batched / unbatched, residual_mask, empty removal region), 3 repeats each; reports wall-time,
UNet-sample, FLOP and peak-memory ratios against the baseline, with the predicted two_pass FLOP ratio 1.69.
Outputs are not checked; only time and memory count. Expected run time: about 1–1.5 minutes on an H100.

    PYTHONPATH=shared/src:packages/feat-tryon/src python packages/feat-tryon/benchmarks/gpu_sdxl.py --out DIR
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for bench.json and bench.md")
    parser.add_argument("--device", default="cuda", help="CUDA device (default cuda)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_sdxl.py needs a CUDA device", file=sys.stderr)
        return 2
    from feat_tryon.bench import run_bench

    started = time.perf_counter()
    summary = run_bench(args.out, device=args.device, full_size=True)
    print(f"measured two_pass FLOP ratio: {summary['measured_two_pass_flop_ratio']} "
          f"(predicted {summary['prediction']['two_pass_flop_ratio_sdxl']:.2f}); "
          f"total {time.perf_counter() - started:.1f} s on {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
