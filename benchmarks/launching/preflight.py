"""Checks of a run's inputs before anything is written to its folder.

A mistake in the data path, a tokenizer or shard file, or the launcher must stop the command at
once with a message naming the file and the fix, not after the manifest is written (or after
training). Each check here reads only metadata (folder listings, ``meta.json``, file headers),
so it costs milliseconds; the full reads happen, as before, when the latent space is prepared.
"""

from __future__ import annotations

import shutil

from benchmarks.core.config import BenchmarkConfig, ConfigError


def check_inputs(cfg: BenchmarkConfig) -> None:
    """Raise ConfigError naming the key, the file and the fix for the first missing input."""
    check_data(cfg)
    check_tokenizer(cfg)
    check_extractor(cfg)
    check_launcher(cfg)


def check_data(cfg: BenchmarkConfig) -> None:
    """The data set's own preflight (``DataSet.check``)."""
    from benchmarks.data.datasets import get_dataset

    get_dataset(cfg.data.dataset).check(cfg.data)


def check_tokenizer(cfg: BenchmarkConfig) -> None:
    """The tokenizer kind's own preflight (``TokenizerKind.check``)."""
    from benchmarks.data.tokenizers import get_tokenizer

    get_tokenizer(cfg.tokenizer.kind).check(cfg.tokenizer)


def check_extractor(cfg: BenchmarkConfig) -> None:
    """``eval.feature_extractor: auto`` names a registered extractor for this data set."""
    from benchmarks.data.datasets import get_dataset
    from benchmarks.evaluation.extractors import feature_extractor_names, get_feature_extractor

    default = get_dataset(cfg.data.dataset).feature_extractor
    if cfg.eval.enabled and cfg.eval.feature_extractor == "auto" and default not in feature_extractor_names():
        raise ConfigError(
            f"eval.feature_extractor: auto picks {default!r}, data set {cfg.data.dataset!r}'s default, "
            f"which is not registered (registered: {', '.join(feature_extractor_names())}): import its "
            "module with --plugins, or set eval.feature_extractor"
        )
    name = default if cfg.eval.feature_extractor == "auto" else cfg.eval.feature_extractor
    if cfg.eval.enabled:
        try:
            get_feature_extractor(name).check(cfg)
        except FileNotFoundError as e:
            raise ConfigError(f"eval.feature_extractor {name!r}: {e}") from None


def check_launcher(cfg: BenchmarkConfig) -> None:
    if cfg.launcher.kind == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "launcher.kind is 'slurm' but there is no sbatch command on this machine's PATH: run on a "
            "SLURM login node, or use --launcher local (this process) or submitit-local (subprocesses)"
        )
