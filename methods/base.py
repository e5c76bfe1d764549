"""The plugin contract every method implements, and the pieces methods share.

A method is a small ``nn.Module`` that holds the tokenizer's codebook ``C`` (K, d) as a buffer
and knows three things:

* ``backbone_io()``: what the shared backbone must take (an embedding grid of d channels, or
  token ids from a vocabulary of V) and emit (C values per latent position);
* ``draw(codes, generator)`` and ``loss(model, codes, labels, draws)``: one training step's
  randomness (noise, times, masks), then the loss. Splitting the two lets the trainer draw the
  randomness of a whole global batch once and hand each data-parallel rank its slice, so a run's
  numbers do not depend on how many GPUs it used. Every tensor in ``draws`` is batch-first.
* ``sample(model, labels, grid, ...)``: an Euler sampler that returns code grids. It draws all
  its randomness through ``sample_noise(generator, B, device)`` (a ``SampleNoise``), so that with
  per-sample seeds a sample's noise does not depend on the batch or rank it is drawn in.

Methods never see data loading, optimizers, devices, distributed setup or metrics; the trainer
and evaluator never branch on a method's name.

The model is any callable ``model(x, t, y) -> out`` with an attribute ``num_classes``:
x is (B, d, h, w) float or (B, h, w) int64 tokens, t is (B,) float in [0, 1] (0 = noise,
1 = data), y is (B,) int64 with ``num_classes`` meaning the null (unconditional) label, and
out is (B, C, h, w).
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, ClassVar, Literal, Protocol, Sequence

import torch
from torch import Tensor, nn

from backbones.dit import BackboneIO  # noqa: F401  (re-exported: part of the plugin contract)

T_EPS = 1e-3
"""Training times are drawn from U[T_EPS, 1) (docs/methods.md)."""


class Denoiser(Protocol):
    num_classes: int

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor: ...


@dataclass
class SampleOutput:
    """What a sampler returns.

    codes: (B, h, w) int64 code indices in [0, K).
    nfe: network evaluations per sample (steps x passes; CFG with w != 1 costs two passes).
    trace: per-step scalars averaged over the batch, e.g. ``{"entropy": [H_0, ..., H_{N-1}]}``,
        with ``trace["t"]`` the time at which each entry was measured.
    """

    codes: Tensor
    nfe: int
    trace: dict[str, list[float]] = field(default_factory=dict)


class Method(nn.Module, ABC):
    """Base class of the method plugins. Subclasses set the class attributes and implement
    ``backbone_io``, ``draw``, ``loss`` and ``sample``. Method-specific options are keyword-only
    constructor arguments with defaults; configs are checked against them (``option_names``).
    """

    name: ClassVar[str]
    """Registry name, e.g. ``"purr"``."""
    temperature_meaning: ClassVar[str]
    """What ``temperature`` means for this method's sampler (shown in figure legends)."""

    def __init__(self, codebook: Tensor, normalized: bool = False):
        super().__init__()
        self.register_buffer("codebook", codebook.detach().clone().float(), persistent=False)
        self.normalized = normalized

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    @property
    def code_dim(self) -> int:
        return self.codebook.shape[1]

    def embed(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) -> embedding grid z1 = C[c], (B, d, h, w)."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    @classmethod
    def option_names(cls) -> list[str]:
        """The method-specific options (keyword-only constructor arguments)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @abstractmethod
    def backbone_io(self) -> BackboneIO: ...

    @abstractmethod
    def draw(self, codes: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """All randomness of one training step for a batch of codes (B, h, w); batch-first."""

    @abstractmethod
    def loss(self, model: Denoiser, codes: Tensor, labels: Tensor, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training loss. Returns ``{"loss": scalar, ...diagnostics (detached scalars)}``."""

    @abstractmethod
    def sample(self, model: Denoiser, labels: Tensor, grid: tuple[int, int], *, steps: int,
               temperature: float = 1.0, cfg_scale: float = 1.0,
               generator: "torch.Generator | SampleNoise | None" = None) -> SampleOutput:
        """Euler sampler with ``steps`` steps on the uniform grid 0 = t_0 < ... < t_N = 1. Every
        random number comes from ``sample_noise(generator, B, device)``, drawn for all B samples
        at once (so each sample consumes the same sequence of draws)."""


# ----------------------------------------------------------------------------- sampler randomness

class SampleNoise:
    """A sampler's source of randomness for a batch of B samples.

    ``randn(*shape)``, ``rand(*shape)`` and ``randint(high, *shape)`` return (B, *shape) tensors.
    Built with ``per_sample(seeds, device)``, row i comes from sample i's own generator (seeded
    with ``seeds[i]``), so a sample's noise is a function of its seed alone: the same whichever
    batch, batch size or rank draws it. Built with ``shared(generator, B, device)``, all rows
    come from one generator in one call (cheaper; what a plain ``torch.Generator`` means).
    """

    def __init__(self, batch: int, device, *, shared: torch.Generator | None = None,
                 per_sample: Sequence[torch.Generator] | None = None):
        self.batch, self.device = batch, torch.device(device)
        self.shared_generator, self.generators = shared, None if per_sample is None else list(per_sample)

    @classmethod
    def shared(cls, generator: torch.Generator | None, batch: int, device) -> "SampleNoise":
        return cls(batch, device, shared=generator)

    @classmethod
    def per_sample(cls, seeds: Sequence[int], device) -> "SampleNoise":
        return cls(len(seeds), device, per_sample=[torch.Generator(device=device).manual_seed(int(s)) for s in seeds])

    def _draw(self, fn: Callable[..., Tensor], shape: tuple[int, ...]) -> Tensor:
        if self.generators is None or self.batch == 0:
            return fn((self.batch, *shape), generator=self.shared_generator, device=self.device)
        return torch.cat([fn((1, *shape), generator=g, device=self.device) for g in self.generators])

    def randn(self, *shape: int) -> Tensor:
        return self._draw(torch.randn, shape)

    def rand(self, *shape: int) -> Tensor:
        return self._draw(torch.rand, shape)

    def randint(self, high: int, *shape: int) -> Tensor:
        return self._draw(partial(torch.randint, high), shape)


