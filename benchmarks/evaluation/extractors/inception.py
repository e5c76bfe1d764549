"""``inception-v3-compat``: torch-fidelity's TF-FID Inception-v3 (pool features, D = 2048) from a
local weights file; nothing downloads at run time.

Its 1008 logits follow TensorFlow's 2015 label map (a background class, the 1000 ImageNet synsets
in that map's own order, 7 unused), which does not match the class indices of an image folder or
code shards (sorted folder names): no class layer, so class accuracy is NaN.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from benchmarks.core.config import BenchmarkConfig
from benchmarks.evaluation.extractors.registry import ExtractorSpec, FeatureExtractor, register

INCEPTION = "inception-v3-compat"
INCEPTION_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
INCEPTION_ENV = "VQFLOW_INCEPTION_WEIGHTS"


@register
class InceptionExtractor(FeatureExtractor):
    name = INCEPTION
    channels = 3

    def spec(self, cfg: BenchmarkConfig | None = None, weights: str | os.PathLike | None = None) -> ExtractorSpec:
        """From ``weights``, else ``eval.inception_weights`` of ``cfg`` (see ``inception_extractor``)."""
        return inception_extractor(weights or (cfg.eval.inception_weights if cfg is not None else None))

    def check(self, cfg: BenchmarkConfig) -> None:
        inception_weights_file(cfg.eval.inception_weights)


def inception_extractor(weights_path: str | os.PathLike | None = None) -> ExtractorSpec:
    """torch-fidelity's ``inception-v3-compat`` (the TF-FID Inception) from a local weights file.

    The file is ``weights_path``, else ``$VQFLOW_INCEPTION_WEIGHTS``, else torch-fidelity's download
    location in the torch hub cache. Nothing is downloaded: a missing file is a FileNotFoundError
    that names the file and where to get it.
    """
    return InceptionExtractor().from_file(inception_weights_file(weights_path))


def inception_weights_file(weights_path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file ``inception_extractor`` reads; FileNotFoundError if it is missing."""
    hub_copy = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    given = weights_path or os.environ.get(INCEPTION_ENV)
    if given is not None and not Path(given).is_file():
        raise FileNotFoundError(f"Inception weights file {given} does not exist. {_inception_help()}")
    if given is None and not hub_copy.is_file():
        raise FileNotFoundError(
            f"Inception weights not found: no path given, ${INCEPTION_ENV} is unset and "
            f"{hub_copy} does not exist. {_inception_help()}"
        )
    return Path(given or hub_copy)


def _inception_help() -> str:
    return (
        f"torch-fidelity's {INCEPTION!r} extractor needs {INCEPTION_FILE}: download it on a machine with "
        f"internet from {URL_INCEPTION_V3} and pass its path (eval.inception_weights=/path/to/{INCEPTION_FILE}, "
        f"or {INCEPTION_ENV}=/path/to/{INCEPTION_FILE})."
    )
