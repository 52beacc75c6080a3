"""Benchmarks of spec §8: ratios measured side by side in one run, never asserted.

- ``layer`` (B1): one attention operator, B 1, H 24, d 64: SDPA vs TTT core (no key norm, no conv) vs TTT full;
  forward, plus forward+backward at the smaller sizes.
- ``block`` (B2): one SD3.5-Medium-shaped ``JointTransformerBlock`` (1536 wide, 24×64 heads), softmax vs TTT,
  joint and dual-attention variants.
- ``transformer`` (B3, GPU): full SD3.5-Medium/Large-shaped transformers with random bf16 weights, B 2 (CFG),
  1K and 2K: SDPA (flash and cuDNN, the faster is the baseline) vs TTT torch vs TTT Triton, per-layer operator
  times and peak memory. ``--tiny`` runs it on the CPU with tiny shapes.

CPU timings use ``flowcore.bench.compare`` (providers interleaved, median of ``--repeats`` after a warm-up);
GPU timings use ``triton.testing.do_bench`` medians when Triton is installed, else ``flowcore.bench.compare``.
Every row is written to a CSV (op, provider, dtype, B, H, d, N, grid, ms p50/p20/p80, ratio, device, versions,
commit, time) and the ratio table is printed next to the analytic FLOP ceiling.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flowcore.seeding import seeded_init

__all__ = ["ceilings", "main_block", "main_layer", "main_transformer", "run_block", "run_layer", "run_transformer"]

LAYER_SIZES = {1024: ((32, 32), 0), 4429: ((64, 64), 333), 16717: ((128, 128), 333)}
BLOCK_SIZES = {4429: ((64, 64), 333), 16717: ((128, 128), 333)}
BACKWARD_MAX_N = 4429
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SD35 = {
    "medium": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
                   qk_norm="rms_norm"),
    "large": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, pos_embed_max_size=192, dual_attention_layers=(), qk_norm="rms_norm"),
    "tiny": dict(sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
                 pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm"),
}
RESOLUTIONS = {"1k": 1024, "2k": 2048}
CSV_FIELDS = ("op", "provider", "dtype", "B", "H", "d", "N", "grid", "ms_p50", "ms_p20", "ms_p80", "ratio",
              "peak_mem_mb", "ceiling", "device", "versions", "commit", "time")


# --- analytic FLOP model (spec §8) -----------------------------------------------------------------------------------
def ceilings(N: int, n_img: int, C: int, d: int, dual: bool = False, layers: int = 1, dual_layers: int = 0
             ) -> dict[str, float]:
    """FLOPs (forward, batch 1) of ``layers`` joint blocks (+ ``dual_layers`` attn2): linear, softmax, TTT, ceiling."""
    linear = 24 * C * C * N * layers + 8 * C * C * n_img * dual_layers
    softmax = 4 * N * N * C * layers + 4 * n_img * n_img * C * dual_layers
    ttt = 14 * N * d * C * layers + 14 * n_img * d * C * dual_layers
    total = linear + softmax
    return {"linear": linear, "softmax": softmax, "ttt": ttt, "ceiling": total / (linear + ttt)}


# --- shared helpers --------------------------------------------------------------------------------------------------
def _versions() -> dict[str, Any]:
    from flowcore.io import package_versions

    return package_versions("t5-linearize", "flowcore", "flowkernels", "torch", "diffusers", "triton")


def _commit() -> str | None:
    try:
        from flowcore.bench import device_info

        return device_info().get("git_commit")
    except Exception:  # a benchmark never fails for want of a commit id
        return None


class Recorder:
    """Collects CSV rows; writes ``<name>.csv`` / ``.json`` into ``out_dir`` after every addition."""

    def __init__(self, out_dir: Path | None, name: str, device: str):
        self.out_dir, self.name, self.device = out_dir, name, device
        self.rows: list[dict[str, Any]] = []
        self.versions, self.commit = _versions(), _commit()

    def add(self, **row: Any) -> None:
        row = {**row, "device": self.device, "versions": json.dumps(self.versions), "commit": self.commit,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.rows.append(row)
        self.flush()

    def flush(self) -> None:
        if self.out_dir is None:
            return
        from flowcore.io import atomic_write, write_json

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.out_dir / f"{self.name}.csv", buffer.getvalue())
        write_json(self.out_dir / f"{self.name}.json", {"rows": self.rows})


def _table(rows: Sequence[dict[str, Any]], title: str) -> str:
    header = ["case", "provider", "ms p50", "ms p20", "ms p80", "ratio", "ceiling", "peak MB"]
    lines = [[r["case"], r["provider"], f"{r['ms_p50']:.2f}", f"{r['ms_p20']:.2f}", f"{r['ms_p80']:.2f}",
              f"{r['ratio']:.2f}x", "" if r.get("ceiling") is None else f"{r['ceiling']:.2f}x",
              "" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    text = [title, "ratio = baseline median / provider median (> 1: faster than the baseline)"]
    text += ["  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in [header, *lines]]
    return "\n".join(text)


def _layout_of(N: int, table: dict[int, tuple[tuple[int, int], int]]) -> tuple[tuple[int, int], int]:
    """(grid, text rows) of a token count: the spec's sizes, else the largest square grid plus text rows."""
    if N in table:
        return table[N]
    side = math.isqrt(N)
    return (side, side), N - side * side


