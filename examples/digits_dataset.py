"""An example data-set plugin: scikit-learn's offline handwritten digits (``load_digits``), 1797
images of 8x8 pixels with 17 grey levels, 10 classes, upsampled to 32x32.

Pixels v in {0..16} become uint8 round(255 v / 16); each pixel is repeated 4x4 (nearest-neighbour
upsampling), so the images have MNIST-5k's size and the ``mnist-cnn`` extractor reads them. No
download and no ``data.path``. Use it with

    python -m benchmarks.run --plugins examples.digits_dataset --set data.dataset=digits
"""

from __future__ import annotations

import numpy as np

from benchmarks.core.config import DataConfig
from benchmarks.data.datasets import ArrayDataSet, register


@register
class Digits(ArrayDataSet):
    name = "digits"
    image_size = 32
    num_classes = 10
    feature_extractor = "mnist-cnn"

    def arrays(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        grey = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
        images = grey.repeat(4, axis=1).repeat(4, axis=2)[:, None]  # (1797, 1, 32, 32)
        return images, digits.target.astype(np.int64)
