"""MaskGIT decoding (Chang et al. 2022) for the masked DFM (``dfm``): confidence-ordered unmasking
on a cosine schedule, run on the checkpoints the mixture-path loss trains (only the sampler differs).

It is a heuristic decoder, not a sampler of the CTMC: positions decoded in one step are drawn
independently, and the most confident candidates go first. Two choices are this suite's, not the
reference decoder's (which has neither a time input nor a temperature): the network's time input
is the fraction already decoded, and candidates are drawn at the sampling temperature tau.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from methods.dfm import MaskedDiscreteFlow
from methods.sampling import SampleContext, Sampler, Solution, register_sampler


def cosine_schedule(r: float) -> float:
    """gamma(r) = cos(pi r / 2): the fraction of positions still masked after progress r in [0, 1]."""
    return math.cos(math.pi * r / 2)


def masked_after(length: int, masked_now: Tensor | int, r: float) -> Tensor | int:
    """How many positions stay masked after a step that ends at progress r = (i + 1) / N, out of
    ``length`` positions of which ``masked_now`` are masked: 0 on the last step (r = 1), else
    max(1, min(masked_now - 1, floor(L gamma(r)))) (at least one decoded, at least one left)."""
    if r >= 1.0:
        return masked_now * 0
    target = math.floor(length * cosine_schedule(r) + 1e-9)  # the guard keeps exact integers (L = 4, r = 2/3) whole
    if isinstance(masked_now, Tensor):
        return (masked_now - 1).clamp(max=target).clamp(min=1)
    return max(1, min(masked_now - 1, target))


@register_sampler
class MaskGIT(Sampler):
    """MaskGIT decoding in N steps over the L = h w positions of the grid, starting all-mask.

    Step i = 0 .. N - 1, with r = (i + 1) / N and m the positions still masked:

    1. One guided evaluation (CFG on the logits) at time t = 1 - m / L, the fraction already
       decoded (under kappa(t) = t the time whose expected unmasked share matches the state). Each
       masked position draws a candidate x ~ softmax(l[:K] / tau) (never the mask), with confidence
       s = log softmax(l[:K])(x) at temperature 1, so the ranking stays meaningful as tau -> 0;
       decoded positions get s = +inf.
    2. n = max(1, min(m - 1, floor(L cos(pi r / 2)))) positions stay masked (n = 0 on the last step).
    3. Choice noise s' = s + T_choice (1 - r) g, g ~ Gumbel(0, 1) (``choice_temperature`` T_choice,
       annealed to 0): the n masked positions with the lowest s' (ties: lower position index first)
       stay masked, the others take their candidate and never change again.

    Requires N <= L; every position is decoded after exactly N steps. NFE per step: 1, so
    NFE = N x passes_per_step(w). Candidate uniforms and Gumbel noise come from ``ctx.noise``
    (per-sample streams), so a sample does not depend on its batch. The trace records the mean
    entropy of softmax(l[:K] / tau) over all positions and ``decoded``, the time input t.
    """

    name = "maskgit"

    def __init__(self, *, choice_temperature: float = 4.5):
        if not choice_temperature >= 0:
            raise ValueError(f"sampler 'maskgit': choice_temperature must be >= 0, got {choice_temperature}")
        self.choice_temperature = float(choice_temperature)

    def times(self, steps: int, device) -> Tensor:
        """The progress grid r_i = i / N in float64, so that floor(L gamma(r)) sees r = (i + 1) / N exactly."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return torch.arange(steps + 1, dtype=torch.float64, device=device) / steps

    def solve(self, method: MaskedDiscreteFlow, ctx: SampleContext, state: Tensor, steps: int) -> Solution:
        length = ctx.grid[0] * ctx.grid[1]
        if steps > length:
            raise ValueError(
                f"sampler 'maskgit': {steps} steps for {length} positions; "
                f"it decodes at least one position per step, so steps must be <= {length}"
            )
        return super().solve(method, ctx, state, steps)

    def step(
        self, method: MaskedDiscreteFlow, ctx: SampleContext, x: Tensor, t: float, t_next: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        b, length = x.shape[0], x[0].numel()
        masked = method.movable(x)  # (B, h, w)
        masked_now = masked.flatten(1).sum(1)  # (B,): the same for every sample
        decoded = 1.0 - masked_now.to(torch.float32) / length
        post = method.jump_posterior(ctx, x, decoded, draw_logprob=True)
        uniforms = ctx.noise.rand(*ctx.grid).clamp_min(torch.finfo(torch.float32).tiny)
        gumbel = -torch.log(-torch.log(uniforms))
        score = post.draw_logprob.float() + self.choice_temperature * (1.0 - t_next) * gumbel
        score = torch.where(masked, score, torch.inf).reshape(b, length)
        order = torch.sort(score, dim=1, stable=True).indices  # lowest first; ties by position index
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(length, device=x.device).expand(b, length))
        remask = rank < masked_after(length, masked_now, t_next).unsqueeze(1)
        keep = masked & ~remask.view_as(masked)
        return torch.where(keep, post.draw, x), {"entropy": post.entropy.mean(), "decoded": decoded.mean()}
