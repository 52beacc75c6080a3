"""Benchmark harness of flowkernels (kernels.md §8): providers, timing, CSV and the ratio table.

Kept separate from flowcore's bench helpers on purpose: flowkernels depends on nothing in the monorepo.
Timing: ``triton.testing.do_bench`` on CUDA (median, p20, p80 of ``rep`` ms of runs); on CPU an interleaved
``perf_counter`` loop (one warm-up, then every provider once per repetition, median of >= 5).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

CSV_FIELDS = [
    "op", "provider", "mode", "dtype", "B", "N", "H", "D", "n_text", "grid", "ms_p50", "ms_p20", "ms_p80",
    "ratio_vs_baseline", "baseline", "tflops", "gbps", "device", "torch", "triton", "flowkernels", "git_commit",
    "timestamp", "status",
]  # fmt: skip


def ensure_importable() -> None:
    """Put ``kernels/src`` on sys.path when flowkernels is not installed (GPU boxes with a bare checkout)."""
    try:
        import flowkernels  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class Shape:
    """One attention call: B samples, a text block of ``n_text`` rows after (or before) an (h, w) grid."""

    name: str
    B: int
    H: int
    D: int
    grid: tuple[int, int]
    n_text: int
    text_first: bool = False

    @property
    def N(self) -> int:
        return self.grid[0] * self.grid[1] + self.n_text

    @property
    def C(self) -> int:
        return self.H * self.D


@dataclass
class Measurement:
    provider: str
    shape: Shape
    dtype: torch.dtype
    ms: tuple[float, float, float] | None = None  # p50, p20, p80
    status: str = "ok"
    extra: dict = field(default_factory=dict)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    suffix = " (triton interpreter)" if os.environ.get("TRITON_INTERPRET") == "1" else ""
    return f"cpu x{os.cpu_count()}{suffix}"


def versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "triton": "", "flowkernels": ""}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = "missing"
    try:
        import flowkernels

        out["flowkernels"] = flowkernels.__version__
    except Exception:
        out["flowkernels"] = "missing"
    return out


def git_commit() -> str:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
        return res.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def time_cuda(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> tuple[float, float, float]:
    """(p50, p20, p80) ms of ``fn`` on CUDA via triton's do_bench; CUDA events when triton is missing."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        p50, p20, p80 = do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return float(p50), float(p20), float(p80)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(5, rep // 5)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return _quantiles(times)


def time_cpu_interleaved(fns: dict[str, Callable[[], object]], reps: int = 5) -> dict[str, tuple[float, float, float]]:
    """CPU timing: one warm-up each, then ``reps`` rounds calling every provider once per round."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(reps, 5)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: _quantiles(ts) for name, ts in samples.items()}


def _quantiles(times: Sequence[float]) -> tuple[float, float, float]:
    ts = sorted(times)

    def q(p: float) -> float:
        return ts[min(len(ts) - 1, int(round(p * (len(ts) - 1))))]

    return statistics.median(ts), q(0.2), q(0.8)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def csv_text(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    return buf.getvalue()


def csv_line(row: dict) -> str:
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="").writerow({k: row.get(k, "") for k in CSV_FIELDS})
    return buf.getvalue()


def ratio_table(rows: Sequence[dict], providers: Sequence[str]) -> str:
    """Rows = shapes, columns = providers, cells = 'ms (t_baseline / t)'; errors shown as 'error'."""
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    header = ["shape", "baseline", *providers]
    lines = [header]
    for shape in shapes:
        sub = {r["provider"]: r for r in rows if r["shape"] == shape}
        base = next((r["baseline"] for r in sub.values() if r.get("baseline")), "")
        cells = [shape, base or "-"]
        for p in providers:
            r = sub.get(p)
            if r is None:
                cells.append("-")
            elif r["status"] != "ok":
                cells.append("error" if not r["status"].startswith("skip") else "skipped")
            else:
                ratio = r.get("ratio_vs_baseline")
                cells.append(f"{r['ms_p50']:.3f} ms" + (f" ({ratio:.2f}x)" if ratio not in ("", None) else ""))
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
