"""The feature-extractor registry: ``@register`` a ``FeatureExtractor`` under its ``name`` (the value
of ``eval.feature_extractor``; ``auto`` asks the data set, ``DataSet.feature_extractor``).

An entry names a network registered with torch-fidelity (``torch_fidelity.register_feature_extractor``,
same name), builds the ``ExtractorSpec`` a run evaluates with (``spec``: from a weights file, a
known location or a trained-once cache), and says which of its layers holds logits over the data
set's classes (``class_layer``; None: its logits are not the data set's classes, so class accuracy
is NaN).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.core.registry import Registry
from benchmarks.storage.cache import content_hash

if TYPE_CHECKING:
    from benchmarks.core.config import BenchmarkConfig

METRIC_PURPOSES = ("fid", "kid", "prc", "isc")
"""torch-fidelity's feature purposes; ``ExtractorSpec.layer(purpose)`` names the layer for each."""


@dataclass(frozen=True)
class ExtractorSpec:
    """A torch-fidelity feature extractor: its registry ``name``, its ``weights_path`` and ``key``,
    a content hash of the weights file. ``channels``: images are repeated to this many channels
    before extraction (Inception takes RGB only; ``None`` passes them unchanged). ``class_layer``:
    the layer whose columns are the data set's classes, or None."""

    name: str
    weights_path: str
    key: str
    channels: int | None = None
    class_layer: str | None = None

    @property
    def id(self) -> str:
        """What results record as the feature extractor, e.g. ``mnist-cnn:3f2a...``."""
        return f"{self.name}:{self.key}"

    def layer(self, purpose: str) -> str:
        """The extractor's feature layer for ``purpose`` in ``METRIC_PURPOSES``."""
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        return FEATURE_EXTRACTORS_REGISTRY[self.name].get_default_feature_layer_for_metric(purpose)

    @property
    def reference_layers(self) -> list[str]:
        """Layers the reference side needs (FID/KID/PR; IS looks at generated images only)."""
        return sorted({self.layer(m) for m in METRIC_PURPOSES if m != "isc"})

    @property
    def layers(self) -> list[str]:
        """Every layer the metrics read: the reference layers, the IS layer and the class layer."""
        return sorted({*self.reference_layers, self.layer("isc")} | ({self.class_layer} if self.class_layer else set()))


class FeatureExtractor(ABC):
    """A registered feature extractor. Subclasses set ``name`` (also its torch-fidelity name) and
    implement ``spec``."""

    name: str
    class_layer: str | None = None
    """The layer whose columns are the data set's classes (class accuracy), or None."""
    channels: int | None = None
    """Image channels the network takes (grey images are repeated to 3); None: any."""

    @abstractmethod
    def spec(self, cfg: BenchmarkConfig | None = None, weights: str | os.PathLike | None = None) -> ExtractorSpec:
        """The extractor for a run of ``cfg`` (None: no run, e.g. scoring image files), from the
        ``weights`` file if given, else the entry's default (a known location, a trained-once cache)."""

    def check(self, cfg: BenchmarkConfig) -> None:
        """Raise FileNotFoundError (one line naming the file and the fix) if ``spec(cfg)`` would miss a
        file it cannot make, before the run writes anything. Default: nothing to check."""
        return None

    def from_file(self, weights: str | os.PathLike) -> ExtractorSpec:
        """The spec of this extractor with the weights file ``weights`` (content-hashed for its id)."""
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        if self.name not in FEATURE_EXTRACTORS_REGISTRY:
            raise ValueError(f"feature extractor {self.name!r} is not registered with torch-fidelity")
        path = Path(weights)
        return ExtractorSpec(self.name, str(path), content_hash(path), self.channels, self.class_layer)


REGISTRY: Registry[FeatureExtractor] = Registry("feature extractor", "eval.feature_extractor", also=("auto",))
register = REGISTRY.register
"""Class decorator (or call on an instance) adding a feature extractor under its ``name``."""


def get_feature_extractor(name: str) -> FeatureExtractor:
    return REGISTRY.get(name)


def feature_extractor_names() -> list[str]:
    return REGISTRY.names()
