"""The metric registry: ``@register`` a ``Metric`` under its ``name`` (listed in ``eval.metrics``).

A metric maps the features of a generated image set (``MetricInputs``: features by layer, the
extractor, the reference, the labels the images were generated for) to named floats, exactly
its ``columns``; those names are the ``metrics.csv`` columns (``metric_columns``), in registration
order, so a new metric adds columns without changing the writer or the reports. A metric that
reads the reference's features (``needs_reference_features``) is NaN against a stats-only
reference (ADM's ``mu``/``sigma``).

Built-ins (torch-fidelity's functions with its defaults; features X of the generated set, Y of the
reference):

  fid             FID = ||mu_X - mu_Y||^2 + Tr(S_X + S_Y - 2 (S_X S_Y)^{1/2})
  kid             KID = unbiased MMD^2, k(x, y) = (x.y / D + 1)^3; mean/std over random subsets
  prc             precision = P_x(x in U_y B(y, r_3(y))); recall = P_y(y in U_x B(x, r_3(x)))
  isc             IS = exp E_x KL(p(c|x) || p(c)); mean/std over 10 splits
  class_accuracy  (1/N) sum_i [argmax_c logits_c(x_i) == y_i], if the extractor has a class layer
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from benchmarks.core.registry import Registry
from benchmarks.evaluation.extractors.registry import ExtractorSpec

if TYPE_CHECKING:
    from benchmarks.evaluation.fidelity import Reference


@dataclass
class MetricInputs:
    """What a metric sees. features: {layer: (N, D) float} of the generated images
    (``ExtractorSpec.layers``); labels: (N,) classes they were generated for, or None."""

    features: dict[str, Tensor]
    extractor: ExtractorSpec
    reference: Reference
    labels: object = None
    kid_subset_size: int | None = None
    kid_subsets: int = DEFAULTS["kid_subsets"]

    def of(self, purpose: str) -> Tensor:
        """Generated features for a torch-fidelity purpose (``fid``, ``kid``, ``prc``, ``isc``)."""
        return self.features[self.extractor.layer(purpose)]

    def reference_of(self, purpose: str) -> Tensor:
        """Reference features for a purpose (None-safe only if ``needs_reference_features``)."""
        return self.reference.features[self.extractor.layer(purpose)]


class Metric(ABC):
    """A registered metric. Subclasses set ``name`` and ``columns`` and implement ``compute``."""

    name: str
    columns: tuple[str, ...]
    """The names ``compute`` returns, in order: its ``metrics.csv`` columns."""
    needs_reference_features: bool = False
    """Reads the reference's features (not only its FID statistics): NaN for a stats-only reference."""

    @abstractmethod
    def compute(self, x: MetricInputs) -> dict[str, float]:
        """{column: value} for exactly ``columns``."""


REGISTRY: Registry[Metric] = Registry("metric", "eval.metrics", many=True)
register = REGISTRY.register
"""Class decorator (or call on an instance) adding a metric under its ``name``."""


def get_metric(name: str) -> Metric:
    return REGISTRY.get(name)


def metric_names() -> list[str]:
    return REGISTRY.names()


def selected(names: list[str] | None = None) -> list[Metric]:
    """The metrics ``names`` (None: every registered one), in registration order."""
    if names is None:
        return REGISTRY.entries()
    for name in names:
        REGISTRY.get(name)
    return [m for m in REGISTRY.entries() if m.name in names]


def metric_columns(names: list[str] | None = None) -> list[str]:
    """The result columns of the metrics ``names`` (None: every registered one), in registration order."""
    return [c for m in selected(names) for c in m.columns]


def evaluate(x: MetricInputs, names: list[str] | None = None) -> dict[str, float]:
    """{column: float} of the metrics ``names`` (None: all); ValueError if a metric returns other names."""
    out: dict[str, float] = {}
    for metric in selected(names):
        if metric.needs_reference_features and x.reference.features is None:
            values = dict.fromkeys(metric.columns, math.nan)
        else:
            values = metric.compute(x)
        if set(values) != set(metric.columns):
            raise ValueError(f"metric {metric.name!r} returned {sorted(values)}, declared {list(metric.columns)}")
        out.update({c: float(values[c]) for c in metric.columns})
    return out