def _segments(grid: tuple[int, int], n_text: int) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    h, w = grid
    return h * w + n_text, ((0, h, w),)


def _layer_inputs(N: int, H: int, d: int, dtype: torch.dtype, device: torch.device, grad: bool):
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, N, H, d, generator=gen, device=device, dtype=dtype, requires_grad=grad)
               for _ in range(3))
    return q, k, v


def _ttt_layer(H: int, d: int, dtype: torch.dtype, device: torch.device, full: bool):
    from t5_linearize.config import LinearizeConfig
    from t5_linearize.modules import TTTAttention

    config = LinearizeConfig(key_norm=full, locality=full, backend="torch")
    layer = TTTAttention(H, d, config, device=device)
    layer.reset_parameters(torch.Generator().manual_seed(0))
    return layer


# --- B1: layer -------------------------------------------------------------------------------------------------------
def run_layer(sizes: Sequence[int], dtypes: Sequence[str], *, repeats: int = 5, heads: int = 24, head_dim: int = 64,
              device: str = "cpu", backward: bool = True, out_dir: Path | None = None,
              only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from flowcore.bench import compare

    dev = torch.device(device)
    rec = Recorder(out_dir, "bench_layer", _device_label(dev))
    results = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for N in sizes:
            grid, n_text = _layout_of(N, LAYER_SIZES)
            _, segments = _segments(grid, n_text)
            modes = [("forward", False)] + ([("forward+backward", True)] if backward and N <= BACKWARD_MAX_N else [])
            for mode, grad in modes:
                q, k, v = _layer_inputs(N, heads, head_dim, dtype, dev, grad)
                core = _ttt_layer(heads, head_dim, dtype, dev, full=False)
                full = _ttt_layer(heads, head_dim, dtype, dev, full=True)
                providers = {
                    "sdpa": _run(lambda q=q, k=k, v=v: _sdpa(q, k, v), grad, (q, k, v)),
                    "ttt_core": _run(lambda q=q, k=k, v=v, m=core, s=segments: m(q, k, v, s), grad, (q, k, v)),
                    "ttt_full": _run(lambda q=q, k=k, v=v, m=full, s=segments: m(q, k, v, s), grad, (q, k, v)),
                }
                providers = {k: f for k, f in providers.items() if k == "sdpa" or not only or k in only}
                table = compare(providers, baseline="sdpa", repeats=repeats, warmup=1, device=dev)
                ceiling = 4 * N / (14 * head_dim)
                for row in table.rows:
                    entry = {"op": f"layer/{mode}", "case": f"{mode} {dtype_name} N={N}", "provider": row["name"],
                             "dtype": dtype_name, "B": 1, "H": heads, "d": head_dim, "N": N, "grid": f"{grid[0]}x{grid[1]}",
                             "ms_p50": row["median_ms"], "ms_p20": row["p20_ms"], "ms_p80": row["p80_ms"],
                             "ratio": row["ratio"], "ceiling": ceiling if row["name"] != "sdpa" else None,
                             "peak_mem_mb": row["peak_mem_mb"]}
                    rec.add(**entry)
                    results.append(entry)
    print(_table(results, f"B1 layer benchmark on {rec.device} (baseline: SDPA; ceiling = attention FLOPs / TTT FLOPs)"))
    return results


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def _run(fn: Callable[[], torch.Tensor], grad: bool, inputs: Sequence[torch.Tensor]) -> Callable[[], object]:
    if not grad:
        def forward() -> object:
            with torch.no_grad():
                return fn()
        return forward

    def both() -> object:
        for t in inputs:
            t.grad = None
        out = fn()
        out.float().sum().backward()
        return out
    return both


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    from flowcore.bench import device_info

    return f"cpu: {device_info()['cpu']} ({torch.get_num_threads()} threads)"


# --- B2: block -------------------------------------------------------------------------------------------------------
def _block_pair(dual: bool, width: int, heads: int, head_dim: int, device: torch.device, dtype: torch.dtype):
    """(softmax block, TTT block) of a 2-layer SD3 transformer (block 0 is a full joint block), sharing weights."""
    from diffusers import SD3Transformer2DModel

    from t5_linearize.models import linearize

    with seeded_init(0):  # random weights, without touching the caller's global RNG
        base = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=width,
            caption_projection_dim=width, pooled_projection_dim=width, pos_embed_max_size=192,
            dual_attention_layers=(0,) if dual else (), qk_norm="rms_norm",
        ).to(device=device, dtype=dtype).eval()
    t5 = linearize(base, generator=torch.Generator().manual_seed(0)).eval()
    return base.transformer_blocks[0], t5.transformer_blocks[0]


