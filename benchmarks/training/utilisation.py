"""Hardware utilisation: the device's achievable matmul throughput (for MFU) and peak tensor memory.

* ``measure_peak_flops(device)``: FLOP/s of a timed dense square matmul (float32 on CPU, bf16 on
  CUDA, the dtypes the trainer computes in), a practical ceiling for the training FLOP/s;
  ``process_peak_flops(device)`` measures it once per process and device (the jobs of a local run
  share one measurement, so their MFUs compare; each cluster job measures its own node).
  ``mfu(flops_per_step, seconds_per_step, peak)`` is then achieved FLOP/s / peak.
* ``TensorMemory``: the peak bytes of live tensor storage while a block runs, counted from every
  ATen op's outputs (a ``TorchDispatchMode``): the same quantity on every device (on CUDA it tracks
  ``torch.cuda.max_memory_allocated`` up to the caching allocator's block rounding), so CPU
  measurements compare methods the way GPU memory would.
"""

from __future__ import annotations

import functools
import time
import weakref

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_flops(
    device: str | torch.device,
    *,
    seconds: float = 1.0,
    size: int | None = None,
    dtype: torch.dtype | None = None,
    windows: int = 5,
) -> float:
    """Achievable matmul FLOP/s of ``device``: repeated (n x n) @ (n x n) products (2 n^3 FLOPs
    each) after one warm-up product, timed in ``windows`` windows of ``seconds / windows`` each;
    the best window's rate is returned, so a clock ramping up or a brief competing load does not
    drag the ceiling down. Defaults: n = 1024 in float32 on CPU, n = 8192 in bf16 on CUDA. On a
    machine that stays busy the number includes the other loads' share."""
    device = torch.device(device)
    n = size or MATMUL_SIZE.get(device.type, 1024)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    _sync(device)
    return max(_matmul_rate(a, b, out, seconds / windows) for _ in range(windows))


@functools.cache
def _process_peak_flops(device: str) -> float:
    return measure_peak_flops(device)


def process_peak_flops(device: str | torch.device) -> float:
    """``measure_peak_flops(device)`` (1 s), measured on this process's first call for ``device``."""
    return _process_peak_flops(str(torch.device(device)))


def _matmul_rate(a: Tensor, b: Tensor, out: Tensor, seconds: float) -> float:
    """FLOP/s of ``torch.mm(a, b, out=out)`` repeated for about ``seconds`` (at least once)."""
    n, device = a.shape[0], a.device
    count, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b, out=out)
        count += 1
        if count % 4 == 0 or device.type != "cuda":
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2.0 * n**3 * count / elapsed


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: (flops_per_step / seconds_per_step) / peak_flops."""
    return flops_per_step / seconds_per_step / peak_flops


class TensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage while active.

    ``with TensorMemory(model.parameters()) as mem: step()`` then ``mem.peak`` (bytes). Storages
    are counted once however many views share them, from the moment an op returns them until they
    are freed. Tensors that exist before the block count only when passed in (parameters, say) or
    when an op returns them. Temporaries inside a single kernel are not seen.
    """

    def __init__(self, *tensors):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}
        for group in tensors:
            for tensor in group:
                self._track(tensor)
        self.peak = self.live

    def _freed(self, key: int, nbytes: int) -> None:
        self._refs.pop(key, None)
        self.live -= nbytes

    def _track(self, tensor: Tensor) -> None:
        if not isinstance(tensor, Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._refs:
            return
        nbytes = storage.nbytes()
        self._refs[key] = weakref.ref(storage, lambda _, key=key, n=nbytes: self._freed(key, n))
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            self._track(leaf)
        return out
