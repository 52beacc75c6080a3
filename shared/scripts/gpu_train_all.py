#!/usr/bin/env python
"""Train every diffusion toy on one GPU within a fixed wall budget, export them, and pack the results.

    python shared/scripts/gpu_train_all.py --budget-min 8.5 --out /tmp/toy-gpu        # on the GPU machine
    python shared/scripts/gpu_train_all.py --device cpu --budget-min 3 --preset ci    # local rehearsal
    python shared/scripts/gpu_train_all.py --unpack /tmp/toy-gpu/pack                 # back home: install

Plan (toyworld.md §8.5; one process per model, all on the one GPU, since tiny models are launch-bound):

    t=0 ──────────────── toy-sd3 ──────────────────────────────────────────────┐ train window end
    t=0 ── toy-kontext-a (phase A) ──┬── toy-kontext-b (distilled from A's EMA) ─┤
    t=0 ── toy-unet ─────────┬── toy-unet-controlnet ────────────────────────────┤
                             └── toy-unet-ip-adapter ────────────────────────────┘ export → pack → exit

With ``--clip-first-s S`` toy-clip is trained on the device first (for S seconds) and every trainer reads its
towers from that run; by default they read ``--clip-from`` (the packaged toy-clip).

Every trainer runs with ``--fit-budget --deadline``: its cosine schedule follows wall-clock progress, so it
completes exactly when its slot ends, whatever the speed turns out to be. Batches are ``--batch-mult`` × the
recipe's (lr kept). A failing process never stops the others; whatever has a checkpoint is exported (fp16,
gates null) and the script always exits before the budget ends. Progress lines are printed with flush.

Output folder: ``runs/<recipe>/`` (checkpoints, log.jsonl), ``logs/``, ``weights/`` (the shipped layout +
MANIFEST.json), ``teacher/`` (toy-kontext phase A, for gate K4), ``summary.json``, and ``pack/`` (≤ 8 files of
≤ 16 MiB: one .tar per model, the manifest, the summary and the logs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
PACK_LIMIT = 16 * 2**20
EXPORT_RESERVE_S = 40.0  # after the train window: export subprocess (imports + 6 exports) and packing
TERM_AFTER_S = 3.0  # trainers stop themselves ~10 s before the window ends; stragglers get SIGTERM ...
KILL_AFTER_S = 12.0  # ... and SIGKILL this long after the window end


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Job:
    recipe: str
    after: str | None  # the recipe whose run this one starts from (None = start at t=0)
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: float | None = None
    ended: float | None = None
    rc: int | None = None
    skipped: str | None = None
    log_handle: Any = None


JOBS = ("toy-clip", "toy-sd3", "toy-kontext-a", "toy-unet", "toy-kontext-b", "toy-unet-controlnet",
        "toy-unet-ip-adapter")
DEPENDS = {"toy-kontext-b": "toy-kontext-a", "toy-unet-controlnet": "toy-unet", "toy-unet-ip-adapter": "toy-unet"}
FROM_FLAG = {"toy-kontext-b": "--init-from", "toy-unet-controlnet": "--unet-from", "toy-unet-ip-adapter": "--unet-from"}
# with their parent skipped (--skip toy-unet), the adapters train on the packaged UNet (the trainer's default)
PACKAGED_PARENT_OK = ("toy-unet-controlnet", "toy-unet-ip-adapter")


class Orchestrator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.time()
        self.end = self.t0 + args.budget_min * 60  # the script exits before this
        self.window_end = self.end - EXPORT_RESERVE_S
        self.out = Path(args.out).expanduser().resolve()
        self.runs, self.logs = self.out / "runs", self.out / "logs"
        skip = set(args.skip) | ({"toy-clip"} if args.clip_first_s <= 0 else set())
        self.jobs = {name: Job(name, None if name in PACKAGED_PARENT_OK and DEPENDS[name] in skip else DEPENDS.get(name))
                     for name in JOBS if name not in skip}
        # with a GPU toy-clip phase first, the first-phase trainers wait for it (its towers are their frozen
        # text encoder) and their slots are shares of the window after it
        self.phase1_start = self.t0
        if "toy-clip" in self.jobs:
            self.phase1_start = self.t0 + args.clip_first_s
            for name in ("toy-sd3", "toy-kontext-a", "toy-unet"):
                if name in self.jobs:
                    self.jobs[name].after = "toy-clip"
        self.env = {**os.environ, "FLOWCORE_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join([str(REPO_SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        span = self.window_end - self.phase1_start
        self.slot_end = {  # first-phase slots end at a fraction of the window; the others at the window end
            "toy-clip": self.phase1_start,
            "toy-kontext-a": self.phase1_start + args.kontext_a_fraction * span,
            "toy-unet": self.phase1_start + args.unet_fraction * span,
        }

    def clip_source(self) -> str:
        """The toy-clip towers every trainer reads: this run's toy-clip when it left a checkpoint."""
        if "toy-clip" in self.jobs and _has_checkpoint(self.runs / "toy-clip"):
            return str(self.runs / "toy-clip")
        return self.args.clip_from

    # --- launching --------------------------------------------------------------------------------------------
    def _command(self, job: Job, deadline: float) -> list[str]:
        from_run = []
        if job.after and job.after != "toy-clip":
            from_run = [FROM_FLAG[job.recipe], str(self.runs / job.after)]
        cmd = [
            self.args.python, "-m", "flowcore.toy", "train", "--model", job.recipe, "--output-dir",
            str(self.runs / job.recipe), "--device", self.args.device, "--preset", self.args.preset,
            "--seed", str(self.args.seed), "--fit-budget", "--deadline", f"{deadline:.1f}",
            "--time-budget", f"{max(1.0, deadline - time.time()):.1f}", "--resume", "auto",
            *([] if job.recipe == "toy-clip" else ["--clip-from", self.clip_source()]), *from_run,
        ]
        cmd += self._warm_start_flags(job)
        if self.args.batch_mult != 1:
            cmd += ["--batch-mult", str(self.args.batch_mult)]
        cmd += ["--steps-mult", str(self.args.max_sample_mult)]
        if self.args.device.startswith("cuda"):
            cmd += ["--data-workers", str(self.args.data_workers)]
        return cmd

    def _warm_start_flags(self, job: Job) -> list[str]:
        """Continued training (``--warm-root``): each trainer starts from the shipped weights of its part, phase A
        from ``--warm-teacher``; phase B is always re-distilled from this run's phase A."""
        root = self.args.warm_root
        if not root:
            return []
        bundle = {"toy-sd3": "toy-sd3", "toy-unet": "toy-unet", "toy-unet-controlnet": "toy-unet",
                  "toy-unet-ip-adapter": "toy-unet"}
        if job.recipe == "toy-kontext-a" and self.args.warm_teacher:
            return ["--warm-start", str(Path(self.args.warm_teacher).resolve())]
        if job.recipe not in bundle:
            return []
        flags = ["--warm-start", str(Path(root).resolve() / bundle[job.recipe])]
        if job.recipe not in ("toy-unet", "toy-sd3"):  # the adapters are already fitted: a short warm-up
            flags += ["--warmup", "50"]
        return flags

    def launch(self, job: Job) -> None:
        deadline = self.slot_end.get(job.recipe, self.window_end)
        if deadline - time.time() < self.args.min_slot_s:
            job.skipped = f"less than {self.args.min_slot_s:.0f} s left for its slot"
            log(f"skip {job.recipe}: {job.skipped}")
            return
        cmd = self._command(job, deadline)
        self.logs.mkdir(parents=True, exist_ok=True)
        job.log_handle = open(self.logs / f"{job.recipe}.log", "w")  # noqa: SIM115 (closed in reap)
        job.log_handle.write("$ " + " ".join(cmd) + "\n")
        job.log_handle.flush()
        job.proc = subprocess.Popen(cmd, stdout=job.log_handle, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True, cwd=str(self.out))
        job.started = time.time()
        log(f"start {job.recipe} (pid {job.proc.pid}), slot {deadline - time.time():.0f} s")

    def reap(self, job: Job) -> None:
        if job.proc is None or job.rc is not None:
            return
        rc = job.proc.poll()
        if rc is None:
            return
        job.rc, job.ended = rc, time.time()
        job.log_handle.close()
        state = "done" if rc == 0 else f"FAILED rc={rc}"
        log(f"{job.recipe} {state} after {job.ended - (job.started or job.ended):.0f} s{self._progress(job)}")
        if rc != 0:
            tail = (self.logs / f"{job.recipe}.log").read_text(errors="replace")[-2500:]
            print("----- log tail -----\n" + tail + "\n--------------------", flush=True)

    # --- monitoring -------------------------------------------------------------------------------------------
    def _progress(self, job: Job) -> str:
        path = self.runs / job.recipe / "log.jsonl"
        if not path.is_file():
            return ""
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - 4000))
                lines = handle.read().decode(errors="replace").strip().splitlines()
            last = json.loads(lines[-1])
        except (OSError, ValueError, IndexError):
            return ""
        return (f": step {last['step']} loss {last['loss']:.4f} lr {last['lr']:.2e} "
                f"{last['s_per_step']:.3f} s/step, {last['samples']} samples")

    def status_line(self) -> None:
        now = time.time()
        parts = []
        for job in self.jobs.values():
            if job.proc is not None and job.rc is None:
                parts.append(f"  {job.recipe} running {now - (job.started or now):.0f} s{self._progress(job)}")
        if parts:
            log(f"t+{now - self.t0:.0f} s, window ends in {self.window_end - now:.0f} s\n" + "\n".join(parts))

    def _ready(self, job: Job) -> bool:
        if job.proc is not None or job.skipped:
            return False
        if job.after is None:
            return True
        parent = self.jobs.get(job.after)
        if parent is None:
            parent_dir = self.runs / job.after
            if not any((parent_dir / "checkpoints").glob("step-*/meta.json")):
                job.skipped = f"{job.after} was skipped and has no run"
                return False
            return True
        if parent.rc is None and not parent.skipped:
            return False
        if job.after == "toy-clip":  # without this run's toy-clip, fall back to --clip-from
            if not _has_checkpoint(self.runs / "toy-clip"):
                log(f"{job.recipe}: no GPU toy-clip checkpoint, using --clip-from {self.args.clip_from}")
            return True
        if not any((self.runs / job.after / "checkpoints").glob("step-*/meta.json")):
            job.skipped = f"{job.after} left no checkpoint"
            log(f"skip {job.recipe}: {job.skipped}")
            return False
        return True

    def stop_all(self, sig: int) -> None:
        for job in self.jobs.values():
            if job.proc is not None and job.rc is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(job.proc.pid, sig)

    def train(self) -> None:
        log(f"budget {self.args.budget_min} min: train window {self.window_end - self.t0:.0f} s, device "
            f"{self.args.device}, preset {self.args.preset}, batch ×{self.args.batch_mult}, out {self.out}")
        last_status = 0.0
        termed = False
        while True:
            for job in self.jobs.values():
                self.reap(job)
            for job in self.jobs.values():
                if self._ready(job):
                    self.launch(job)
            running = [j for j in self.jobs.values() if j.proc is not None and j.rc is None]
            pending = [j for j in self.jobs.values() if j.proc is None and not j.skipped]
            if not running and not pending:
                break
            now = time.time()
            if now >= self.window_end + TERM_AFTER_S and not termed:
                log("train window over: SIGTERM to the remaining trainers (they checkpoint and exit)")
                self.stop_all(signal.SIGTERM)
                termed = True
                for job in pending:
                    job.skipped = "the train window ended first"
            if now >= self.window_end + KILL_AFTER_S:
                log("SIGKILL to the trainers still running")
                self.stop_all(signal.SIGKILL)
                time.sleep(1)
                for job in self.jobs.values():
                    self.reap(job)
                break
            if now - last_status >= self.args.status_every:
                self.status_line()
                last_status = now
            time.sleep(1.0)

    # --- export and pack --------------------------------------------------------------------------------------
    def export(self) -> None:
        timeout = max(5.0, self.end - time.time() - 8.0)
        cmd = [self.args.python, str(Path(__file__).resolve()), "--export-only", "--out", str(self.out)]
        log(f"export (timeout {timeout:.0f} s)")
        try:
            result = subprocess.run(cmd, env=self.env, timeout=timeout, capture_output=True, text=True)
            print(result.stdout[-4000:], flush=True)
            if result.returncode != 0:
                print(result.stderr[-3000:], flush=True)
        except subprocess.TimeoutExpired as exc:
            log(f"export timed out after {timeout:.0f} s; packing what was exported")
            print((exc.stdout or b"")[-3000:] if isinstance(exc.stdout, str) else "", flush=True)

    def summary(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name in JOBS:
            job = self.jobs.get(name)
            run = self.runs / name
            entry: dict[str, Any] = {"rc": job.rc if job else None, "skipped": job.skipped if job else "not run"}
            if job and job.started:
                entry["wall_s"] = round((job.ended or time.time()) - job.started, 1)
            if (run / "summary.json").is_file():
                data = json.loads((run / "summary.json").read_text())
                entry.update({k: data.get(k) for k in ("status", "steps", "batch", "samples_total", "final_loss",
                                                       "first_loss", "s_per_step", "train_wall_s")})
            models[name] = entry
        exported = self.out / "weights" / "MANIFEST.json"
        return {
            "budget_min": self.args.budget_min, "device": self.args.device, "preset": self.args.preset,
            "batch_mult": self.args.batch_mult, "wall_s": round(time.time() - self.t0, 1), "models": models,
            "exported": sorted(json.loads(exported.read_text())["models"]) if exported.is_file() else [],
            "export_notes": _read_notes(self.out),
        }

    def pack(self, summary: dict[str, Any]) -> None:
        pack = self.out / "pack"
        shutil.rmtree(pack, ignore_errors=True)
        pack.mkdir(parents=True)
        weights = self.out / "weights"
        for folder in sorted(weights.iterdir()) if weights.is_dir() else []:
            if folder.is_dir() and not folder.name.startswith("."):
                _tar(folder, pack / f"{folder.name}.tar", arcname=folder.name)
        if (weights / "MANIFEST.json").is_file():
            shutil.copy2(weights / "MANIFEST.json", pack / "MANIFEST.json")
        teacher = self.out / "teacher" / "toy-kontext"
        if teacher.is_dir():
            _tar(teacher, pack / "toy-kontext-teacher.tar", arcname="toy-kontext-teacher")
        (pack / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        with tarfile.open(pack / "logs.tar.gz", "w:gz") as tar:
            for path in sorted(self.logs.glob("*.log")):
                tar.add(path, arcname=f"logs/{path.name}")
            for path in sorted(self.runs.glob("*/*.json")) + sorted(self.runs.glob("*/log.jsonl")):
                tar.add(path, arcname=f"runs/{path.relative_to(self.runs)}")
        for path in sorted(pack.iterdir()):
            size = path.stat().st_size
            flag = "" if size <= PACK_LIMIT else "  (OVER 16 MiB!)"
            log(f"pack {path.name}: {size / 2**20:.2f} MiB{flag}")
        count = len(list(pack.iterdir()))
        if count > 8:
            log(f"WARNING: {count} files in the pack (limit 8)")


def _tar(folder: Path, target: Path, arcname: str) -> None:
    with tarfile.open(target, "w") as tar:
        tar.add(folder, arcname=arcname)


def _read_notes(out: Path) -> list[str]:
    path = out / "export_notes.json"
    return json.loads(path.read_text()) if path.is_file() else []


# --- the export subprocess ------------------------------------------------------------------------------------
def _has_checkpoint(run: Path) -> bool:
    return any((run / "checkpoints").glob("step-*/meta.json"))


def export_only(out: Path) -> int:
    """Export every run with a checkpoint (fp16, gates null) into out/weights, phase A into out/teacher."""
    sys.path.insert(0, str(REPO_SRC))
    from flowcore.toy.export import export_run

    runs, weights, notes = out / "runs", out / "weights", []
    plan = [("toy-clip", "toy-clip", weights), ("toy-sd3", "toy-sd3", weights), ("toy-unet", "toy-unet", weights),
            ("toy-unet-controlnet", "toy-unet", weights), ("toy-unet-ip-adapter", "toy-unet", weights),
            ("toy-kontext-a", "toy-kontext", out / "teacher")]
    kontext = "toy-kontext-b" if _has_checkpoint(runs / "toy-kontext-b") else "toy-kontext-a"
    if kontext == "toy-kontext-a":
        notes.append("toy-kontext: phase B has no checkpoint; shipping phase A (not guidance-distilled)")
    plan.append((kontext, "toy-kontext", weights))
    failures = 0
    for recipe, name, root in plan:
        run = runs / recipe
        if not _has_checkpoint(run):
            if recipe != "toy-clip" or run.exists():  # toy-clip only runs here with --clip-first-s
                notes.append(f"{recipe}: no checkpoint, not exported")
            continue
        if recipe.startswith("toy-unet-") and not (weights / "toy-unet" / "unet").is_dir():
            notes.append(f"{recipe}: toy-unet itself was not exported; exporting the part anyway")
        try:
            t = time.time()
            entry = export_run(run, name, weights_dir=root, gates=False)
            part = next(p for p in entry["parts"].values() if p["run"] == str(run.resolve()))
            log(f"exported {recipe} → {root.name}/{name}: {part['steps']} steps, finished={part['finished']} "
                f"({time.time() - t:.1f} s)")
        except Exception as exc:  # one failed export must not stop the others
            failures += 1
            notes.append(f"{recipe}: export failed: {type(exc).__name__}: {exc}")
            log(notes[-1])
    (out / "export_notes.json").write_text(json.dumps(notes, indent=2) + "\n")
    return 1 if failures else 0


# --- unpacking at home ----------------------------------------------------------------------------------------
def unpack(pack: Path, weights_dir: Path | None) -> int:
    """Extract the model tars into the packaged weights folder and merge their MANIFEST entries."""
    sys.path.insert(0, str(REPO_SRC))
    from flowcore.io import write_json
    from flowcore.toy.bundle import _read_manifest, verify, weights_root
    from flowcore.toy.export import MAIN_PARTS, _files, _install

    root = (weights_dir or weights_root()).resolve()
    incoming = json.loads((pack / "MANIFEST.json").read_text())["models"]
    data, _ = _read_manifest(root)
    for name in incoming:
        tar_path = pack / f"{name}.tar"
        staging = root / f".unpack-{name}"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(staging, filter="data")
        parts = incoming[name].get("parts", {})
        if not MAIN_PARTS & set(parts) and name in data["models"] and (root / name).is_dir():
            # adapters only (their model was --skip'ped): swap those subfolders, keep the shipped main part
            subfolders = sorted(p.name for p in (staging / name).iterdir() if p.is_dir())
            _install(staging / name, root / name, subfolders)
            entry = data["models"][name]
            entry["parts"].update(parts)
            entry.update(files=_files(root / name), finished=all(p["finished"] for p in entry["parts"].values()),
                         exported=incoming[name]["exported"], gates=None)
            log(f"installed {name}/{{{','.join(subfolders)}}} into {root / name} (main part kept)")
        else:
            shutil.rmtree(root / name, ignore_errors=True)
            os.replace(staging / name, root / name)
            data["models"][name] = incoming[name]
            log(f"installed {name} into {root / name}")
        shutil.rmtree(staging, ignore_errors=True)
    write_json(root / "MANIFEST.json", data)
    teacher = pack / "toy-kontext-teacher.tar"
    if teacher.is_file():
        with tarfile.open(teacher) as tar:
            tar.extractall(pack, filter="data")
        log(f"toy-kontext phase-A transformer (for K4): {pack / 'toy-kontext-teacher' / 'transformer'}")
    os.environ["FLOWCORE_TOY_WEIGHTS"] = str(root)
    verify()
    log(f"verified every file of {sorted(data['models'])} in {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-min", type=float, default=8.5, help="total wall budget, export included")
    parser.add_argument("--out", default=None, help="output folder (default ~/.cache/flowcore-gpu-<time>)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", choices=("full", "ci"), default="full")
    parser.add_argument("--batch-mult", type=int, default=None, help="× recipe batch (default 4 on cuda, 1 on cpu)")
    parser.add_argument("--max-sample-mult", type=float, default=10.0,
                        help="step cap = this × the recipe's steps at the larger batch (time usually ends first)")
    parser.add_argument("--kontext-a-fraction", type=float, default=0.7, help="phase A's share of the window")
    parser.add_argument("--unet-fraction", type=float, default=0.6, help="toy-unet's share of the window")
    parser.add_argument("--clip-from", default="auto", help="toy-clip towers for every trainer (see train --help)")
    parser.add_argument("--clip-first-s", type=float, default=0.0,
                        help="train toy-clip on the device first for this many seconds (0: read --clip-from)")
    parser.add_argument("--warm-root", default=None,
                        help="continue from trained weights: a weights root (e.g. shared/src/flowcore/toy/weights)")
    parser.add_argument("--warm-teacher", default=None,
                        help="with --warm-root: the toy-kontext phase-A weights folder phase A continues from")
    parser.add_argument("--data-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", action="append", default=[], choices=JOBS, help="leave a recipe out")
    parser.add_argument("--min-slot-s", type=float, default=20.0)
    parser.add_argument("--status-every", type=float, default=15.0)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--unpack", default=None, metavar="PACK", help="install a pack into the weights folder")
    parser.add_argument("--weights-dir", default=None, help="with --unpack: target weights root")
    args = parser.parse_args(argv)
    if args.unpack:
        return unpack(Path(args.unpack), Path(args.weights_dir) if args.weights_dir else None)
    args.out = args.out or str(Path(f"~/.cache/flowcore-gpu-{time.strftime('%Y%m%d-%H%M%S')}").expanduser())
    if args.export_only:
        return export_only(Path(args.out))
    if args.batch_mult is None:
        args.batch_mult = 4 if args.device.startswith("cuda") else 1
    orchestrator = Orchestrator(args)
    orchestrator.out.mkdir(parents=True, exist_ok=True)
    try:
        orchestrator.train()
    except KeyboardInterrupt:
        log("interrupted: stopping the trainers")
        orchestrator.stop_all(signal.SIGTERM)
        time.sleep(5)
    orchestrator.export()
    summary = orchestrator.summary()
    (orchestrator.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    orchestrator.pack(summary)
    print(json.dumps(summary, indent=2), flush=True)
    log(f"done in {time.time() - orchestrator.t0:.0f} s (budget {args.budget_min * 60:.0f} s); pack: "
        f"{orchestrator.out / 'pack'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
