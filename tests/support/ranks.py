"""Helpers for tests that start several gloo ranks on this machine with ``torch.multiprocessing``."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import torch.distributed as torch_dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the ranks' rendezvous port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def member_of_group() -> Iterator[None]:
    """Run a rank's work inside the process group it has joined, then leave it.

    On success every rank meets at a barrier before tearing its group down: a rank that destroys
    its gloo connections while a peer still has traffic in flight can abort the peer (SIGABRT,
    "terminate called without an active exception"). On failure there is no barrier (the peers may
    be inside another collective), only the teardown."""
    try:
        yield
        torch_dist.barrier()
    finally:
        torch_dist.destroy_process_group()


TINY_EVAL = [
    "tokenizer.vqvae.train_steps=30",
    "eval.temperatures=[]",
    "eval.num_samples=40",
    "eval.batch_size=40",
    "eval.kid_subsets=2",
    "eval.grid_samples=4",
]
"""``--set`` overrides for the smallest run whose metrics a multi-rank run must reproduce."""
RANK_METRICS = ["fid", "kid_mean", "precision", "recall", "isc", "class_accuracy", "entropy"]
"""The metrics.csv columns compared between runs on different numbers of ranks."""