def run_block(sizes: Sequence[int], *, repeats: int = 5, width: int = 1536, heads: int = 24, head_dim: int = 64,
              device: str = "cpu", duals: Sequence[bool] = (False, True), out_dir: Path | None = None
              ) -> list[dict[str, Any]]:
    from flowcore.bench import compare
    from flowcore.layout import TokenLayout

    dev = torch.device(device)
    rec = Recorder(out_dir, "bench_block", _device_label(dev))
    results = []
    for dual in duals:
        softmax_block, ttt_block = _block_pair(dual, width, heads, head_dim, dev, torch.float32)
        for N in sizes:
            grid, n_text = _layout_of(N, BLOCK_SIZES)
            n_img = grid[0] * grid[1]
            gen = torch.Generator(device=dev).manual_seed(0)
            hidden = torch.randn(1, n_img, width, generator=gen, device=dev)
            text = torch.randn(1, n_text, width, generator=gen, device=dev)
            temb = torch.randn(1, width, generator=gen, device=dev)
            layout = TokenLayout.from_sd3(grid, n_text)
            jak = {"ttt_layout": layout}
            providers = {
                "softmax": lambda b=softmax_block, x=hidden, c=text, e=temb: b(x, c, e),
                "ttt": lambda b=ttt_block, x=hidden, c=text, e=temb, j=jak: b(x, c, e, joint_attention_kwargs=j),
            }
            with torch.no_grad():
                table = compare(providers, baseline="softmax", repeats=repeats, warmup=1, device=dev)
            flops = ceilings(n_img + n_text, n_img, width, head_dim, layers=1, dual_layers=int(dual))
            kind = "dual" if dual else "joint"
            for row in table.rows:
                entry = {"op": f"block/{kind}", "case": f"{kind} N={n_img + n_text}", "provider": row["name"],
                         "dtype": "float32", "B": 1, "H": heads, "d": head_dim, "N": n_img + n_text,
                         "grid": f"{grid[0]}x{grid[1]}", "ms_p50": row["median_ms"], "ms_p20": row["p20_ms"],
                         "ms_p80": row["p80_ms"], "ratio": row["ratio"],
                         "ceiling": flops["ceiling"] if row["name"] == "ttt" else None, "peak_mem_mb": None}
                rec.add(**entry)
                results.append(entry)
    print(_table(results, f"B2 block benchmark on {rec.device} (baseline: softmax block; ceiling from the FLOP model)"))
    return results


