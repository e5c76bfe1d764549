"""Purrception (``purr``): variational flow matching with a categorical posterior over codes.

Training: ``z_t = t z1 + (1 - t) z0`` with ``z1 = C[c]``, ``z0 ~ N(0, I)``, ``t ~ U[T_EPS, 1)``;
the backbone maps ``(z_t, t, y)`` to K logits per latent position and the loss is
``mean_pos CE(l, c) + z_loss * mean_pos logsumexp_k(l)^2`` (no velocity regression).

Sampling (``methods.gaussian_path``, from ``z ~ N(0, I)``: the temperature acts on the posterior
only): each evaluation gives ``pi = softmax(l / tau)`` per position (CFG on the logits) and its
mean ``mu = sum_k pi_k e_k``, the endpoint prediction, so the Euler step is
``z <- z + (h / (1 - t)) (mu - z)`` and the last step (h = 1 - t) lands exactly on ``mu``. The trace
records the mean entropy H(pi) per step. The final codes follow ``final_rule``: ``nearest``
codebook entry to ``z`` (L2, cosine for a normalised codebook; the paper's rule), ``argmax`` of
the last logits, or a ``sample`` from the last posterior.

With the shared DiT the K-logit head is fused (``methods.heads``): the loss and the per-step
posterior read-out (mean, entropy) are computed chunk by chunk without the full logits tensor,
and CFG mixes the features before the head (equal to mixing the logits: the head is affine).
Other models (test oracles) take the dense reference path.
"""

from __future__ import annotations

from torch import Tensor

from methods.base import BackboneIO, Denoiser, SampleContext, interpolate
from methods.gaussian_path import GaussianPathMethod, Prediction
from methods.heads import head_loss, head_readout
from methods.registry import register

FINAL_RULES = ("nearest", "argmax", "sample")


@register
class Purrception(GaussianPathMethod):
    name = "purr"
    temperature_meaning = "softmax temperature tau on the code posterior"
    prediction = "endpoint"

    def __init__(
        self, codebook: Tensor, normalized: bool = False, *, z_loss: float = 1e-5, final_rule: str = "nearest"
    ):
        super().__init__(codebook, normalized)
        if final_rule not in FINAL_RULES:
            raise ValueError(
                f"method 'purr': unknown final_rule {final_rule!r}; expected one of {', '.join(FINAL_RULES)}"
            )
        if not z_loss >= 0:
            raise ValueError(f"method 'purr': z_loss must be >= 0, got {z_loss}")
        self.z_loss = z_loss
        self.final_rule = final_rule

    def backbone_io(self) -> BackboneIO:
        return BackboneIO("embedding", self.code_dim, self.num_codes)

    def loss(self, model: Denoiser, codes: Tensor, labels: Tensor, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        t = draws["t"]
        z_t = interpolate(draws["z0"], self.embed(codes), t)  # (B, d, h, w)
        return head_loss(model, z_t, t, labels, codes, self.z_loss)  # K logits per position

    def source_std(self, temperature: float) -> float:
        """The source is N(0, I) at every temperature."""
        return 1.0

    def predict(self, ctx: SampleContext, z: Tensor, t: float, *, final: bool = False) -> Prediction:
        """The posterior mean mu = pi @ C (B, d, h, w) at (z, t) and the mean entropy of pi; a final
        prediction also reads out the codes of the ``argmax`` / ``sample`` rules (the latter draws
        one uniform per position from ``ctx.noise``)."""
        argmax, sample = final and self.final_rule == "argmax", final and self.final_rule == "sample"
        post = head_readout(
            ctx.model,
            z,
            ctx.time(t),
            ctx.labels,
            grid=ctx.grid,
            cfg_scale=ctx.cfg_scale,
            temperature=ctx.temperature,
            num_codes=self.num_codes,
            codebook=self.codebook,
            argmax=argmax,
            uniforms=ctx.noise.rand(*ctx.grid) if sample else None,
        )
        codes = post.argmax if argmax else post.draw if sample else None
        return Prediction(post.mean, {"entropy": post.entropy.mean()}, codes)
