"""Print the A3 loss ratio of several `t5-linearize demo --train` runs side by side.

Usage: python protocol_sweep_summary.py RUN_DIR [RUN_DIR ...] [--json PATH]

Each RUN_DIR is a demo ``--output-dir``. The ratio T5 / softmax is the mean flow loss of the last 200 logged steps
before each checkpoint step (the protocol's "final loss" at 3000), read from the runs' ``train_log.jsonl``, so runs
stopped early still give their curve; A1–A4 come from ``report.json`` where the run finished.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

CHECKPOINTS = (500, 1000, 1500, 2000, 2500, 3000)
WINDOW = 200


def read_losses(path: Path) -> list[float]:
    """Flow loss per step (index = step) of one train_log.jsonl; [] when missing."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["step"])
    return [float(r.get("flow_loss", r["loss"])) for r in rows]


def window_mean(losses: list[float], end: int) -> float | None:
    """Mean of losses[end - WINDOW:end]; None when the run did not get that far."""
    if len(losses) < end:
        return None
    tail = losses[end - WINDOW:end]
    return sum(tail) / len(tail)


def summarise(run: Path) -> dict:
    losses = {name: read_losses(run / name / "train_log.jsonl") for name in ("t5", "softmax", "linear")}
    t5, softmax = losses["t5"], losses["softmax"]
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
    plan = report.get("plan", {})
    ratios = {}
    for step in CHECKPOINTS:
        a, b = window_mean(t5, step), window_mean(softmax, step)
        ratios[step] = None if a is None or b is None else a / b
    return {"run": run.name, "lr": plan.get("lr"), "new_lr_mult": plan.get("new_lr_mult"),
            "t5_steps": len(t5), "softmax_steps": len(softmax), "ratio_at": ratios,
            "loss_at": {name: {step: window_mean(values, step) for step in CHECKPOINTS} for name, values in losses.items()},
            "acceptance": report.get("acceptance"),
            "all_correct": {k: v.get("all_correct") for k, v in report.get("models", {}).items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="demo --train output folders")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = [summarise(run) for run in args.runs]
    print("run".ljust(24) + "steps T5/sm".ljust(13) + "".join(f"@{s}".rjust(7) for s in CHECKPOINTS)
          + "   A1 A2 A3 A4")
    for row in rows:
        ratios = "".join(("-" if r is None else f"{r:.3f}").rjust(7) for r in row["ratio_at"].values())
        acc = row["acceptance"] or {}
        verdict = " ".join(("ok" if acc[k].get("pass") else "no") if k in acc else "--" for k in ("A1", "A2", "A3", "A4"))
        print(row["run"].ljust(24) + f"{row['t5_steps']}/{row['softmax_steps']}".ljust(13) + ratios + "   " + verdict)
    print("\nmean flow loss of the 200 steps before each checkpoint")
    for row in rows:
        for name, at in row["loss_at"].items():
            values = "".join(("-" if v is None else f"{v:.4f}").rjust(7) for v in at.values())
            print(f"{row['run']}/{name}".ljust(37) + values)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
