"""``mnist-cnn``: the offline digit classifier (``benchmarks.evaluation.mnist_cnn``), trained on
MNIST-5k on first use (about 17 s of CPU time on one core; 98% hold-out accuracy) and cached. Its
10 logits are the digits 0-9, the labels of MNIST-5k."""

from __future__ import annotations

import os

from benchmarks.core.config import BenchmarkConfig
from benchmarks.evaluation import mnist_cnn
from benchmarks.evaluation.extractors.registry import ExtractorSpec, FeatureExtractor, register


@register
class MnistCNNExtractor(FeatureExtractor):
    name = mnist_cnn.NAME
    class_layer = "logits"

    def spec(self, cfg: BenchmarkConfig | None = None, weights: str | os.PathLike | None = None) -> ExtractorSpec:
        return self.from_file(weights) if weights else mnist_extractor()


def mnist_extractor(config: mnist_cnn.TrainConfig | None = None) -> ExtractorSpec:
    """The classifier trained with ``config`` (default: ``mnist_cnn.TrainConfig()``; cached)."""
    return MnistCNNExtractor().from_file(mnist_cnn.mnist_cnn_weights(config or mnist_cnn.TrainConfig()))
