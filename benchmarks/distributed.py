"""Data-parallel context: rank and world size from torchrun's or SLURM/submitit's environment.

The global batch stays what the config says; each rank takes ``batch / world`` rows of it.
NCCL on GPUs, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> "DistEnv":
        """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; SLURM (srun, submitit) sets SLURM_PROCID/
        SLURM_NTASKS/SLURM_LOCALID. Without either, a single process."""
        env = os.environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
            return cls(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        return cls()

    def local_slice(self, batch: int) -> slice:
        """The rows of a global batch this rank trains on."""
        if batch % self.world_size:
            raise ValueError(f"train.batch_size {batch} is not divisible by the world size {self.world_size}")
        per_rank = batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def init_process_group(self, device: torch.device) -> None:
        if self.enabled and not torch_dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch_dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """All-reduce mean of a scalar tensor across ranks (identity on one process)."""
        if self.enabled:
            value = value.clone()
            torch_dist.all_reduce(value)
            value /= self.world_size
        return value

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()
