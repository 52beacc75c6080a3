"""``python -m flowcore.toy``: train, export, sample, list, verify and evaluate the toy models (toyworld.md §10.2).

Subcommands: ``train`` (§8.6), ``export`` (§8.7), ``sample`` (world samples, or a model's samples with
``--model``), ``list`` (models and the state of their weights), ``verify`` (sha256 of every shipped file) and
``evaluate`` (the §9 gates, from ``flowcore.toy.gates``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _cmd_train(args: argparse.Namespace) -> int:
    from flowcore.toy.trainer import Trainer, options_from_args

    summary = Trainer(options_from_args(args)).run()
    print(json.dumps(summary, indent=2), flush=True)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from flowcore.toy.export import run_from_args

    entry = run_from_args(args)
    size = sum(f["bytes"] for f in entry["files"].values())
    print(f"exported into {args.name or 'the recipe toy'}: {len(entry['files'])} files, {size / 1e6:.2f} MB; "
          f"finished={entry['finished']}, gates={'null' if entry['gates'] is None else 'measured'}", flush=True)
    return 0


def _grid(images, columns: int):
    import torch

    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    canvas = torch.ones(c, rows * h, columns * w)
    for i in range(n):
        r, col = divmod(i, columns)
        canvas[:, r * h:(r + 1) * h, col * w:(col + 1) * w] = images[i]
    return canvas[None]


def _cmd_sample(args: argparse.Namespace) -> int:
    from flowcore.io import save_result
    from flowcore.toy.render import render
    from flowcore.toy.scene import sample_scene

    scenes = [sample_scene(args.seed, i, args.split) for i in range(args.n)]
    captions = [s.caption("full") for s in scenes]
    meta = {"command": "sample", "split": args.split, "n": args.n, "seed": args.seed, "world": "toy",
            "scenes": [s.to_dict() for s in scenes], "captions": captions}
    if args.model:
        from flowcore.toy.bundle import load

        bundle = load(args.model)
        if args.model == "toy-kontext":
            raise SystemExit("sample --model toy-kontext needs reference images; use toy-flux for text-to-image")
        images = bundle.generate(captions, seed=args.seed, steps=args.steps, guidance=args.guidance)
        meta.update(model=args.model, manifest_sha256=bundle.manifest_sha256, steps=args.steps,
                    guidance=args.guidance)
    else:
        images = render(scenes)
        meta.update(model=None)
    output = Path(args.output_dir)
    stem = output / (args.name or (f"{args.model or 'world'}-{args.split}-seed{args.seed}"))
    if args.grid:
        images = _grid(images, math.ceil(math.sqrt(len(images))))
    path = save_result(stem, images, meta)
    print(f"wrote {path}", flush=True)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from flowcore.toy.bundle import WEIGHTS_FOLDER, available, manifest, weights_root

    models = manifest()["models"]
    rows = []
    for name in available():
        entry = models.get(WEIGHTS_FOLDER[name])
        size = sum(f["bytes"] for f in entry["files"].values()) if entry else 0
        rows.append({
            "model": name, "weights": "yes" if entry else "missing", "MB": round(size / 1e6, 2),
            "recipe": entry.get("recipe") if entry else None, "steps": entry.get("steps") if entry else None,
            "finished": entry.get("finished") if entry else None,
            "gates": None if not entry else ("measured" if entry.get("gates") else "not run"),
            "parts": sorted(entry.get("parts", {})) if entry else [],
        })
    if args.json:
        print(json.dumps({"weights_root": str(weights_root()), "models": rows}, indent=2))
    else:
        print(f"weights: {weights_root()}")
        for row in rows:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from flowcore.toy.bundle import ToyWeightsCorrupted, manifest, verify, weights_root

    models = manifest()["models"]
    if not models:
        print(f"no shipped weights in {weights_root()} (MANIFEST.json has no entries)")
        return 0
    try:
        verify()
    except ToyWeightsCorrupted as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    total = sum(f["bytes"] for e in models.values() for f in e["files"].values())
    print(f"OK: {len(models)} models, {sum(len(e['files']) for e in models.values())} files, "
          f"{total / 1e6:.2f} MB verified in {weights_root()}")
    return 0


def _cmd_evaluate(rest: Sequence[str]) -> int:
    try:
        from flowcore.toy import gates as evaluate_module
    except ImportError:
        print("flowcore.toy.gates (the §9 gates) is not part of this checkout yet", file=sys.stderr)
        return 2
    cli = getattr(evaluate_module, "main", None)
    if cli is None:
        print("flowcore.toy.gates has no main(argv)", file=sys.stderr)
        return 2
    return int(cli(list(rest)) or 0)


def build_parser() -> argparse.ArgumentParser:
    from flowcore.toy.export import add_export_args
    from flowcore.toy.trainer import add_train_args

    parser = argparse.ArgumentParser(prog="python -m flowcore.toy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_args(sub.add_parser("train", help="train one recipe (toyworld.md §8.5–8.6)"))
    add_export_args(sub.add_parser("export", help="export a run's EMA weights as fp16 (§8.7)"))
    sample = sub.add_parser("sample", help="world samples, or a model's samples with --model")
    sample.add_argument("--split", default="test", choices=("train", "val", "test"))
    sample.add_argument("--n", type=int, default=16)
    sample.add_argument("--grid", action="store_true", help="one grid image instead of one file per sample")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--model", default=None, choices=("toy-sd3", "toy-flux", "toy-unet", "toy-kontext"))
    sample.add_argument("--steps", type=int, default=None)
    sample.add_argument("--guidance", type=float, default=None)
    sample.add_argument("--output-dir", default="outputs/flowcore-toy/sample")
    sample.add_argument("--name", default=None, help="file stem inside --output-dir")
    listing = sub.add_parser("list", help="the toy models and the state of their weights")
    listing.add_argument("--json", action="store_true")
    sub.add_parser("verify", help="check every shipped file against MANIFEST.json")
    # evaluate's own flags (--model, --json [PATH], ...) are parsed by flowcore.toy.gates.main
    sub.add_parser("evaluate", help="the §9 quality gates (flowcore.toy.gates; its flags pass through)")
    return parser


COMMANDS = {
    "train": _cmd_train, "export": _cmd_export, "sample": _cmd_sample, "list": _cmd_list,
    "verify": _cmd_verify,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "evaluate":
        return _cmd_evaluate(argv[1:])
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
