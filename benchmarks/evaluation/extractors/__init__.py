"""Feature extractors: the registry (``benchmarks.evaluation.extractors.registry``) and the built-in
entries, one module each; importing this package registers them. A new extractor is one module
with ``@register`` (here, or a plugin module given to ``--plugins``)."""

from benchmarks.evaluation.extractors import fashion_cnn, inception, mnist_cnn  # noqa: F401  (built-ins register)
from benchmarks.evaluation.extractors.registry import (
    REGISTRY,
    ExtractorSpec,
    FeatureExtractor,
    feature_extractor_names,
    get_feature_extractor,
    register,
)

__all__ = [
    "ExtractorSpec",
    "FeatureExtractor",
    "feature_extractor_names",
    "get_feature_extractor",
    "register",
    "REGISTRY",
]