def sample_noise(generator: "torch.Generator | SampleNoise | None", batch: int, device) -> SampleNoise:
    """The ``SampleNoise`` of a sampler call: ``generator`` itself if it is one (its batch must be
    ``batch``), else one shared stream from the ``torch.Generator`` (or the global RNG for None)."""
    if isinstance(generator, SampleNoise):
        if generator.batch != batch:
            raise ValueError(f"SampleNoise holds {generator.batch} streams for a batch of {batch} samples")
        return generator
    return SampleNoise.shared(generator, batch, device)


# ----------------------------------------------------------------------------- shared pieces

def uniform_times(n: int, generator: torch.Generator, device, t_eps: float = T_EPS) -> Tensor:
    """t ~ U[t_eps, 1), shape (n,)."""
    u = torch.rand(n, generator=generator, device=device)
    return t_eps + (1.0 - t_eps) * u


def gaussian_path_draws(codes: Tensor, code_dim: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Randomness of one step on the Gaussian path z_t = t z1 + (1 - t) z0 (purr, cfm, cfm-endpoint).

    codes (B, h, w) -> ``{"t": (B,) ~ U[T_EPS, 1), "z0": (B, d, h, w) ~ N(0, I)}``, drawn on
    ``generator.device``.
    """
    b, h, w = codes.shape
    return {"t": uniform_times(b, generator, generator.device),
            "z0": torch.randn(b, code_dim, h, w, generator=generator, device=generator.device)}


def check_temperature(temperature: float, method: str) -> None:
    """Samplers take a strictly positive temperature; anything else is an error naming the method."""
    if not temperature > 0:
        raise ValueError(f"method {method!r}: temperature must be > 0, got {temperature}")


def time_grid(steps: int, device) -> Tensor:
    """The Euler grid 0 = t_0 < t_1 < ... < t_N = 1, shape (steps + 1,)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1, device=device)


def interpolate(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """The linear path z_t = t z1 + (1 - t) z0 with t (B,) broadcast over (B, ...)."""
    tb = t.view(-1, *([1] * (z1.dim() - 1)))
    return tb * z1 + (1.0 - tb) * z0


def guided(model: Denoiser, x: Tensor, t: Tensor, labels: Tensor, cfg_scale: float) -> Tensor:
    """Classifier-free guidance: ``out_null + w (out_y - out_null)``.

    ``w == 1`` is a single conditional pass; otherwise the conditional and null passes are
    batched into one call of twice the batch.
    """
    if cfg_scale == 1.0:
        return model(x, t, labels)
    null = torch.full_like(labels, model.num_classes)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
    cond, uncond = out.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def passes_per_step(cfg_scale: float) -> int:
    return 1 if cfg_scale == 1.0 else 2


def categorical_loss(logits: Tensor, targets: Tensor, z_loss_weight: float,
                     mask: Tensor | None = None, count: Tensor | None = None) -> dict[str, Tensor]:
    """Cross-entropy over positions plus the z-loss.

    logits: (B, V, h, w); targets: (B, h, w) int64; mask: optional (B, h, w) bool selecting the
    positions that count; count: what the masked sums are divided by (default ``mask.sum()``; a
    data-parallel rank passes its share of the global batch's count, see ``masked_share``).
    With ``lse = logsumexp_k l_k``:
        loss = mean_pos [lse - l_target] + z_loss_weight * mean_pos [lse^2].
    Returns ``loss``, ``ce`` and ``logsumexp`` (mean over counted positions, detached).
    """
    lse = torch.logsumexp(logits.float(), dim=1)  # (B, h, w)
    target_logit = logits.float().gather(1, targets.unsqueeze(1)).squeeze(1)
    ce = lse - target_logit
    zl = lse.square()
    if mask is not None:
        denom = (mask.sum() if count is None else count).clamp_min(1)
        ce_mean, zl_mean, lse_mean = (ce * mask).sum() / denom, (zl * mask).sum() / denom, (lse * mask).sum() / denom
    else:
        ce_mean, zl_mean, lse_mean = ce.mean(), zl.mean(), lse.mean()
    return {"loss": ce_mean + z_loss_weight * zl_mean, "ce": ce_mean.detach(), "logsumexp": lse_mean.detach()}


def masked_share(counted: Tensor) -> Tensor:
    """A per-row column that lets each data-parallel rank normalise a masked loss by the *global*
    batch's count: ``counted`` (B, ...) bool over the global batch -> (B,) float, every entry
    ``counted.sum() / B``. The rows of any rank sum to its share ``b_r / B`` of the global count
    N, so its loss ``sum_r / (N b_r / B)`` averaged over ranks (as DDP averages gradients) is
    ``sum_all / N``: the single-process loss, whatever the number of ranks."""
    b = counted.shape[0]
    return (counted.sum() / b).float().expand(b).clone()


def euler_hazard(h: float, t: float) -> float:
    """Jump probability of one CTMC Euler step with kappa(t) = t: min(1, h kappa'/(1 - kappa))."""
    return 1.0 if t + h >= 1.0 - 1e-9 else min(1.0, h / (1.0 - t))

