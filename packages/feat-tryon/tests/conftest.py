"""Test setup: the helpers module on sys.path, progress bars off, one intra-op thread per test (the tiny models
are fastest and most stable single-threaded on a shared 2-core machine)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLOWCORE_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
