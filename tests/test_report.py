"""The demo report opens in headless Chromium and every picture in it loads (issue 10)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("FLOWCORE_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (FLOWCORE_REQUIRE_BROWSER is set): apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install chromium); CI sets FLOWCORE_REQUIRE_BROWSER")
    return exe


def _chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)


def test_report_renders_in_headless_chromium_with_every_image_loaded(tmp_path):
    exe = _browser()
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_report.py"), "--only", "core", "--smoke",
                          "--output-dir", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    index = out / "index.html"
    dom = _chromium(exe, tmp_path / "profile", "--allow-file-access-from-files", "--virtual-time-budget=10000",
                    "--dump-dom", index.as_uri()).stdout
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    broken = int(re.search(r'data-broken="(\d+)"', dom).group(1))
    assert images >= 4 and broken == 0, f"{broken} of {images} images did not load"
    assert re.search(r"<title>ok \d+ images</title>", dom)
    shot = tmp_path / "shot.png"
    _chromium(exe, tmp_path / "profile2", "--window-size=1200,1600", f"--screenshot={shot}", index.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_report_marks_a_missing_picture_as_broken(tmp_path):
    """The check itself can fail: a page whose image is missing is reported broken."""
    exe = _browser()
    from importlib import util

    spec = util.spec_from_file_location("demo_report", ROOT / "scripts" / "demo_report.py")
    report = util.module_from_spec(spec)
    spec.loader.exec_module(report)
    core = {"figures": [{"title": "missing", "png": "core/none.png", "rows": [], "note": ""}], "gates": [],
            "wall_s": 0.0}
    index = report.write_html(tmp_path, [], core, {"when": "now", "device": "cpu", "wall_s": 0.0, "versions": {}})
    dom = _chromium(exe, tmp_path / "profile", "--allow-file-access-from-files", "--virtual-time-budget=5000",
                    "--dump-dom", index.as_uri()).stdout
    assert re.search(r'data-broken="1"', dom) and "<title>broken 1" in dom
