"""Which SpecEdit stage costs quality on toy-kontext? Background PSNR and edit success per variant, same pairs/seeds.

    python packages/specedit/scripts/ablate_stages.py --pairs 24 --nfe 18          # every variant below
    python packages/specedit/scripts/ablate_stages.py --pairs 24 --nfe 9 --only default no-bias mirror mirror-no-bias

Variants isolate the stages of spec §2.4–2.5: ``all-fine nc=0`` must equal plain N steps (exactness), ``all-fine``
adds only the coarse-only stage, ``none-fine`` keeps every cell coarse until the final full steps, the rest toggle
one knob of the default. Rows print mean background PSNR vs the exact target, success count and per-pair values.
"""

from __future__ import annotations

import argparse
import time

import torch

from specedit import toy
from specedit.config import SpecEditConfig
from specedit.demo import ToyRunner

VARIANTS = {
    "default": {},
    "all-fine": dict(mask_override="all"),
    "all-fine nc=0": dict(mask_override="all", n_coarse=0),
    "none-fine": dict(mask_override="none"),
    "bias": dict(proportional_attention=True),
    "no-bias": dict(proportional_attention=False),
    "ref-coarse": dict(reference_policy="coarse"),
    "mirror": dict(reference_policy="mirror_mask"),
    "mirror-no-bias": dict(reference_policy="mirror_mask", proportional_attention=False),
    "mirror-bias": dict(reference_policy="mirror_mask", proportional_attention=True),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=24, help="test pairs 0..n-1 (default 24)")
    parser.add_argument("--nfe", type=int, default=18, help="SpecEdit and plain-reduction steps (default 18)")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="run these variants only")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = toy.load_bundle("toy-kontext")
    base = SpecEditConfig(draft_factor=toy.draft_factor_for(bundle)[0])
    runner = ToyRunner(bundle, base)
    variants = {k: VARIANTS[k] for k in (args.only or VARIANTS)}
    rows: dict[str, list[tuple[float, bool]]] = {}

    def score(name: str, image: torch.Tensor, pair) -> None:
        result = toy.edit_success(image, pair)
        rows.setdefault(name, []).append((float(result.bg_psnr), bool(result.success)))

    start = time.perf_counter()
    for i in range(args.pairs):
        pair = toy.sample_edit(0, i, "test")
        score(f"plain-{args.nfe}", runner.plain_run(pair, i, args.nfe).image, pair)
        score("plain-50", runner.plain_run(pair, i, 50).image, pair)
        for name, overrides in variants.items():
            score(name, runner.spec_run(pair, i, args.nfe, base.replace(**overrides)).image, pair)
    for name, values in rows.items():
        psnrs = [v for v, _ in values]
        wins = sum(s for _, s in values)
        print(f"{name:16s} bg PSNR {sum(psnrs) / len(psnrs):6.2f} dB  success {wins}/{len(values)}  "
              f"per pair {[round(v, 1) for v in psnrs]}")
    print(f"{args.pairs} pairs, NFE {args.nfe}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