# --- B3: full transformer ---------------------------------------------------------------------------------------------
def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float, float, float | None]:
    """(p50, p20, p80 ms, peak MB) of ``fn``: do_bench on CUDA (events when Triton is missing), compare on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        try:
            from triton.testing import do_bench

            p50, p20, p80 = do_bench(fn, warmup=25, rep=max(100, 40 * repeats), quantiles=[0.5, 0.2, 0.8])
            return float(p50), float(p20), float(p80), peak
        except ImportError:
            pass
        from flowcore.bench import compare

        row = compare({"x": fn}, baseline="x", repeats=repeats, warmup=1, device=device).rows[0]
        return row["median_ms"], row["p20_ms"], row["p80_ms"], peak
    from flowcore.bench import compare

    row = compare({"x": fn}, baseline="x", repeats=repeats, warmup=1, device=device).rows[0]
    return row["median_ms"], row["p20_ms"], row["p80_ms"], None


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
               "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa_math": SDPBackend.MATH}.get(name)
    return sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()


def _build_sd3(cfg: dict, device: torch.device, dtype: torch.dtype):
    from diffusers import SD3Transformer2DModel

    with seeded_init(0, device), torch.device(device):
        model = SD3Transformer2DModel(**cfg)
    return model.to(dtype).eval().requires_grad_(False)


def run_transformer(models: Sequence[str], resolutions: Sequence[str], *, device: str = "cuda", batch: int = 2,
                    providers: Sequence[str] | None = None, repeats: int = 5, tiny: bool = False,
                    out_dir: Path | None = None, budget_s: float = 330.0) -> list[dict[str, Any]]:
    """B3. ``tiny``: tiny shapes (CPU smoke test). Stops starting new models after ``budget_s`` seconds."""
    from flowkernels import has_triton
    from t5_linearize.models import linearize

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if providers is None:
        providers = (["sdpa_flash", "sdpa_cudnn", "ttt_torch"] + (["ttt_triton"] if has_triton() else [])
                     if dev.type == "cuda" else ["sdpa", "ttt_torch"])
    rec = Recorder(out_dir, "bench_transformer", _device_label(dev))
    results: list[dict[str, Any]] = []
    began = time.perf_counter()
    for name in (["tiny"] if tiny else models):
        if time.perf_counter() - began > budget_s:
            print(f"[bench] time budget reached, skipping {name}")
            break
        cfg = SD35[name]
        base = _build_sd3(cfg, dev, dtype)
        t5 = linearize(base, generator=torch.Generator().manual_seed(0)).eval().requires_grad_(False)
        for res in (["tiny"] if tiny else resolutions):
            pixels = 64 if res == "tiny" else RESOLUTIONS[res]
            results += _bench_resolution(name, cfg, res, pixels, base, t5, dev, dtype, batch, providers, repeats, rec)
        del base, t5
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print(_table(results, f"B3 transformer benchmark on {rec.device} (baseline: the faster SDPA backend)"))
    return results


def _bench_resolution(name, cfg, res, pixels, base, t5, dev, dtype, batch, providers, repeats, rec):
    latent = pixels // 8
    grid = latent // cfg["patch_size"]
    n_text = 333 if name != "tiny" else 13
    n_img = grid * grid
    gen = torch.Generator(device=dev).manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(batch, cfg["in_channels"], latent, latent, generator=gen, device=dev, dtype=dtype),
        encoder_hidden_states=torch.randn(batch, n_text, cfg["joint_attention_dim"], generator=gen, device=dev,
                                          dtype=dtype),
        pooled_projections=torch.randn(batch, cfg["pooled_projection_dim"], generator=gen, device=dev, dtype=dtype),
        timestep=torch.full((batch,), 500.0, device=dev, dtype=dtype),
        return_dict=False,
    )
    timings: dict[str, tuple] = {}
    for provider in providers:
        try:
            if provider.startswith("sdpa"):
                def run(provider=provider) -> object:
                    with torch.no_grad(), _sdpa_backend(provider):
                        return base(**inputs)
            else:
                backend = provider.removeprefix("ttt_")

                def run(backend=backend) -> object:
                    with torch.no_grad():
                        return t5(**inputs, joint_attention_kwargs={"ttt_backend": backend})
            timings[provider] = _time(run, dev, repeats)
        except Exception as exc:  # record the failure and go on (a missing cuDNN backend, a compile error)
            print(f"[bench] {name} {res} {provider} failed: {type(exc).__name__}: {exc}")
            timings[provider] = (float("nan"),) * 3 + (None,)
    baseline = min((v[0] for k, v in timings.items() if k.startswith("sdpa") and v[0] == v[0]), default=float("nan"))
    flops = ceilings(n_img + n_text, n_img, cfg["num_attention_heads"] * cfg["attention_head_dim"],
                     cfg["attention_head_dim"], layers=cfg["num_layers"], dual_layers=len(cfg["dual_attention_layers"]))
    rows = []
    for provider, (p50, p20, p80, peak) in timings.items():
        row = {"op": f"transformer/{name}", "case": f"{name} {res} B={batch}", "provider": provider,
               "dtype": str(dtype).removeprefix("torch."), "B": batch, "H": cfg["num_attention_heads"],
               "d": cfg["attention_head_dim"], "N": n_img + n_text, "grid": f"{grid}x{grid}", "ms_p50": p50,
               "ms_p20": p20, "ms_p80": p80, "ratio": baseline / p50 if p50 == p50 and p50 > 0 else float("nan"),
               "ceiling": flops["ceiling"] if provider.startswith("ttt") else None, "peak_mem_mb": peak}
        rec.add(**row)
        rows.append(row)
    rows += _operator_rows(name, res, cfg, n_img, n_text, batch, dev, dtype, providers, repeats, rec)
    return rows


def _operator_rows(name, res, cfg, n_img, n_text, batch, dev, dtype, providers, repeats, rec):
    """Per-layer operator time at this shape: SDPA vs flowkernels' TTT (torch / Triton), one site."""
    from flowkernels import Segment, ttt_attention

    H, d = cfg["num_attention_heads"], cfg["attention_head_dim"]
    N, C = n_img + n_text, cfg["num_attention_heads"] * cfg["attention_head_dim"]
    grid = int(round(n_img**0.5))
    gen = torch.Generator(device=dev).manual_seed(1)
    q, k, v = (torch.randn(batch, N, H, d, generator=gen, device=dev, dtype=dtype) for _ in range(3))
    w1, w2 = (torch.randn(H, d, d, generator=gen, device=dev) * 0.02 for _ in range(2))
    conv = (torch.zeros(C, 1, 3, 3, device=dev), torch.zeros(C, device=dev))
    segs = [Segment(0, grid, grid)]
    timings = {}
    for provider in providers:
        try:
            if provider.startswith("sdpa"):
                def run(provider=provider) -> object:
                    with torch.no_grad(), _sdpa_backend(provider):
                        return _sdpa(q, k, v)
            else:
                backend = provider.removeprefix("ttt_")

                def run(backend=backend) -> object:
                    with torch.no_grad():
                        return ttt_attention(q, k, v, w1, w2, segments=segs, q_conv=conv, k_conv=conv,
                                             backend=backend)
            timings[provider] = _time(run, dev, repeats)
        except Exception as exc:
            print(f"[bench] operator {name} {res} {provider} failed: {type(exc).__name__}: {exc}")
            timings[provider] = (float("nan"),) * 3 + (None,)
    baseline = min((v[0] for k, v in timings.items() if k.startswith("sdpa") and v[0] == v[0]), default=float("nan"))
    rows = []
    for provider, (p50, p20, p80, peak) in timings.items():
        row = {"op": f"operator/{name}", "case": f"one site {name} {res} B={batch}", "provider": provider,
               "dtype": str(dtype).removeprefix("torch."), "B": batch, "H": H, "d": d, "N": N,
               "grid": f"{grid}x{grid}", "ms_p50": p50, "ms_p20": p20, "ms_p80": p80,
               "ratio": baseline / p50 if p50 == p50 and p50 > 0 else float("nan"),
               "ceiling": (4 * N) / (14 * d) if provider.startswith("ttt") else None, "peak_mem_mb": peak}
        rec.add(**row)
        rows.append(row)
    return rows


