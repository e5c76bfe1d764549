"""The compute device and precision every stage shares (training, sampling, the GPU check)."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device: ``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def device_autocast(device: torch.device):
    """The compute precision of training and sampling: bf16 autocast on CUDA, float32 elsewhere
    (bf16 matmuls are about 80x slower than float32 on CPUs without AVX-512 BF16)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
