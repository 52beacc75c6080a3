"""Side-by-side timing, FLOP counting and machine description for benchmark scripts.

Speed claims are ratios measured in one run on one machine (architecture §6): :func:`compare` interleaves the
providers in every repetition, so drifting CPU load hits all of them alike, and reports medians with p20/p80.
Nothing here asserts a time; tests never should.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["BenchTable", "compare", "count_flops", "device_info"]

_COLUMNS = ("name", "median_ms", "p20_ms", "p80_ms", "min_ms", "mean_ms", "repeats", "ratio", "peak_mem_mb")


@dataclass
class BenchTable:
    """Result of :func:`compare`. ``rows``: one dict per provider (in the given order) with ``name``,
    ``median_ms``, ``p20_ms``, ``p80_ms``, ``min_ms``, ``mean_ms``, ``repeats``, ``ratio`` (baseline median /
    provider median: > 1 means faster than the baseline), ``peak_mem_mb`` (CUDA with ``memory=True``, else
    ``None``) and ``times_ms`` (every repetition)."""

    rows: list[dict]
    baseline: str
    device: str
    info: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> dict:
        for row in self.rows:
            if row["name"] == name:
                return row
        raise KeyError(f"no provider {name!r}; have {[row['name'] for row in self.rows]}")

    def ratio(self, name: str) -> float:
        return self[name]["ratio"]

    def format(self) -> str:
        """The table as aligned text, with a header naming the device and the baseline."""
        header = ["provider", "median ms", "p20 ms", "p80 ms", "ratio"]
        lines = [[row["name"], f"{row['median_ms']:.3f}", f"{row['p20_ms']:.3f}", f"{row['p80_ms']:.3f}",
                  f"{row['ratio']:.2f}x"] for row in self.rows]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
        text = [f"device: {self.device}; baseline: {self.baseline}; ratio = baseline median / provider median"]
        for line in [header, *lines]:
            text.append("  ".join(str(cell).rjust(width) for cell, width in zip(line, widths)))
        return "\n".join(text)

    def print(self, file=None) -> None:
        print(self.format(), file=file or sys.stdout)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """CSV text of the summary columns (plus ``device``); written atomically to ``path`` when given."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*_COLUMNS, "device"], extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({**row, "device": self.device})
        text = buffer.getvalue()
        if path is not None:
            from flowcore.io import atomic_write

            atomic_write(path, text)
        return text

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "device": self.device, "info": self.info, "rows": self.rows}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """JSON text of :meth:`to_dict` (rows with every repetition); written atomically to ``path`` when given."""
        from flowcore.io import to_jsonable, write_json

        if path is not None:
            write_json(path, self.to_dict())
        return json.dumps(to_jsonable(self.to_dict()), indent=2)


def _resolve_bench_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _time_once(fn: Callable[[], object], device: torch.device, memory: bool) -> tuple[float, float | None]:
    """Milliseconds of one call (CUDA events after a synchronise on GPU, perf_counter on CPU), peak MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if memory:
            torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if memory else None
        return float(start.elapsed_time(end)), peak
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3, None


def compare(
    providers: Mapping[str, Callable[[], object]],
    *,
    baseline: str,
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device | None = None,
    memory: bool = False,
) -> BenchTable:
    """Time zero-argument callables side by side.

    Every repetition calls each provider once; the order rotates by one per repetition, so no provider is always
    first. ``warmup`` untimed rounds come first. ``device``: where the work runs (default: CUDA if available,
    else CPU); on CUDA each call is bracketed by a synchronise and timed with CUDA events, on CPU with
    ``time.perf_counter``. ``memory=True`` records the peak CUDA memory of each call.
    """
    names = list(providers)
    if baseline not in providers:
        raise ValueError(f"baseline {baseline!r} is not one of the providers {names}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    target = _resolve_bench_device(device)
    for _ in range(warmup):
        for name in names:
            providers[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repeats):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, peak = _time_once(providers[name], target, memory)
            times[name].append(elapsed)
            if peak is not None:
                peaks[name].append(peak)
    base_median = float(np.median(times[baseline]))
    rows = []
    for name in names:
        values = np.asarray(times[name])
        median = float(np.median(values))
        rows.append({
            "name": name,
            "median_ms": median,
            "p20_ms": float(np.percentile(values, 20)),
            "p80_ms": float(np.percentile(values, 80)),
            "min_ms": float(values.min()),
            "mean_ms": float(values.mean()),
            "repeats": repeats,
            "ratio": base_median / median if median > 0 else float("inf"),
            "peak_mem_mb": max(peaks[name]) if peaks[name] else None,
            "times_ms": [float(v) for v in values],
        })
    return BenchTable(rows=rows, baseline=baseline, device=_device_name(target), info={"warmup": warmup})


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """Total FLOPs of ``fn(*args, **kwargs)`` counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Runs under ``sdpa_kernel(SDPBackend.MATH)`` so that scaled-dot-product attention is decomposed into counted
    matmuls (the fused CPU flash kernel would count 0). 2 FLOPs per multiply-add. Grad mode is the caller's: run
    the backward inside ``fn`` to count it too.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {_cpu_name()} ({torch.get_num_threads()} threads)"


def _git_commit() -> str | None:
    for folder in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            result = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if result.returncode == 0:
            return result.stdout.strip()
    return None


def device_info() -> dict:
    """What a benchmark ran on: GPU (name, memory, CUDA version) or CPU name, core and thread counts, Python,
    platform, torch/diffusers/triton/flowcore versions and the git commit (``None`` outside a checkout)."""
    from flowcore.io import package_versions

    info: dict = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "versions": package_versions("flowcore", "torch", "diffusers", "triton"),
        "git_commit": _git_commit(),
    }
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda)
        info["device"] = f"cuda: {props.name}"
    else:
        info["device"] = f"cpu: {info['cpu']}"
    return info
