"""The plugin contract every method implements, and the pieces methods share.

A method is a small ``nn.Module`` that holds the tokenizer's codebook ``C`` (K, d) as a buffer
and knows three things:

* ``backbone_io()``: what the shared backbone must take (an embedding grid of d channels, or
  token ids from a vocabulary of V) and emit (C values per latent position);
* ``draw(codes, generator)`` and ``loss(model, codes, labels, draws)``: one training step's
  randomness (noise, times, masks), then the loss. Splitting the two lets the trainer draw the
  randomness of a whole global batch once and hand each data-parallel rank its slice, so a run's
  numbers do not depend on how many GPUs it used. Every tensor in ``draws`` is batch-first.
* ``sample(model, labels, grid, ..., sampler="euler")``: code grids from a registered sampler
  (``methods.sampling``), which runs the method's sampler hooks: ``initial_state`` (the state at
  t = 0 from the noise), ``euler_step`` (one Euler step from t to t') and ``final_codes`` (the
  state at t = 1 -> codes), plus whatever other hooks the samplers in ``samplers`` need. All
  randomness comes from one ``SampleNoise``, so that with per-sample seeds a sample's noise does
  not depend on the batch or rank it is drawn in.

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
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from backbones.dit import BackboneIO  # noqa: F401  (re-exported: part of the plugin contract)
from methods.sampling import (  # noqa: F401  (re-exported: used by methods and tests)
    SampleContext,
    SampleNoise,
    SampleOutput,
    Sampler,
    build_sampler,
    get_sampler,
    parse_sampler_spec,
    passes_per_step,
    sample_noise,
    sampler_names,
    time_grid,
)

T_EPS = 1e-3
"""Training times are drawn from U[T_EPS, 1) (docs/methods.md)."""


class Denoiser(Protocol):
    num_classes: int

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor: ...


class Method(nn.Module, ABC):
    """Base class of the method plugins. Subclasses set the class attributes and implement
    ``backbone_io``, ``draw``, ``loss`` and the sampler hooks. Method-specific options are keyword-only
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

    # ------------------------------------------------------------------------- sampling

    samplers: ClassVar[tuple[str, ...]] = ("euler",)
    """Names of the samplers this method supports. Every method has an Euler step; one that also
    provides the hooks of another sampler (e.g. a Gaussian path's ``predict`` for ``heun``,
    ``midpoint`` and ``dopri5``; the masked DFM's ``jump_posterior`` for ``maskgit``) adds that
    sampler's name."""

    @classmethod
    def supported_samplers(cls) -> list[str]:
        """The registered samplers that run this method."""
        return [name for name in sampler_names() if get_sampler(name).supports(cls)]

    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        labels: Tensor,
        grid: tuple[int, int],
        *,
        steps: int,
        temperature: float = 1.0,
        cfg_scale: float = 1.0,
        generator: torch.Generator | SampleNoise | None = None,
        sampler: str | Sampler = "euler",
    ) -> SampleOutput:
        """B = ``len(labels)`` code grids (B, h, w) from ``sampler`` in ``steps`` steps (NFE, trace and
        the sampler's label in the ``SampleOutput``). ``sampler`` is a registered name, a spec with
        parameters (``"dopri5:rtol=1e-4,atol=1e-4"``, see ``methods.sampling.build_sampler``) or a
        ``Sampler``. Every random number comes from ``sample_noise(generator, B, device)``, drawn
        for all B samples at once (so each sample consumes the same sequence of draws)."""
        name = sampler.name if isinstance(sampler, Sampler) else parse_sampler_spec(sampler)[0]
        choices = self.supported_samplers()
        if name not in choices:
            raise ValueError(f"method {self.name!r} has no sampler {name!r}; its samplers: {', '.join(choices)}")
        runner = build_sampler(sampler)
        check_temperature(temperature, self.name)
        noise = sample_noise(generator, labels.shape[0], labels.device)
        return runner.run(
            self, model, labels, grid, steps=steps, temperature=temperature, cfg_scale=cfg_scale, noise=noise
        )

    @abstractmethod
    def initial_state(self, ctx: SampleContext) -> Any:
        """The sampler state at t = 0 for ``ctx.batch`` samples, drawn from ``ctx.noise``."""

    @abstractmethod
    def euler_step(self, ctx: SampleContext, state: Any, t: float, t_next: float) -> tuple[Any, dict[str, Tensor]]:
        """One Euler step from t to t_next (t_next = 1 on the last step) with one guided network
        evaluation at t: the new state and per-step trace values (0-dim tensors, batch means)."""

    @abstractmethod
    def final_codes(self, ctx: SampleContext, state: Any) -> Tensor:
        """The state at t = 1 -> codes (B, h, w) int64 in [0, K)."""


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
    return {
        "t": uniform_times(b, generator, generator.device),
        "z0": torch.randn(b, code_dim, h, w, generator=generator, device=generator.device),
    }


def check_temperature(temperature: float, method: str) -> None:
    """Samplers take a strictly positive temperature; anything else is an error naming the method."""
    if not temperature > 0:
        raise ValueError(f"method {method!r}: temperature must be > 0, got {temperature}")


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


def categorical_loss(
    logits: Tensor, targets: Tensor, z_loss_weight: float, mask: Tensor | None = None, count: Tensor | None = None
) -> dict[str, Tensor]:
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
