"""flowcore.bench: interleaving and statistics on a fake clock (no real timing asserted), FLOP counts."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torch.nn.functional as F

import flowcore.bench as bench
from flowcore.bench import compare, count_flops, device_info


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _providers(clock: _FakeClock, log: list[str], costs: dict[str, list[float]]):
    def make(name: str):
        def run() -> None:
            log.append(name)
            cost = costs[name]
            clock.now += cost[(len([n for n in log if n == name]) - 1) % len(cost)]

        return run

    return {name: make(name) for name in costs}


def test_compare_interleaves_and_computes_ratios(monkeypatch):
    clock, log = _FakeClock(), []
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    # seconds per call; the first entry of each is the warm-up call
    costs = {"base": [9.0, 1.0, 2.0, 3.0, 4.0, 5.0], "fast": [9.0, 0.5, 0.5, 1.0, 0.5, 0.5],
             "slow": [9.0, 4.0, 4.0, 4.0, 4.0, 100.0]}
    table = compare(_providers(clock, log, costs), baseline="base", repeats=5, warmup=1, device="cpu")
    assert log[:3] == ["base", "fast", "slow"]  # warm-up round
    rounds = [log[3 + 3 * r: 6 + 3 * r] for r in range(5)]
    assert rounds[0] == ["base", "fast", "slow"] and rounds[1] == ["fast", "slow", "base"]
    assert rounds[2] == ["slow", "base", "fast"]  # the order rotates every repetition
    assert table["base"]["median_ms"] == pytest.approx(3000.0)
    assert table["base"]["times_ms"] == pytest.approx([1000.0, 2000.0, 3000.0, 4000.0, 5000.0])
    assert table["fast"]["median_ms"] == pytest.approx(500.0)
    assert table.ratio("fast") == pytest.approx(6.0) and table.ratio("base") == pytest.approx(1.0)
    assert table.ratio("slow") == pytest.approx(0.75)  # the outlier does not move the median
    assert table["base"]["p20_ms"] == pytest.approx(1800.0) and table["base"]["p80_ms"] == pytest.approx(4200.0)
    assert [row["name"] for row in table.rows] == ["base", "fast", "slow"]


def test_bench_table_outputs(monkeypatch, tmp_path, capsys):
    clock, log = _FakeClock(), []
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    table = compare(_providers(clock, log, {"a": [0.002], "b": [0.001]}), baseline="a", repeats=3, warmup=0)
    table.print()
    printed = capsys.readouterr().out
    assert "baseline: a" in printed and "2.00x" in printed
    rows = list(csv.DictReader(io.StringIO(table.to_csv(tmp_path / "t.csv"))))
    assert [r["name"] for r in rows] == ["a", "b"] and float(rows[1]["ratio"]) == pytest.approx(2.0)
    assert (tmp_path / "t.csv").read_text() == table.to_csv()
    data = json.loads(table.to_json(tmp_path / "t.json"))
    assert data["baseline"] == "a" and len(data["rows"][0]["times_ms"]) == 3
    assert json.loads((tmp_path / "t.json").read_text())["rows"][1]["name"] == "b"


def test_compare_errors():
    with pytest.raises(ValueError, match="baseline"):
        compare({"a": lambda: None}, baseline="b")
    with pytest.raises(ValueError, match="repeats"):
        compare({"a": lambda: None}, baseline="a", repeats=0)


def test_compare_real_clock_smoke():
    table = compare({"x": lambda: sum(range(100)), "y": lambda: None}, baseline="x", repeats=3, device="cpu")
    assert all(row["median_ms"] >= 0 and len(row["times_ms"]) == 3 for row in table.rows)
    assert table.device.startswith("cpu")


def test_count_flops_linear_and_attention():
    layer = torch.nn.Linear(8, 16)
    x = torch.randn(4, 8)
    assert count_flops(layer, x) == 2 * 4 * 8 * 16
    q = k = v = torch.randn(1, 2, 16, 8)  # B=1, 2 heads, 16 tokens, d=8
    expected = 2 * (2 * 2 * 16 * 16 * 8)  # QKᵀ and AV
    assert count_flops(F.scaled_dot_product_attention, q, k, v) == expected


def test_device_info_fields():
    info = device_info()
    for key in ("device", "cpu", "cpu_count", "torch_threads", "versions", "git_commit", "python"):
        assert key in info
    assert info["versions"]["torch"] == torch.__version__
    assert info["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
