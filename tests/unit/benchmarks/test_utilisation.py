"""``benchmarks.training.utilisation``: the matmul-throughput probe and the live-tensor memory counter
(fast unit tests; part of the default run)."""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.training.utilisation import TensorMemory, measure_peak_flops, mfu, process_peak_flops

MIB = 2**20


def test_peak_flops_is_a_timed_matmul_rate():
    start = time.perf_counter()
    peak = measure_peak_flops("cpu", seconds=0.2, size=256)
    assert time.perf_counter() - start >= 0.2
    assert 1e8 < peak < 1e13  # 0.1 GFLOP/s .. 10 TFLOP/s: a CPU
    assert mfu(2e9, 0.5, 8e9) == pytest.approx(0.5)


def test_a_process_measures_the_peak_once_per_device():
    """The jobs of a local run share one measurement (their MFUs use the same denominator)."""
    first = process_peak_flops("cpu")
    start = time.perf_counter()
    assert process_peak_flops(torch.device("cpu")) == first
    assert time.perf_counter() - start < 0.1  # not timed again (a measurement takes 1 s)


def test_tensor_memory_counts_live_storages_once_and_their_peak():
    kept = torch.zeros(MIB // 4)  # 1 MiB float32, passed in: counted from the start
    with TensorMemory([kept]) as mem:
        a = torch.ones(2 * MIB // 4)  # +2 MiB
        view = a[: MIB // 8]  # a view: no new storage
        b = a * 2  # +2 MiB -> 5 MiB live: the peak
        del a, b  # the view keeps a's storage alive
        assert mem.live == 3 * MIB
        del view
        c = torch.ones(MIB // 4)  # +1 MiB
        assert mem.live == 2 * MIB
    assert mem.peak == 5 * MIB
    del c


def test_tensor_memory_sees_autograd_and_optimizer_tensors():
    lin = torch.nn.Linear(256, 256, bias=False)  # 256 KiB of weight
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(64, 256)
    with TensorMemory(lin.parameters()) as mem:
        lin(x).square().sum().backward()  # grad: +256 KiB
        opt.step()  # momentum buffer: +256 KiB
        assert mem.live >= 3 * 256 * 1024
