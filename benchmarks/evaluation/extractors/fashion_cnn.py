"""``fashion-cnn``: the ``mnist-cnn`` architecture (``benchmarks.evaluation.mnist_cnn``) trained on
Fashion-MNIST's 60,000 train images on first use and cached under a content key; its accuracy on
the 10,000 test images is recorded in the cache's ``info.json``. FID features: the penultimate
layer; class accuracy: its 10 logits, the Fashion-MNIST labels."""

from __future__ import annotations

import os
from pathlib import Path

from torch_fidelity import register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from benchmarks.core.config import BenchmarkConfig
from benchmarks.data.datasets.fashion_mnist import DEFAULT_PATH, load_split
from benchmarks.evaluation.extractors.registry import ExtractorSpec, FeatureExtractor, register
from benchmarks.evaluation.mnist_cnn import FeatureExtractorMnistCNN, TrainConfig, classifier_weights

NAME = "fashion-cnn"
TRAIN = TrainConfig(epochs=4, batch_size=128, holdout_fraction=0.0, max_shift=0, widths=(32, 64, 128))
"""Test accuracy 0.912 after 169 s of training on 2 shared cores (docs/fashion.md)."""


@register
class FashionCNNExtractor(FeatureExtractor):
    name = NAME
    class_layer = "logits"

    def spec(self, cfg: BenchmarkConfig | None = None, weights: str | os.PathLike | None = None) -> ExtractorSpec:
        """From ``weights``, else trained on the Fashion-MNIST files of ``cfg.data.path`` (default
        the Debian folder)."""
        if weights:
            return self.from_file(weights)
        own = cfg is not None and cfg.data.dataset == "fashion-mnist" and cfg.data.path
        return self.from_file(fashion_cnn_weights(cfg.data.path if own else DEFAULT_PATH))


def fashion_cnn_weights(folder: str | os.PathLike = DEFAULT_PATH, config: TrainConfig = TRAIN) -> Path:
    """The classifier's weights file, trained on ``folder``'s train split (cached; see
    ``mnist_cnn.classifier_weights``), its test-split accuracy in ``info.json``."""
    return classifier_weights(NAME, *load_split(folder, "train"), config, test=load_split(folder, "test"))


if NAME not in FEATURE_EXTRACTORS_REGISTRY:  # a module reload must not register twice
    register_feature_extractor(NAME, FeatureExtractorMnistCNN)
