"""Benchmark configs: YAML files in ``benchmarks/configs/`` loaded into typed dataclasses.

A config is the matched budget every method shares (data, tokenizer, backbone, ``train``,
``eval``) plus a ``methods`` section with the method-specific options only. Unknown keys,
wrong types and method options that try to change the shared budget are errors naming the key.
Command-line overrides use dotted keys: ``--set train.iterations=200 methods.purr.z_loss=0``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from backbones.dit import parse_backbone_name
from backbones.tokenizers.vqvae import VQVAEConfig
from benchmarks.core.registry import registry_errors

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config problem; the message names the offending key."""


@dataclass
class DataConfig:
    dataset: str = "mnist5k"
    """A registered data set (``benchmarks.data.datasets``): ``mnist5k`` (offline default),
    ``imagefolder`` (``path`` = ROOT/<class>/<image>), ``shards`` (``path`` = a folder written by
    ``python -m benchmarks.encode``), or a plugin's."""
    path: str | None = None
    image_size: int = 32
    num_classes: int | None = None
    """Classes in the data; needed by ``--dry-run`` for datasets it does not read (checked at train time)."""
    reference: str | None = None
    """Evaluation reference: None = the data set's (``DataSet.reference``: its test split if it has
    one, e.g. Fashion-MNIST, else the training images); or an image folder, or an ADM-style ``.npz``."""


@dataclass
class TokenizerConfig:
    kind: str = "vqvae"
    """A registered tokenizer (``benchmarks.data.tokenizers``): ``vqvae`` (trained by the suite on
    the data) or a pretrained kind read from ``ckpt``: ``vq-f8``, ``llamagen-vq8``,
    ``llamagen-vq16``, ``taming-f16``."""
    ckpt: str | None = None
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)


LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    """The shared training budget, identical for every method (docs/methods.md, "One budget for every method")."""

    iterations: int = 1000
    batch_size: int = 64
    """Global batch; with data parallelism each rank takes batch_size / world_size."""
    lr: float = 1e-4
    """Peak learning rate; see ``lr_schedule`` and ``warmup``."""
    lr_schedule: str = "constant"
    """After warmup: ``constant``, or ``cosine`` / ``linear`` decay from ``lr`` to 0 at ``iterations``."""
    warmup: int = 0
    """Steps of linear warmup from lr / warmup to ``lr``."""
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    seed: int = 0
    """Seed of the first run; ``--seeds N`` runs seed, seed + 1, ..., seed + N - 1."""
    checkpoint_every: int = 500
    """Checkpoints (and evaluations) every this many steps, and at the last step; with the ``log``
    schedule, the first checkpoint."""
    checkpoint_schedule: str = "every"
    """``every`` (every ``checkpoint_every`` steps) or ``log``: ``num_checkpoints`` checkpoints evenly
    spaced in log-iterations from ``checkpoint_every`` to ``iterations`` (see ``checkpoint_steps``)."""
    num_checkpoints: int = 10
    """Checkpoints of the ``log`` schedule, the first and the last included."""
    keep_checkpoints: int = 1
    log_every: int = 10
    device: str = "auto"
    """``auto`` (CUDA if present, else CPU), ``cpu`` or ``cuda``."""
    compile: bool = False

    def checkpoint_steps(self) -> list[int]:
        """The scheduled (evaluated) checkpoints, increasing; the last is ``iterations``.

        ``every``: c, 2c, 3c, ... (c = ``checkpoint_every``) and ``iterations``. ``log``: with
        N = ``num_checkpoints``, s_k = c * (iterations / c) ** (k / (N - 1)) for k = 0 .. N - 1,
        rounded to the nearest multiple of ``log_every`` (so each has a log row), the last exactly
        ``iterations``. E.g. c = 160, iterations = 5120, N = 11: 160, 230, 320, 450, 640, 910,
        1280, 1810, 2560, 3620, 5120 (ratio 2^0.5 apart; 1/4 and 1/2 of the budget are checkpoints)."""
        if self.checkpoint_schedule == "log":
            c, n = self.checkpoint_every, self.num_checkpoints
            spaced = (c * (self.iterations / c) ** (k / (n - 1)) for k in range(n - 1))
            steps = [round(s / self.log_every) * self.log_every for s in spaced]
            return sorted(set(steps) | {self.iterations})
        steps = list(range(self.checkpoint_every, self.iterations + 1, self.checkpoint_every))
        return steps if steps and steps[-1] == self.iterations else steps + [self.iterations]

    def is_checkpoint_step(self, step: int) -> bool:
        """Whether ``step`` is in ``checkpoint_steps()`` (or past the last)."""
        if step >= self.iterations:
            return True
        if self.checkpoint_schedule == "log":
            return step in self.checkpoint_steps()
        return step % self.checkpoint_every == 0


