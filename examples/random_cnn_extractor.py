"""An example feature-extractor plugin: ``random-cnn``, a fixed, randomly initialised CNN. Features
of a random network are a known training-free baseline for FID-style comparisons of small images,
for data no trained classifier here fits.

Network (uint8 images (N, C, H, W), C in {1, 3}, any size): x = channel mean scaled to [-1, 1],
resized to 32 x 32; conv 3x3 (1 -> 32), ReLU, average-pool 2, conv 3x3 (32 -> 64), ReLU, spatial
mean = ``pool`` (N, 64) for FID, KID and precision/recall; linear 64 -> 10 = ``logits`` for the
Inception Score. Its logits are no classes of any data set: ``class_layer`` is None (class
accuracy NaN). Weights w ~ N(0, 1 / fan_in), biases 0, from seed 0, drawn once and saved in the cache, so
results record their hash like any extractor's. Use it with

    python -m benchmarks.run --plugins examples.random_cnn_extractor --set eval.feature_extractor=random-cnn
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from benchmarks.core.config import BenchmarkConfig
from benchmarks.evaluation.extractors import ExtractorSpec, FeatureExtractor, register
from benchmarks.storage.atomic import built_once, save_torch
from benchmarks.storage.cache import cache_dir

NAME = "random-cnn"
VERSION = 1  # bump when the network or its initialisation changes: part of the cache path


class RandomCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.head = (
            nn.Conv2d(1, 32, 3, padding=1),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.Linear(64, 10),
        )

    def features(self, images: Tensor) -> Tensor:
        x = images.float().mean(1, keepdim=True) / 127.5 - 1
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        return F.relu(self.conv2(x)).mean((2, 3))


def random_cnn_weights() -> Path:
    """The seeded weights, drawn once and cached as ``<cache>/extractors/random-cnn-v<VERSION>/weights.pt``."""
    path = cache_dir("extractors", f"{NAME}-v{VERSION}") / "weights.pt"
    with built_once(path, path.exists) as from_cache:
        if not from_cache:
            net, generator = RandomCNN(), torch.Generator().manual_seed(0)
            state = {
                k: torch.randn(v.shape, generator=generator) / v[0].numel() ** 0.5
                if v.dim() > 1
                else torch.zeros(v.shape)
                for k, v in net.state_dict().items()
            }
            save_torch(state, path)
    return path


class FeatureExtractorRandomCNN(FeatureExtractorBase):
    """torch-fidelity's side: layers ``pool`` (FID/KID/PR) and ``logits`` (IS)."""

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs
    ):
        super().__init__(name, features_list)
        self.net = RandomCNN()
        self.net.load_state_dict(torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True))
        self.requires_grad_(False).eval()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        pool = self.net.features(x)
        out = {"pool": pool, "logits": self.net.head(pool)}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "pool", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "pool"

    @staticmethod
    def can_be_compiled() -> bool:
        return False


if NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(NAME, FeatureExtractorRandomCNN)


@register
class RandomCNNExtractor(FeatureExtractor):
    name = NAME

    def spec(self, cfg: BenchmarkConfig | None = None, weights: str | os.PathLike | None = None) -> ExtractorSpec:
        return self.from_file(weights or random_cnn_weights())
