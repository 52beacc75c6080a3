"""Spec §7 test 21: ``backend="triton"`` (flowkernels under the Triton interpreter) equals the torch path on a tiny
SD3 forward, fp32, 1e-5 relative. Runs in a subprocess because TRITON_INTERPRET must be set before import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("numpy")

WORKER = Path(__file__).resolve().parent / "kernels_worker.py"


@pytest.mark.kernels
def test_triton_backend_matches_the_torch_path():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backends"] == ["torch", "triton"]
    assert result["rel"] <= 1e-5, result
