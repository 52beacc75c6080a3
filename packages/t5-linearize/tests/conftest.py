"""Test setup: the helpers module on sys.path, progress bars off, one intra-op thread per test.

A single thread keeps the tiny-model tests fast and stable on a shared 2-core machine (with other jobs running,
OpenMP barriers of a 2-thread pool made these tests ~20x slower); the previous count is restored after each test.
"""

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
