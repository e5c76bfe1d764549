"""Thread count of the benchmark suite: ``$VQFLOW_BENCH_THREADS`` if set (else the test suite's 2).

On a shared machine use 1: with other processes on the cores, two OpenMP threads spin-wait on
each other and steps get up to 10x slower and very noisy (measured on the 2-core CI machines)."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _bench_threads():
    threads = os.environ.get("VQFLOW_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