# ---------------------------------------------------------------------------------------------
# Built-in metrics


def _same_dtype(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """torch-fidelity's FID asserts equal dtypes; promote (e.g. float32 mu vs ADM's float64)."""
    cast = {k: np.result_type(a[k], b[k]) for k in ("mu", "sigma")}
    return (
        {k: a[k].astype(t, copy=False) for k, t in cast.items()},
        {k: b[k].astype(t, copy=False) for k, t in cast.items()},
    )


@register
class FID(Metric):
    """Fréchet distance of Gaussian fits, against the reference's ``fid_stats`` (``mu``, ``sigma``)."""

    name = "fid"
    columns = ("fid",)

    def compute(self, x: MetricInputs) -> dict[str, float]:
        stats = fid_features_to_statistics(x.of("fid"))
        return {"fid": fid_statistics_to_metric(*_same_dtype(stats, x.reference.fid_stats), False)[KEY_METRIC_FID]}


@register
class KID(Metric):
    """Kernel inception distance over ``kid_subsets`` subsets of ``kid_subset_size`` (default
    min(1000, N_generated, N_reference)) from each side; one subset if both are the whole sets."""

    name = "kid"
    columns = ("kid_mean", "kid_std")
    needs_reference_features = True

    def compute(self, x: MetricInputs) -> dict[str, float]:
        gen, ref = x.of("kid"), x.reference_of("kid")
        subset = x.kid_subset_size or min(DEFAULTS["kid_subset_size"], len(gen), len(ref))
        if not 2 <= subset <= min(len(gen), len(ref)):
            raise ValueError(
                f"kid_subset_size={subset} must be in [2, min(generated={len(gen)}, reference={len(ref)})]"
            )
        kid = kid_features_to_metric(
            gen,
            ref,
            kid_subset_size=subset,
            verbose=False,
            kid_subsets=1 if subset == len(gen) == len(ref) else x.kid_subsets,
        )
        return {"kid_mean": kid[KEY_METRIC_KID_MEAN], "kid_std": kid[KEY_METRIC_KID_STD]}


@register
class PrecisionRecall(Metric):
    """Improved precision and recall with k = 3 nearest-neighbour balls."""

    name = "prc"
    columns = ("precision", "recall")
    needs_reference_features = True

    def compute(self, x: MetricInputs) -> dict[str, float]:
        prc = prc_features_to_metric(x.of("prc"), x.reference_of("prc"), save_cpu_ram=True, verbose=False)
        return {"precision": prc[KEY_METRIC_PRECISION], "recall": prc[KEY_METRIC_RECALL]}


@register
class InceptionScore(Metric):
    """Inception Score of the generated set's class probabilities (softmax of the IS layer)."""

    name = "isc"
    columns = ("isc", "isc_std")

    def compute(self, x: MetricInputs) -> dict[str, float]:
        isc = isc_features_to_metric(
            x.of("isc"), DEFAULTS["isc_splits"], DEFAULTS["samples_shuffle"], DEFAULTS["rng_seed"]
        )
        return {"isc": isc[KEY_METRIC_ISC_MEAN], "isc_std": isc[KEY_METRIC_ISC_STD]}


def class_accuracy(logits: Tensor, labels) -> float:
    """Fraction of images whose arg-max logit is their label: logits (N, C), labels (N,) in [0, C)."""
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != len(logits):
        raise ValueError(f"{len(labels)} labels for {len(logits)} images")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < logits.shape[1]:
        raise ValueError(
            f"labels must be class indices in [0, {logits.shape[1]}) of the extractor's logits, "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )
    return (logits.argmax(dim=1) == labels.to(logits.device)).double().mean().item()


@register
class ClassAccuracy(Metric):
    """Class accuracy of images generated for ``labels``; NaN without labels or without a class layer."""

    name = "class_accuracy"
    columns = ("class_accuracy",)

    def compute(self, x: MetricInputs) -> dict[str, float]:
        layer = x.extractor.class_layer
        ok = x.labels is not None and layer is not None
        return {"class_accuracy": class_accuracy(x.features[layer], x.labels) if ok else math.nan}
