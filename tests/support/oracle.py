"""A toy mixture of code grids and exact-posterior "models" for testing samplers without training.

Data: M code grids ``c^m`` (M, h, w) over a codebook C (K, d), drawn with class-dependent
probabilities ``p_{m|y}``; the null label (``num_classes``) uses the class-marginal weights, so
classifier-free guidance is defined. Each oracle is a callable ``(x, t, y) -> out`` with the
attribute ``num_classes``, computing the exact posterior over m in log space (float64):

* continuous (``z_t | m ~ N(t C[c^m], (1-t)^2 I)``):
  ``log w_m = log p_{m|y} - ||z_t - t C[c^m]||^2 / (2 (1-t)^2)``;
* masked DFM: ``p_{m|y}`` restricted to patterns that agree with the visible tokens;
* uniform-source DFM (``x = c`` w.p. t, else uniform): ``log w_m = log p_{m|y} +
  sum_pos log(t [x = c^m] + (1 - t)/K)``.

From the weights: per-position posterior ``pi_k = sum_m w_m [c^m = k]`` (as log-probabilities:
``purr`` and the DFMs' logits), endpoint ``sum_m w_m C[c^m]`` (``cfm-endpoint``) and velocity
``(endpoint - z)/(1 - t)`` (``cfm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

LOG_ZERO = -1e4
"""Stand-in for log 0 in oracle logits: finite, so CFG differences never produce NaN."""
DISAGREE = 1e3
"""Log-weight penalty per visible token that contradicts a pattern (masked DFM); it only matters
when no pattern agrees (simultaneous unmasking in one Euler step), and then picks the nearest."""


@dataclass
class ToyMixture:
    """codebook (K, d); patterns (M, h, w) int64; weights (num_classes + 1, M), row N = null."""

    codebook: Tensor
    patterns: Tensor
    weights: Tensor

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0] - 1

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.patterns.shape[1:])

    def log_prior(self, y: Tensor) -> Tensor:
        """log p_{m|y}: (B,) labels in [0, N] -> (B, M) float64."""
        return self.weights.to(torch.float64)[y.cpu()].log().to(y.device)

    def per_position_log_probs(self, log_w: Tensor) -> Tensor:
        """Unnormalised log w (B, M) -> log pi (B, K, h, w) with pi_k = sum_m w_m [c^m = k]."""
        w = log_w.softmax(dim=1)  # (B, M)
        onehot = F.one_hot(self.patterns.to(log_w.device), self.num_codes).permute(0, 3, 1, 2)  # (M, K, h, w)
        pi = (w @ onehot.flatten(1).to(w.dtype)).view(-1, *onehot.shape[1:])
        return pi.log().clamp_min(LOG_ZERO)

    def pattern_index(self, codes: Tensor) -> Tensor:
        """(B, h, w) codes -> (B,) index of the matching pattern, or M when none matches."""
        match = (codes[:, None] == self.patterns[None].to(codes.device)).flatten(2).all(-1)  # (B, M)
        return torch.where(match.any(1), match.int().argmax(1), self.patterns.shape[0])


def toy_mixture(normalized: bool = False) -> ToyMixture:
    """K = 5 codes in d = 3, M = 4 patterns on a 2 x 2 grid, 2 classes with different weights.

    The codes are a seeded random rotation of a triangular bipyramid's five unit vertices (pairwise
    distances >= sqrt 2), scaled by norms in [1, 2] unless ``normalized``. The per-position modes
    of each class form that class's most likely pattern (m0 for class 0, m3 for class 1).
    """
    s = math.sqrt(3) / 2
    vertices = torch.tensor([[0, 0, 1], [0, 0, -1], [1, 0, 0], [-0.5, s, 0], [-0.5, -s, 0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1234)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    codebook = vertices @ rotation.T
    if not normalized:
        codebook = codebook * (1 + torch.rand(5, 1, generator=g, dtype=torch.float64))
    patterns = torch.tensor([[[0, 1], [2, 3]], [[0, 1], [4, 4]], [[4, 2], [2, 0]], [[3, 3], [1, 4]]])
    per_class = torch.tensor([[0.45, 0.25, 0.20, 0.10], [0.10, 0.20, 0.25, 0.45]], dtype=torch.float64)
    weights = torch.cat([per_class, per_class.mean(0, keepdim=True)])
    return ToyMixture(codebook.float(), patterns, weights)


class ContinuousOracle:
    """Exact posterior on the Gaussian path; ``output`` is "logits" (purr), "endpoint" or "velocity".

    ``jitter`` = sigma > 0 smooths the law: z1 = C[c^m] + sigma eps, eps ~ N(0, I), so that
    z_t | m ~ N(t C[c^m], s_t^2 I) with s_t^2 = t^2 sigma^2 + (1 - t)^2, the posterior over patterns
    stays soft at t = 1 and the flow map z0 -> z1 is smooth (with sigma = 0 it is piecewise
    constant: every trajectory ends on a pattern). The endpoint is then the exact
    E[z1 | z_t] = sum_m w_m (C[c^m] + (t sigma^2 / s_t^2)(z_t - t C[c^m])); the logits (purr) stay
    the per-position code posterior, whose mean is the first term. For testing ODE solvers' order.
    """

    def __init__(self, mixture: ToyMixture, output: str, jitter: float = 0.0):
        if output not in ("logits", "endpoint", "velocity"):
            raise ValueError(f"unknown oracle output {output!r}")
        self.mixture, self.output, self.jitter = mixture, output, jitter
        self.num_classes = mixture.num_classes

    def spread(self, t: Tensor) -> Tensor:
        """s_t (B,) float64: the standard deviation of z_t given the pattern."""
        t = t.to(torch.float64)
        return (t.square() * self.jitter**2 + (1 - t).square()).sqrt().clamp_min(1e-6)

    def log_weights(self, z: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """(B, d, h, w), (B,), (B,) -> unnormalised log w (B, M)."""
        means = self.mixture.codebook.to(z.device, torch.float64)[self.mixture.patterns.to(z.device)]  # (M, h, w, d)
        means = means.permute(0, 3, 1, 2)[None]  # (1, M, d, h, w)
        t = t.to(torch.float64)
        sq = (z.to(torch.float64)[:, None] - t.view(-1, 1, 1, 1, 1) * means).square().sum((2, 3, 4))  # (B, M)
        return self.mixture.log_prior(y) - sq / (2 * self.spread(t)[:, None] ** 2)

    def __call__(self, z: Tensor, t: Tensor, y: Tensor) -> Tensor:
        log_pi = self.mixture.per_position_log_probs(self.log_weights(z, t, y))  # (B, K, h, w)
        if self.output == "logits":
            return log_pi.float()
        endpoint = torch.einsum("bkhw,kd->bdhw", log_pi.exp(), self.mixture.codebook.to(z.device, torch.float64))
        t64, z64 = t.to(torch.float64).view(-1, 1, 1, 1), z.to(torch.float64)
        if self.jitter:
            gain = t64 * self.jitter**2 / self.spread(t).view(-1, 1, 1, 1) ** 2
            endpoint = endpoint + gain * (z64 - t64 * endpoint)
        if self.output == "endpoint":
            return endpoint.float()
        return ((endpoint - z64) / (1 - t64).clamp_min(1e-6)).float()


class MaskedOracle:
    """Exact posterior for the masked-source DFM: logits (B, K + 1, h, w), mask channel at LOG_ZERO."""

    def __init__(self, mixture: ToyMixture):
        self.mixture = mixture
        self.num_classes = mixture.num_classes

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        mask_id = self.mixture.num_codes
        visible = (x != mask_id)[:, None]  # (B, 1, h, w)
        disagree = ((x[:, None] != self.mixture.patterns[None].to(x.device)) & visible).sum((2, 3))  # (B, M)
        log_pi = self.mixture.per_position_log_probs(self.mixture.log_prior(y) - DISAGREE * disagree)
        mask_channel = torch.full_like(log_pi[:, :1], LOG_ZERO)
        return torch.cat([log_pi, mask_channel], dim=1).float()


class UniformOracle:
    """Exact posterior for the uniform-source DFM: logits (B, K, h, w)."""

    def __init__(self, mixture: ToyMixture):
        self.mixture = mixture
        self.num_classes = mixture.num_classes

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        k = self.mixture.num_codes
        t = t.to(torch.float64).view(-1, 1, 1, 1)
        agree = (x[:, None] == self.mixture.patterns[None].to(x.device)).to(torch.float64)  # (B, M, h, w)
        log_lik = torch.log(t * agree + (1 - t) / k).sum((2, 3))  # (B, M)
        return self.mixture.per_position_log_probs(self.mixture.log_prior(y) + log_lik).float()


def oracle_for(method_name: str, mixture: ToyMixture, jitter: float = 0.0):
    """The exact-posterior model a built-in method's sampler expects (``jitter``: see ``ContinuousOracle``)."""
    factories = {
        "purr": lambda: ContinuousOracle(mixture, "logits", jitter),
        "cfm": lambda: ContinuousOracle(mixture, "velocity", jitter),
        "cfm-endpoint": lambda: ContinuousOracle(mixture, "endpoint", jitter),
        "dfm": lambda: MaskedOracle(mixture),
        "dfm-uniform": lambda: UniformOracle(mixture),
    }
    if method_name not in factories:
        raise KeyError(f"no oracle for method {method_name!r}")
    return factories[method_name]()


def pattern_frequencies(mixture: ToyMixture, codes: Tensor, labels: Tensor, label: int) -> Tensor:
    """Empirical frequencies (M + 1,) of the patterns among samples of ``label``; the last entry is
    the mass off every pattern."""
    idx = mixture.pattern_index(codes[labels == label])
    return torch.bincount(idx.cpu(), minlength=mixture.patterns.shape[0] + 1).double() / idx.numel()


def total_variation(freq: Tensor, probs: Tensor) -> float:
    """TV between empirical (M + 1,) frequencies (last = off-pattern) and the true (M,) probabilities."""
    target = torch.cat([probs.double(), probs.new_zeros(1).double()])
    return 0.5 * (freq - target).abs().sum().item()
