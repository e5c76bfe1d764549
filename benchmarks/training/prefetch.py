"""Training batches gathered ahead of time on a background thread.

Each step's global batch is fixed by the data generator alone: ``B`` indices drawn uniformly from
the shards, then ``B`` uniforms that drop labels to the null class with probability
``label_dropout``. Those draws are cheap and stay on the calling thread, in step order, so the
sequence of batches is that of a serial loader; what runs ahead on the worker thread is the
expensive part, gathering rows from the memory-mapped shards (as int32, half the bytes of int64)
into pinned memory when the batches go to a GPU. ``depth`` batches are in flight.

Because the generator runs ahead of training, its state cannot be checkpointed directly: each
batch carries ``data_state``, the generator state right after its own draws, which is where a run
resumed after that batch must restart the generator.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.data.shards import CodeShards


@dataclass
class Batch:
    """codes (B, h, w) int64 and labels (B,) int64 on the device; ``data_state``: see the module docstring."""

    codes: torch.Tensor
    labels: torch.Tensor
    data_state: torch.Tensor


class BatchPrefetcher:
    def __init__(
        self,
        shards: CodeShards,
        generator: torch.Generator,
        *,
        batch_size: int,
        label_dropout: float,
        null_label: int,
        device: torch.device,
        depth: int = 2,
    ):
        self.shards, self.generator, self.batch_size = shards, generator, batch_size
        self.label_dropout, self.null_label, self.device, self.depth = label_dropout, null_label, device, depth
        self.pin = device.type == "cuda"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        self._queue: deque[tuple[Future, torch.Tensor]] = deque()

    def _gather(self, idx: torch.Tensor, dropped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, labels = self.shards.batch(idx, codes_dtype=np.int32)
        labels = labels.masked_fill(dropped, self.null_label)
        if self.pin:
            codes, labels = codes.pin_memory(), labels.pin_memory()
        return codes, labels

    def _submit(self) -> None:
        idx = torch.randint(len(self.shards), (self.batch_size,), generator=self.generator)
        dropped = torch.rand(self.batch_size, generator=self.generator) < self.label_dropout
        self._queue.append((self._pool.submit(self._gather, idx, dropped), self.generator.get_state()))

    def next(self) -> Batch:
        if not self._queue:
            self._submit()
        future, state = self._queue.popleft()
        while len(self._queue) < self.depth:  # the next batches gather while this one trains
            self._submit()
        codes, labels = future.result()
        codes = codes.to(self.device, non_blocking=self.pin).long()
        return Batch(codes, labels.to(self.device, non_blocking=self.pin), state)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queue.clear()
