"""The benchmarked workloads: one training step (as ``benchmarks.training.trainer.Trainer.train_step`` takes
it), one sampler call, tokenizer encode/decode and evaluator feature extraction.

A training step is: the method's draws, its loss, zero_grad, backward, gradient clipping (1.0), an
AdamW step (lr 1e-4, wd 0.01) and an EMA update, in float32 on the CPU (bf16 autocast on CUDA).
``head="dense"`` runs a categorical method through ``methods.heads.DenseHead`` (the full-logits
reference path, i.e. "before"); ``"fused"`` is the methods' default with the shared DiT.
Weights are DiT's init (zero head), codebooks and codes are random: speed and memory do not
depend on the values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

import methods
from backbones.dit import build_dit
from benchmarks.core.config import load_config
from benchmarks.core.device import device_autocast
from benchmarks.training.flops import model_flops, parameter_count
from benchmarks.training.utilisation import TensorMemory
from methods.heads import DenseHead

HEADS = ("fused", "dense")


@dataclass(frozen=True)
class Workload:
    """Backbone preset, codebook (K, d), latent grid and batch of a benchmarked configuration."""

    name: str
    backbone: str
    codes: int
    code_dim: int
    grid: tuple[int, int]
    batch: int
    num_classes: int = 10

    def with_batch(self, batch: int) -> Workload:
        return Workload(self.name, self.backbone, self.codes, self.code_dim, self.grid, batch, self.num_classes)


def config_workload(name: str) -> Workload:
    """The backbone, suite VQ-VAE codebook, latent grid and batch of ``benchmarks/configs/<name>.yaml``."""
    cfg = load_config(name)
    vq, side = cfg.tokenizer.vqvae, cfg.data.image_size // cfg.tokenizer.vqvae.downsample
    return Workload(name, cfg.backbone, vq.codebook_size, vq.code_dim, (side, side), cfg.train.batch_size)


DEFAULT = config_workload("default")
"""The default config's workload (MNIST-5k, suite VQ-VAE), read from its YAML so they never drift."""
DIT_S2 = Workload("S2-16k", "S/2", 16384, 4, (32, 32), 32)
"""A DiT-S/2 on the paper tokenizers' latent shape: K = 16384 codes on a 32x32 grid."""
WORKLOADS = {w.name: w for w in (DEFAULT, DIT_S2)}


def is_categorical(method_name: str) -> bool:
    """Methods whose head emits logits (more than d channels per position): fused vs dense applies."""
    method = methods.get_method(method_name)(torch.zeros(2, 1))
    return method.backbone_io().out_channels > method.code_dim


def variants() -> list[tuple[str, str]]:
    """(method, head) pairs: every registered method with its default head ("fused"; for a
    non-categorical method the head option changes nothing), plus the dense reference of the
    categorical ones."""
    out = []
    for name in methods.method_names():
        out.append((name, "fused"))
        if is_categorical(name):
            out.append((name, "dense"))
    return out


def label(method: str, head: str) -> str:
    """``purr-fused`` / ``purr-dense`` for categorical methods, the bare name otherwise."""
    return f"{method}-{head}" if is_categorical(method) else method


class TrainStep:
    """``step()`` runs one training step; ``flops`` is the model's FLOPs per step (forward and
    backward, counted once: ``benchmarks.training.flops.model_flops``)."""

    def __init__(
        self,
        method_name: str,
        workload: Workload,
        head: str = "fused",
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(seed)
        self.method = methods.get_method(method_name)(torch.randn(workload.codes, workload.code_dim, generator=g))
        self.method.to(self.device)
        io = self.method.backbone_io()
        torch.manual_seed(seed)
        self.model = build_dit(workload.backbone, io, workload.grid, workload.num_classes).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.forward_model = self.model if head == "fused" else DenseHead(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.codes = torch.randint(workload.codes, (workload.batch, *workload.grid), generator=g).to(self.device)
        self.labels = torch.randint(workload.num_classes + 1, (workload.batch,), generator=g).to(self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.params = parameter_count(self.model)
        self.flops = model_flops(workload.backbone, io, workload.grid, workload.num_classes, batch=workload.batch)

    def step(self) -> float:
        """One training step; returns the loss."""
        draws = self.method.draw(self.codes, self.noise)
        with device_autocast(self.device):
            loss = self.method.loss(self.forward_model, self.codes, self.labels, draws)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1e-3)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return loss.item()

    def state_tensors(self) -> list[torch.Tensor]:
        """Everything a step starts with: parameters, their gradients, EMA, optimizer state, batch."""
        tensors = [*self.model.parameters(), *self.ema.parameters(), self.codes, self.labels]
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        tensors += [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        return tensors

    def peak_memory(self) -> int:
        """Peak bytes of live tensors over one steady-state step (the optimizer state exists)."""
        if not self.optimizer.state:
            self.step()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            return torch.cuda.max_memory_allocated(self.device)
        with TensorMemory(self.state_tensors()) as mem:
            self.step()
        return mem.peak


class SampleRun:
    """``run()`` samples ``batch`` code grids with ``steps`` Euler steps (EMA model, eval mode)."""

    def __init__(
        self,
        method_name: str,
        workload: Workload,
        head: str = "fused",
        *,
        steps: int = 20,
        cfg_scale: float = 1.0,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        train = TrainStep(method_name, workload, head, device=device, seed=seed)
        self.method, self.device, self.workload = train.method, train.device, workload
        self.model = train.ema.eval() if head == "fused" else DenseHead(train.ema.eval())
        self.steps, self.cfg_scale = steps, cfg_scale
        self.labels = train.labels

    def run(self) -> torch.Tensor:
        with torch.no_grad(), device_autocast(self.device):
            out = self.method.sample(
                self.model,
                self.labels,
                self.workload.grid,
                steps=self.steps,
                temperature=0.9,
                cfg_scale=self.cfg_scale,
                generator=torch.Generator(device=self.device).manual_seed(0),
            )
        return out.codes
