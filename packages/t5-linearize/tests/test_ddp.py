"""Spec §7 test 19: 3 steps with 2 CPU processes (gloo) give identical weights on both ranks and match a
single-process run on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def _run(args: list[str], tmp: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLOWCORE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_cpu_processes_match_one_process_on_the_global_batch(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir()
    ddp.mkdir()
    from ddp_worker import main as worker  # the single-process reference runs in this process

    worker(single)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
          str(ddp)], tmp_path)
    ref = torch.load(single / "rank0.pt")
    ranks = [torch.load(ddp / f"rank{r}.pt") for r in (0, 1)]
    assert ref["world"] == 1 and all(r["world"] == 2 for r in ranks)
    for name, tensor in ref["state"].items():
        a, b = ranks[0]["state"][name], ranks[1]["state"][name]
        assert torch.equal(a, b), name
        rel = float((a - tensor).norm() / tensor.norm().clamp(min=1e-12))  # relative L2 error of the tensor
        assert rel < 1e-5, (name, rel)
    assert ref["state"].keys() == ranks[0]["state"].keys()
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6)
