"""Stage 3, evaluation and metrics: sampling checkpoints into images, feature extractors and
reference statistics, and the torch-fidelity metrics. Feature extractors and metrics are
registries (``benchmarks.evaluation.extractors``, ``benchmarks.evaluation.metrics``)."""
