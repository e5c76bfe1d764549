"""CFM-endpoint (``cfm-endpoint``): continuous flow matching that regresses the endpoint.

Same path, source-noise temperature and final quantisation as ``cfm``; the backbone predicts
``z1`` (loss ``MSE(out, z1)``), CFG acts on that prediction, and the sampling velocity is
``v = (out - z) / (1 - t)``, taken in closed form ``z <- z + (h / (1 - t)) (out - z)`` so the
last step (h = 1 - t) lands exactly on ``out``.
"""

from __future__ import annotations

from torch import Tensor

from methods.cfm import ContinuousFlow
from methods.registry import register


@register
class EndpointFlow(ContinuousFlow):
    name = "cfm-endpoint"
    temperature_meaning = "source-noise scale: z0 ~ N(0, tau^2 I)"
    prediction = "endpoint"

    def target(self, z0: Tensor, z1: Tensor) -> Tensor:
        """Regression target: the clean embedding z1."""
        return z1
