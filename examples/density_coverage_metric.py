"""An example metric plugin: density and coverage (Naeem et al., ICML 2020), fidelity and
diversity measures that, unlike precision and recall, are robust to outliers in the reference.

With generated features x_i (i = 1..M), reference features y_j (j = 1..N) and r_j the distance
from y_j to its k-th nearest other reference feature (k = 5):

    density  = 1/(k M) sum_i sum_j [ ||x_i - y_j|| <= r_j ]
    coverage = 1/N sum_j [ min_i ||x_i - y_j|| <= r_j ]

on the extractor's FID layer. Density is about 1 for generated features distributed like the
reference (it can exceed 1); coverage is in [0, 1]. Use it with

    python -m benchmarks.run --plugins examples.density_coverage_metric

(every registered metric is computed unless ``eval.metrics`` lists some); ``density`` and
``coverage`` become columns of ``metrics.csv``.
"""

from __future__ import annotations

import torch

from benchmarks.evaluation.metrics import Metric, MetricInputs, register

K = 5
CHUNK = 1024  # rows of a distance matrix computed at once (1024 x 50k doubles = 400 MB)


@register
class DensityCoverage(Metric):
    name = "density_coverage"
    columns = ("density", "coverage")
    needs_reference_features = True

    def compute(self, x: MetricInputs) -> dict[str, float]:
        gen, ref = x.of("fid").double(), x.reference_of("fid").double()
        radii = torch.cat(
            [
                torch.cdist(ref[i : i + CHUNK], ref).kthvalue(K + 1, dim=1).values  # +1: itself
                for i in range(0, len(ref), CHUNK)
            ]
        )
        inside = torch.zeros(len(ref), dtype=torch.double)
        covered = torch.zeros(len(ref), dtype=torch.bool)
        for i in range(0, len(gen), CHUNK):
            hit = torch.cdist(gen[i : i + CHUNK], ref) <= radii
            inside += hit.sum(0)
            covered |= hit.any(0)
        return {"density": (inside.sum() / (K * len(gen))).item(), "coverage": covered.double().mean().item()}