@dataclass
class EvalCell:
    """One evaluation setting of a sampler."""

    steps: int = 100
    temperature: float | None = None
    """None = the method's default (``eval.temperature``)."""
    cfg_scale: float = 1.0
    at: str = "every"
    """``every`` checkpoint or only the ``last`` one."""
    num_samples: int | None = None
    """None = ``eval.num_samples``."""
    sampler: str = "euler"
    """A sampler spec: a registered sampler's name, optionally with parameters, e.g. ``heun``,
    ``dopri5:rtol=1e-4,atol=1e-4`` or ``maskgit:choice_temperature=2`` (docs/samplers.md)."""
    methods: list[str] | None = None
    """Only these methods evaluate the cell (None: every method), e.g. ``[dfm]`` for ``maskgit``."""


@dataclass
class EvalConfig:
    enabled: bool = True
    num_samples: int = 1000
    batch_size: int = 250
    decode_batch_size: int = 32
    """Code grids the tokenizer decodes at once (bounds the decoder's activation memory: the full
    ``vq-f8`` decoder needs about 0.2 GB per 256 px image in float32)."""
    feature_extractor: str = "auto"
    """``auto`` (the data set's default extractor) or a registered one
    (``benchmarks.evaluation.extractors``: ``mnist-cnn``, ``inception-v3-compat``, a plugin's)."""
    metrics: list[str] | None = None
    """Registered metrics to compute (``benchmarks.evaluation.metrics``); None = every one."""
    inception_weights: str | None = None
    """Local Inception-v3 weights file (or set VQFLOW_INCEPTION_WEIGHTS)."""
    kid_subsets: int = 100
    cells: list[EvalCell] = field(default_factory=lambda: [EvalCell()])
    temperatures: list[float] = field(default_factory=list)
    """The temperature sweep (run with ``sweep_steps`` at the last checkpoint)."""
    sweep_steps: int = 50
    sweep_sampler: str = "euler"
    """The sampler spec of the temperature sweep (every method must support it)."""
    sweep_at: int | None = None
    """Step of the checkpoint the sweep runs at (None = the last one)."""
    sweep_samples: int | None = None
    """Samples per sweep cell (None = ``eval.num_samples``)."""
    method_temperature: dict[str, float] = field(default_factory=dict)
    """Per-method default temperature for the cells (e.g. ``purr: 0.9``); others use 1.0."""
    grid_samples: int = 64
    """Images in each PNG sample grid."""


@dataclass
class LauncherConfig:
    kind: str = "local"
    partition: str | None = None
    gpus_per_job: int = 0
    nodes: int = 1
    """Nodes per job (SLURM): a job runs ``nodes x max(gpus_per_job, 1)`` DDP ranks, one per GPU
    (one per node on CPUs); ``train.batch_size`` must divide by that world size."""
    cpus_per_task: int = 2
    mem_gb: float = 8
    timeout_min: int = 60
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_num_timeout: int = 3
    signal_delay_s: int = 300
    """SLURM sends the preemption signal this long before the time limit: enough to finish the
    steps up to the next preemption check and write a checkpoint (about 12 GB at DiT-XL/2) to the
    shared filesystem. ``--dry-run`` prints the checkpoint size and its write time."""
    preemption_check_every: int = 10
    """With several ranks, training steps between checks for a preemption notice (a collective)."""


@dataclass
class BenchmarkConfig:
    name: str = "unnamed"
    description: str = ""
    backbone: str = "mini/1"
    """A DiT preset and patch size, e.g. ``DiT-XL/2`` or ``mini/1``."""
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)

    def to_dict(self) -> dict:
        return asdict(self)


SHARED_SECTIONS = ("data", "tokenizer", "train", "eval", "backbone")


