"""Discrete flow matching with a masked source (``dfm``), and the machinery shared with ``dfm-uniform``.

Mixture path with scheduler ``kappa(t) = t``: every position independently keeps its clean code
``c`` with probability ``kappa(t)``, else shows a source token. ``draw`` gives ``t ~ U[T_EPS, 1)``
and per-position uniforms ``u``; a position keeps its code iff ``u < t``.

Training: the backbone takes the token grid ``x_t`` and emits logits over the vocabulary per
position; loss = CE(l, c) + z_loss * logsumexp(l)^2, averaged over positions (with ``masked_only``,
over the masked positions of the global batch: ``draw`` records their count per row, so the loss
does not depend on how many data-parallel ranks share the batch).

Sampling (Euler on the CTMC, step h = t' - t; state: the token grid x (B, h, w)): every
position that may still move (``movable``) jumps with probability
``min(1, h kappa'(t) / (1 - kappa(t))) = min(1, h / (1 - t))`` (1 on the last step) to a draw
from ``softmax(l[:K] / tau)`` (``jump_posterior``; CFG on the logits before the temperature).
The trace records the mean per-position entropy of that jump distribution (the model's posterior
over the clean code) at each step; the codes are the final grid.

``dfm``: vocabulary V = K + 1 with mask id K; the sampler starts all-mask, only masked positions
move, and a position never returns to the mask (no re-masking). Option ``masked_only`` restricts
the loss to masked positions (the paper's loss counts all positions). Besides Euler it runs the
MaskGIT decoder (``methods.maskgit``), which unmasks by confidence on a cosine schedule.

With the shared DiT the V-logit head is fused (``methods.heads``): loss, jump draws and entropies
are computed chunk by chunk without the full logits tensor (CFG on the features before the head).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from methods.base import BackboneIO, Denoiser, Method, SampleContext, euler_hazard, masked_share, uniform_times
from methods.heads import Readout, head_loss, head_readout
from methods.registry import register


class DiscreteFlow(Method):
    """The mixture-path DFM core; subclasses choose the source (vocabulary, corruption, start)."""

    temperature_meaning = "softmax temperature on jump distribution"

    def __init__(self, codebook: Tensor, normalized: bool = False, *, z_loss: float = 1e-5):
        super().__init__(codebook, normalized)
        if not z_loss >= 0:
            raise ValueError(f"method {self.name!r}: z_loss must be >= 0, got {z_loss}")
        self.z_loss = z_loss

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """V: the token ids the backbone reads and the logits it emits."""

    @abstractmethod
    def source_tokens(self, codes: Tensor, draws: dict[str, Tensor]) -> Tensor:
        """The source token grid (B, h, w) that replaces dropped codes in training."""

    @abstractmethod
    def movable(self, x: Tensor) -> Tensor:
        """Bool (B, h, w): positions allowed to jump at the next sampler step."""

    def backbone_io(self) -> BackboneIO:
        return BackboneIO("tokens", self.vocab_size, self.vocab_size)

    def draw(self, codes: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``{"t": (B,) ~ U[T_EPS, 1), "u": (B, h, w) ~ U[0, 1)}`` on ``generator.device``."""
        return {
            "t": uniform_times(codes.shape[0], generator, generator.device),
            "u": torch.rand(codes.shape, generator=generator, device=generator.device),
        }

    def corrupt(self, codes: Tensor, draws: dict[str, Tensor]) -> Tensor:
        """x_t: keep ``codes`` where u < kappa(t) = t, else the source token; (B, h, w) int64."""
        keep = draws["u"] < draws["t"].view(-1, 1, 1)
        return torch.where(keep, codes, self.source_tokens(codes, draws))

    def loss_mask(self, x_t: Tensor) -> Tensor | None:
        """Positions that count in the loss (None: all)."""
        return None

    def loss(self, model: Denoiser, codes: Tensor, labels: Tensor, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        x_t = self.corrupt(codes, draws)
        mask = self.loss_mask(x_t)
        count = None if mask is None else draws["counted"].sum()  # this rank's share of the global count
        return head_loss(model, x_t, draws["t"], labels, codes, self.z_loss, mask, count)  # V logits

    def jump_posterior(
        self, ctx: SampleContext, x: Tensor, t: float | Tensor, *, draw_logprob: bool = False
    ) -> Readout:
        """pi = softmax(l[:K] / tau) per position at (x, t) (CFG on the logits; never the mask): its
        entropy and one draw (B, h, w), from one uniform per position of ``ctx.noise``; with
        ``draw_logprob`` also the draw's untempered log-probability log softmax(l[:K])(draw).
        ``t``: one time for the batch, or a (B,) tensor of per-sample times."""
        times = t if isinstance(t, Tensor) else ctx.time(t)
        return head_readout(
            ctx.model,
            x,
            times,
            ctx.labels,
            grid=ctx.grid,
            cfg_scale=ctx.cfg_scale,
            temperature=ctx.temperature,
            num_codes=self.num_codes,
            uniforms=ctx.noise.rand(*ctx.grid),
            draw_logprob=draw_logprob,
        )

    def euler_step(self, ctx: SampleContext, x: Tensor, t: float, t_next: float) -> tuple[Tensor, dict[str, Tensor]]:
        u = ctx.noise.rand(*ctx.grid)
        post = self.jump_posterior(ctx, x, t)
        jump = self.movable(x) & (u < euler_hazard(t_next - t, t))
        return torch.where(jump, post.draw, x), {"entropy": post.entropy.mean()}

    def final_codes(self, ctx: SampleContext, x: Tensor) -> Tensor:
        return x


@register
class MaskedDiscreteFlow(DiscreteFlow):
    name = "dfm"
    samplers = ("euler", "maskgit")

    def __init__(self, codebook: Tensor, normalized: bool = False, *, z_loss: float = 1e-5, masked_only: bool = False):
        super().__init__(codebook, normalized, z_loss=z_loss)
        self.masked_only = masked_only

    @property
    def mask_id(self) -> int:
        return self.num_codes

    @property
    def vocab_size(self) -> int:
        return self.num_codes + 1

    def source_tokens(self, codes: Tensor, draws: dict[str, Tensor]) -> Tensor:
        return torch.full_like(codes, self.mask_id)

    def draw(self, codes: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """With ``masked_only``, also ``"counted"`` (B,): the global batch's masked positions per row."""
        draws = super().draw(codes, generator)
        if self.masked_only:
            draws["counted"] = masked_share(draws["u"] >= draws["t"].view(-1, 1, 1))
        return draws

    def initial_state(self, ctx: SampleContext) -> Tensor:
        """All-mask x_0, (B, h, w)."""
        return torch.full((ctx.batch, *ctx.grid), self.mask_id, dtype=torch.long, device=ctx.noise.device)

    def movable(self, x: Tensor) -> Tensor:
        return x == self.mask_id

    def loss_mask(self, x_t: Tensor) -> Tensor | None:
        return x_t == self.mask_id if self.masked_only else None