# --- command lines ---------------------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu; B3 defaults to cuda)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per provider (median of >= 5)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads; default 2)")
    parser.add_argument("--output-dir", "--out", dest="output_dir", type=Path, default=None,
                        help="folder for the CSV/JSON results (default: print only)")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def layer_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description="B1: one attention operator, SDPA vs TTT (spec §8)")
    _common(parser)
    parser.add_argument("--sizes", type=_ints, default=[1024, 4429, 16717], help="token counts N (comma-separated)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="float32,bfloat16 (comma-separated)")
    parser.add_argument("--no-backward", action="store_true", help="skip the forward+backward rows")
    parser.add_argument("--providers", default=None, help="subset of ttt_core,ttt_full (SDPA, the baseline, always runs)")
    return parser


def block_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description="B2: one SD3.5-Medium-shaped block, softmax vs TTT")
    _common(parser)
    parser.add_argument("--sizes", type=_ints, default=[4429, 16717], help="token counts N: 4429 and/or 16717")
    parser.add_argument("--variants", default="joint,dual", help="joint,dual (comma-separated)")
    return parser


def transformer_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description="B3: full SD3.5-shaped transformer, SDPA vs TTT (GPU)")
    _common(parser)
    parser.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="medium,large", help="medium,large (comma-separated)")
    parser.add_argument("--resolutions", default="1k,2k", help="1k,2k (comma-separated)")
    parser.add_argument("--providers", default=None,
                        help="subset of sdpa_flash,sdpa_cudnn,sdpa_efficient,ttt_torch,ttt_triton (GPU) or sdpa,ttt_torch")
    parser.add_argument("--batch", type=int, default=2, help="batch rows (2 = one CFG pair)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (smoke test of this script)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="start no new model after this many seconds")
    return parser


def main_layer(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    return run_layer(args.sizes, [d.strip() for d in args.dtypes.split(",") if d.strip()], repeats=args.repeats,
                     device=args.device, backward=not args.no_backward, out_dir=args.output_dir,
                     only=None if not args.providers else [p.strip() for p in args.providers.split(",")])


def main_block(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    return run_block(args.sizes, repeats=args.repeats, device=args.device, duals=[v == "dual" for v in variants],
                     out_dir=args.output_dir)


def main_transformer(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    providers = None if not args.providers else [p.strip() for p in args.providers.split(",") if p.strip()]
    return run_transformer([m.strip() for m in args.models.split(",") if m.strip()],
                           [r.strip() for r in args.resolutions.split(",") if r.strip()], device=args.device,
                           batch=args.batch, providers=providers, repeats=args.repeats, tiny=args.tiny,
                           out_dir=args.output_dir, budget_s=args.budget_s)