# ----------------------------------------------------------------------------- building


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (recursively), converting ints to floats
    and lists to tuples where the annotation asks for them."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def build(cls, data: dict, prefix: str = ""):
    """Instantiate dataclass ``cls`` from a mapping; unknown keys raise ConfigError naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'; valid keys"
            f"{' of ' + prefix if prefix else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        f"unknown config {name_or_path!r}; available: {', '.join(available_configs())} (or a path to a .yaml file)"
    )


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested mapping in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(name_or_path: str = "default", overrides: list[str] = ()) -> BenchmarkConfig:
    """Load a config by name (``benchmarks/configs/NAME.yaml``) or path, apply ``--set`` overrides,
    and validate it (including each method section against its plugin's options)."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    data.setdefault("name", path.stem)
    for assignment in overrides:
        apply_override(data, assignment)
    cfg = build(BenchmarkConfig, data)
    validate(cfg)
    return cfg


def from_dict(data: dict) -> BenchmarkConfig:
    """Rebuild a resolved config (e.g. from a checkpoint or manifest)."""
    cfg = build(BenchmarkConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: BenchmarkConfig) -> None:
    from methods import get_method

    try:
        parse_backbone_name(cfg.backbone)
    except ValueError as e:
        raise ConfigError(f"backbone: {e}") from None
    shared = {f.name for f in fields(TrainConfig)} | {f.name for f in fields(BenchmarkConfig)}
    for name, options in cfg.methods.items():
        try:
            cls = get_method(name)
        except KeyError as e:
            raise ConfigError(f"methods.{name}: {e.args[0]}") from None
        if not isinstance(options, dict):
            raise ConfigError(f"methods.{name}: expected a mapping of options, got {options!r}")
        for key in options:
            if key in shared:
                raise ConfigError(
                    f"methods.{name}.{key}: {key!r} is a shared budget key; every method "
                    f"must use the same value, set it once in the shared section instead"
                )
            if key not in cls.option_names():
                raise ConfigError(
                    f"methods.{name}.{key}: unknown option for method {name!r}; "
                    f"valid options: {', '.join(cls.option_names()) or '(none)'}"
                )
    t = cfg.train
    for ok, message in value_checks(cfg):
        if not ok:
            raise ConfigError(message)
    for message in registry_errors(cfg):
        raise ConfigError(message)
    for message in sampler_errors(cfg):
        raise ConfigError(message)
    if t.checkpoint_schedule == "log":
        _check_log_schedule(t)
    sweep_at = cfg.eval.sweep_at
    if sweep_at is not None and not (1 <= sweep_at <= t.iterations and t.is_checkpoint_step(sweep_at)):
        steps = (
            t.checkpoint_steps()
            if t.checkpoint_schedule == "log"
            else range(t.checkpoint_every, t.iterations + 1, t.checkpoint_every)
        )
        raise ConfigError(
            f"eval.sweep_at={sweep_at} is not a checkpoint step (train.checkpoint_schedule="
            f"{t.checkpoint_schedule}: {', '.join(map(str, steps[:8]))}{' ...' if len(steps) > 8 else ''})"
        )


def _check_log_schedule(t: TrainConfig) -> None:
    """The ``log`` schedule needs room for ``num_checkpoints`` distinct multiples of ``log_every``."""
    if t.num_checkpoints < 2:
        raise ConfigError(f"train.num_checkpoints must be >= 2 for the log schedule, got {t.num_checkpoints}")
    if t.checkpoint_every >= t.iterations:
        raise ConfigError(
            f"train.checkpoint_every ({t.checkpoint_every}) is the log schedule's first checkpoint "
            f"and must be below train.iterations ({t.iterations})"
        )
    steps = t.checkpoint_steps()
    if len(steps) < t.num_checkpoints:
        raise ConfigError(
            f"train.num_checkpoints={t.num_checkpoints}: only {len(steps)} distinct multiples of "
            f"train.log_every={t.log_every} fit log-spaced between train.checkpoint_every="
            f"{t.checkpoint_every} and train.iterations={t.iterations} ({steps}); lower "
            "num_checkpoints or log_every, or raise iterations"
        )


def value_checks(cfg: BenchmarkConfig) -> list[tuple[bool, str]]:
    """(holds, message naming the key and the valid range) for every value range of a config,
    so a bad value stops the run at load time rather than after training."""
    t, ev, launcher = cfg.train, cfg.eval, cfg.launcher
    taus = (
        [("eval.temperatures", tau) for tau in ev.temperatures]
        + [(f"eval.cells[{i}].temperature", c.temperature) for i, c in enumerate(ev.cells) if c.temperature is not None]
        + [(f"eval.method_temperature.{m}", tau) for m, tau in ev.method_temperature.items()]
    )
    samples = [("eval.num_samples", ev.num_samples), ("eval.sweep_samples", ev.sweep_samples)] + [
        (f"eval.cells[{i}].num_samples", c.num_samples) for i, c in enumerate(ev.cells)
    ]
    ranks = max(launcher.gpus_per_job, 1) * max(launcher.nodes, 1)
    return [
        (t.iterations >= 1, "train.iterations must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (
            t.batch_size % ranks == 0,
            f"train.batch_size={t.batch_size} must be divisible by the world size {ranks} = "
            f"launcher.nodes={launcher.nodes} x launcher.gpus_per_job={launcher.gpus_per_job} "
            "(one equal share per rank; 0 GPUs: one rank per node)",
        ),
        (t.lr > 0 and math.isfinite(t.lr), f"train.lr must be a finite number > 0, got {t.lr}"),
        (
            t.lr_schedule in LR_SCHEDULES,
            f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {t.lr_schedule!r}",
        ),
        (0 <= t.warmup < t.iterations, "train.warmup must be in [0, train.iterations)"),
        (all(0 <= b < 1 for b in t.betas), f"train.betas must be in [0, 1), got {list(t.betas)}"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (t.grad_clip > 0, "train.grad_clip must be > 0"),
        (0 <= t.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
        (0 <= t.label_dropout < 1, "train.label_dropout must be in [0, 1)"),
        (t.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
        (t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
        (t.log_every >= 1, "train.log_every must be >= 1"),
        (t.checkpoint_every % t.log_every == 0, "train.checkpoint_every must be a multiple of train.log_every"),
        (
            t.checkpoint_schedule in ("every", "log"),
            f"train.checkpoint_schedule must be every or log, got {t.checkpoint_schedule!r}",
        ),
        (t.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {t.device!r}"),
        (cfg.data.image_size >= 1, "data.image_size must be >= 1"),
        (all(c.at in ("every", "last") for c in ev.cells), "eval.cells[].at must be 'every' or 'last'"),
        *[
            (tau > 0 and math.isfinite(tau), f"{key} must be > 0 (a sampling temperature), got {tau}")
            for key, tau in taus
        ],
        *[(c.steps >= 1, f"eval.cells[{i}].steps must be >= 1, got {c.steps}") for i, c in enumerate(ev.cells)],
        *[
            (
                c.cfg_scale >= 0 and math.isfinite(c.cfg_scale),
                f"eval.cells[{i}].cfg_scale must be >= 0, got {c.cfg_scale}",
            )
            for i, c in enumerate(ev.cells)
        ],
        (ev.sweep_steps >= 1, f"eval.sweep_steps must be >= 1, got {ev.sweep_steps}"),
        *[(n is None or n >= 10, f"{key} must be >= 10, got {n}") for key, n in samples],
        (ev.batch_size >= 1, "eval.batch_size must be >= 1"),
        (ev.decode_batch_size >= 1, "eval.decode_batch_size must be >= 1"),
        (ev.kid_subsets >= 1, "eval.kid_subsets must be >= 1"),
        (ev.grid_samples >= 1, "eval.grid_samples must be >= 1"),
        (
            ev.metrics is None or len(ev.metrics) >= 1,
            "eval.metrics must name at least one metric, or be null for every registered metric",
        ),
        (
            launcher.kind in ("local", "submitit-local", "slurm"),
            f"launcher.kind must be local, submitit-local or slurm, got {launcher.kind!r}",
        ),
        (launcher.gpus_per_job >= 0, "launcher.gpus_per_job must be >= 0"),
        (launcher.nodes >= 1, "launcher.nodes must be >= 1"),
        (launcher.cpus_per_task >= 1, "launcher.cpus_per_task must be >= 1"),
        (launcher.timeout_min >= 1, "launcher.timeout_min must be >= 1"),
        (launcher.signal_delay_s >= 1, "launcher.signal_delay_s must be >= 1"),
        (launcher.preemption_check_every >= 1, "launcher.preemption_check_every must be >= 1"),
    ]


def method_options(cfg: BenchmarkConfig, method: str) -> dict[str, Any]:
    return dict(cfg.methods.get(method, {}))


def sampler_errors(cfg: BenchmarkConfig, methods: list[str] | None = None) -> list[str]:
    """Problems with the sampler specs of the evaluation cells and the sweep: an unknown sampler or
    a bad parameter, or a method that does not support its cell's sampler (naming the method and
    its choices). ``methods``: the methods that will run (default: the config's ``methods``)."""
    from methods import get_method
    from methods.sampling import build_sampler

    chosen = list(methods if methods is not None else cfg.methods)
    specs = [(f"eval.cells[{i}].sampler", c.sampler, c.methods) for i, c in enumerate(cfg.eval.cells)]
    specs.append(("eval.sweep_sampler", cfg.eval.sweep_sampler, None))
    problems = []
    for key, spec, only in specs:
        try:
            sampler = build_sampler(spec)
        except (KeyError, ValueError) as e:
            problems.append(f"{key}: {e.args[0] if e.args else e}")
            continue
        for name in only if only is not None else chosen:
            try:
                cls = get_method(name)
            except KeyError as e:
                problems.append(f"{key.rsplit('.', 1)[0]}.methods: {e.args[0]}")
                continue
            if not sampler.supports(cls):
                cell = key.rsplit(".", 1)[0]
                limit = f" (name the cell's methods in {cell}.methods)" if only is None and "cells" in key else ""
                problems.append(
                    f"{key}: method {name!r} has no sampler {spec!r}; its samplers: "
                    f"{', '.join(cls.supported_samplers())}{limit}"
                )
    return problems
