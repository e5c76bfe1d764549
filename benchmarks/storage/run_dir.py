"""The run folder: its layout (every file and folder name, how checkpoints and sample grids are
named, listed and read back) and which config changes a folder accepts. Every module that
writes or reads a run folder asks this one; no other module spells these names.

    <run>/                                      RunDir(path)
      manifest.json                             .manifest: resolved config, methods, seeds, versions, machine,
                                                latent-space info, per-job summaries and timings, launches,
                                                run_dir_layout (benchmarks.storage.manifest)
      metrics.csv                               .metrics: one row per evaluation cell (benchmarks.storage.results)
      traces.csv                                .traces: mean entropy along the sampler's t per cell
      tokenizer_floor.json                      .floor: the tokenizer's reconstruction metrics (the floor)
      <method>/seed<k>/                         .job(method, k) -> JobDir; .jobs() lists the existing ones
        checkpoints/step_<9 digits>.pt          .checkpoints_dir, .checkpoint(step), .checkpoints(), .newest_step()
        weights/step_<9 digits>.pt              .weights_dir, .weights(step), .weight_files(): EMA weights alone
                                                (``python -m benchmarks.export_weights``), kept where checkpoints aren't
        train_log.csv                           .train_log: per-interval training statistics
        job_events.jsonl                        .events: one JSON line per start, requeue, finish, divergence
        job.lock                                .lock: held (flock) by the process running the job
      samples/<method>/seed<k>/                 JobDir.samples_dir
        step<9 digits>_<cell tag>.png           .grid(step, tag): a sample grid per (checkpoint, cell)
        step<9 digits>_<cell tag>.grid.json     its sidecar (``write_sidecar``): what the grid shows, how it is tiled
      tensorboard/<method>-seed<k>/             JobDir.tensorboard: event files (``--tensorboard``)
      submitit/                                 .submitit: submitit's pickles and logs of the jobs
      report/report.md, report/figures/         .report, .report_file (``reports.build_report``)

Layout versions: the manifest's ``run_dir_layout``. Absent (version 1): folders written before
sample grids had sidecars, read by ``legacy_grids``; 2: every grid has a sidecar. ``python -m
benchmarks.run`` records the version in a new folder's manifest (``new_folder_entry``); a
continued older folder keeps its version.

A sidecar (JSON, written atomically after its PNG, so a sidecar means a complete grid)::

    {"image": "step000000040_steps8_tau0.9_cfg1_n100.png", "method": "purr", "seed": 0, "step": 40,
     "cell": {"sampler": "euler", "steps": 8, "temperature": 0.9, "cfg_scale": 1.0, "n_samples": 100},
     "tile": 32, "padding": 2, "rows": 7, "columns": 10, "labels": [0, 1, ..., 9, 0, ...]}

``tile``: pixels of each (square) image, ``padding``: pixels between and around them, ``labels``:
the class of each tile in reading order (sample i of a cell has label i mod num_classes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.storage.atomic import save_json
from benchmarks.storage.results import read_rows

LAYOUT_KEY = "run_dir_layout"
LAYOUT_VERSION = 2
"""The layout this code writes (see the module docstring)."""

MANIFEST = "manifest.json"
METRICS = "metrics.csv"
TRACES = "traces.csv"
FLOOR = "tokenizer_floor.json"
TRAIN_LOG = "train_log.csv"
EVENTS = "job_events.jsonl"
LOCK = "job.lock"
CHECKPOINTS = "checkpoints"
WEIGHTS = "weights"
CHECKPOINT_PREFIX, CHECKPOINT_SUFFIX = "step_", ".pt"
SEED_PREFIX = "seed"
SAMPLES = "samples"
GRID_SUFFIX = ".png"
SIDECAR_SUFFIX = ".grid.json"
TENSORBOARD = "tensorboard"
SUBMITIT = "submitit"
REPORT = "report"
REPORT_FILE = "report.md"
FILE_NAMES = (MANIFEST, METRICS, TRACES, FLOOR, TRAIN_LOG, EVENTS, LOCK, CHECKPOINT_PREFIX, SIDECAR_SUFFIX, REPORT_FILE)
"""The names that only this module may spell in code (a test checks every other module)."""
GRID_PADDING = 2
"""Pixels between and around the tiles of the sample grids the evaluator writes."""


def checkpoint_step(path: str | Path) -> int:
    """The training step of a checkpoint file ``step_<step:09d>.pt``."""
    return int(Path(path).name[len(CHECKPOINT_PREFIX) : -len(CHECKPOINT_SUFFIX)])


def _seed(folder_name: str) -> int | None:
    """k of a job's folder name ``seed<k>`` (None for any other name)."""
    digits = folder_name[len(SEED_PREFIX) :]
    return int(digits) if folder_name.startswith(SEED_PREFIX) and digits.isdigit() else None


def parse_job_key(key: str) -> tuple[str, int] | None:
    """(method, seed) of a job key ``<method>/seed<k>`` (``JobDir.key``; the manifest's ``jobs``), else None."""
    method, _, folder = key.rpartition("/")
    seed = _seed(folder)
    return (method, seed) if method and seed is not None else None


def layout_version(manifest: dict) -> int:
    """The layout of the folder holding ``manifest`` (1 when it records none)."""
    return int(manifest.get(LAYOUT_KEY, 1))


def new_folder_entry(manifest: dict) -> dict:
    """What ``python -m benchmarks.run`` merges into the manifest it found: the current layout
    version for a new folder (no manifest yet), nothing for an existing one, which keeps the
    version its earlier files were written in."""
    return {} if manifest else {LAYOUT_KEY: LAYOUT_VERSION}


@dataclass(frozen=True)
class RunDir:
    """A run folder (see the module docstring); nothing is created until written."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def traces(self) -> Path:
        return self.path / TRACES

    @property
    def floor(self) -> Path:
        return self.path / FLOOR

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def submitit(self) -> Path:
        return self.path / SUBMITIT

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def report_file(self) -> Path:
        return self.report / REPORT_FILE

    def job(self, method: str, seed: int) -> JobDir:
        return JobDir(self, method, seed)

    def jobs(self) -> list[JobDir]:
        """The existing job folders ``<method>/seed<k>/``, sorted by path."""
        folders = sorted(p for p in self.path.glob(f"*/{SEED_PREFIX}*") if p.is_dir())
        return [self.job(p.parent.name, seed) for p in folders if (seed := _seed(p.name)) is not None]

    def trained_steps(self) -> dict[str, int]:
        """The newest checkpoint step of every job that has one, by ``JobDir.key``."""
        return {job.key: step for job in self.jobs() if (step := job.newest_step())}

    def grids(self, method: str, manifest: dict) -> list[SampleGrid]:
        """The sample grids of ``method`` (every seed), sorted by path: from their sidecars, or in a
        folder of layout 1 (``manifest`` is the folder's) from ``legacy_grids``."""
        if layout_version(manifest) < 2:
            return legacy_grids(self, method, manifest)
        sidecars = self.samples.joinpath(method).glob(f"{SEED_PREFIX}*/*{SIDECAR_SUFFIX}")
        return [read_sidecar(path) for path in sorted(sidecars)]

    def accept_config(self, manifest: dict, config: dict) -> list[str]:
        """Whether this folder, holding the run of ``manifest``, may go on with ``config`` (a
        ``BenchmarkConfig.to_dict()``): returns notes on the changes, or raises
        ConfigChangeRefused. Results of different configs never mix in one folder; allowed are the
        changes that cannot mix them: anything while the folder holds no trained step and no
        result (a failed start), ``eval.*`` once every job finished training (new cells are new
        rows of ``metrics.csv``) or while no cell is evaluated yet (an evaluation that failed, e.g.
        for missing extractor weights, is corrected on the trained steps), and a larger
        ``train.iterations`` (the jobs continue from their
        newest checkpoint; only with ``train.lr_schedule: constant``, since a decaying schedule is
        a function of the budget). Where the jobs run (the ``launcher`` section) may always change."""
        saved = manifest.get("config")
        if saved is None:
            return []
        current = json.loads(json.dumps(config))  # as the manifest stores it (tuples become lists)
        changes = [c for c in config_changes(saved, current) if not c[0].startswith("launcher.")]
        if not changes:
            return []
        trained = self.trained_steps()
        if not trained and not read_rows(self.metrics)[1]:
            return [f"{self.path} holds no trained step yet; its config is replaced"]
        budget = saved.get("train", {}).get("iterations", 0)
        jobs = [self.job(m, s).key for m in manifest.get("methods", []) for s in manifest.get("seeds", [])]
        done = all(trained.get(j, 0) >= budget for j in jobs) or not read_rows(self.metrics)[1]
        refused = refused_changes(changes, saved, training_done=done)
        if refused:
            raise ConfigChangeRefused(
                f"{self.path} holds a run with a different config ({'; '.join(refused[:5])}); a run may change "
                "only eval.* settings once its training is done or before its first evaluated cell, "
                "and raise train.iterations"
            )
        return [f"{key} changes from {old!r} to {new!r} in {self.path}" for key, old, new in changes]


@dataclass(frozen=True)
class JobDir:
    """The folder of one (method, seed) job, and where its sample grids and event files go."""

    run: RunDir
    method: str
    seed: int

    @property
    def key(self) -> str:
        """``<method>/seed<k>``: the folder relative to the run, and the job's key in the manifest."""
        return f"{self.method}/{SEED_PREFIX}{self.seed}"

    @property
    def path(self) -> Path:
        return self.run.path / self.key

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:09d}{CHECKPOINT_SUFFIX}"

    def checkpoints(self) -> list[Path]:
        """The job's checkpoints, oldest first (not ``*.corrupt`` ones, nor temporary files)."""
        return sorted(self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}"))

    @property
    def weights_dir(self) -> Path:
        return self.path / WEIGHTS

    def weights(self, step: int) -> Path:
        """The EMA weights exported from the checkpoint of ``step`` (same file name, other folder)."""
        return self.weights_dir / self.checkpoint(step).name

    def weight_files(self) -> list[Path]:
        """The job's exported EMA weights, oldest first."""
        return sorted(self.weights_dir.glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}"))

    def newest_step(self) -> int:
        """The step of the newest checkpoint (0 if there is none)."""
        checkpoints = self.checkpoints()
        return checkpoint_step(checkpoints[-1]) if checkpoints else 0

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def events(self) -> Path:
        return self.path / EVENTS

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def tensorboard(self) -> Path:
        return self.run.tensorboard / f"{self.method}-{SEED_PREFIX}{self.seed}"

    @property
    def samples_dir(self) -> Path:
        return self.run.samples / self.key

    def grid(self, step: int, tag: str) -> Path:
        """The PNG of the sample grid of the cell named ``tag`` at checkpoint ``step``."""
        return self.samples_dir / f"{_grid_prefix(step)}{tag}{GRID_SUFFIX}"

    def grids_at(self, step: int) -> dict[str, Path]:
        """The sample-grid PNGs of checkpoint ``step`` by cell tag, sorted."""
        prefix = _grid_prefix(step)
        paths = sorted(self.samples_dir.glob(f"{prefix}*{GRID_SUFFIX}"))
        return {p.name[len(prefix) : -len(GRID_SUFFIX)]: p for p in paths}


def _grid_prefix(step: int) -> str:
    return f"step{step:09d}_"


# ----------------------------------------------------------------------------- config changes


class ConfigChangeRefused(ValueError):
    """A run folder refuses a config (``RunDir.accept_config``); the message lists the refused changes."""


def config_changes(saved: dict, current: dict, prefix: str = "") -> Iterator[tuple[str, object, object]]:
    """(dotted key, value in the run, value now) for every key that differs."""
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def refused_changes(changes: list[tuple[str, object, object]], saved: dict, *, training_done: bool) -> list[str]:
    """The ``changes`` (``config_changes``) a folder holding results of config ``saved`` refuses,
    as texts (see ``RunDir.accept_config``)."""
    schedule = saved.get("train", {}).get("lr_schedule", "constant")

    def allowed(key, old, new) -> bool:
        if key == "train.iterations":  # a decaying learning rate is a function of the budget: no extension
            return isinstance(old, int) and new > old and schedule == "constant"
        return key.startswith("eval.") and training_done

    refused = [f"{key}: {old!r} in the run, {new!r} now" for key, old, new in changes if not allowed(key, old, new)]
    if schedule != "constant" and any(key == "train.iterations" for key, _, _ in changes):
        refused.append(
            f"train.lr_schedule={schedule} decays over train.iterations, so a longer budget would "
            "change the learning rate of steps already trained"
        )
    return refused


# ----------------------------------------------------------------------------- sample grids


@dataclass(frozen=True)
class GridLayout:
    """How a sample-grid PNG is tiled: ``shown`` images of ``tile`` x ``tile`` pixels in reading
    order, ``columns`` per row over ``rows`` rows, ``padding`` pixels between and around them (as
    torchvision's ``make_grid`` tiles them); ``labels``: the class of each image, where known."""

    tile: int
    padding: int
    rows: int
    columns: int
    shown: int
    labels: tuple[int, ...] | None

    @classmethod
    def tiled(cls, labels: list[int], per_row: int, tile: int, padding: int = GRID_PADDING) -> GridLayout:
        """The layout of ``make_grid(images, nrow=per_row, padding=padding)`` for images of these labels."""
        columns = min(per_row, len(labels))
        return cls(tile, padding, -(-len(labels) // columns), columns, len(labels), tuple(labels))

    @property
    def full_rows(self) -> int:
        """The rows filled with images (every row when not even the first is full)."""
        return min(self.rows, self.shown // self.columns) or self.rows

    @property
    def full_height(self) -> int:
        """Pixels from the top of the grid to the end of its full rows (padding included)."""
        return self.full_rows * (self.tile + self.padding) + self.padding

    def column_labels(self) -> list[str] | None:
        """The class of each column when the images of every column in the full rows share one, else None."""
        if self.labels is None:
            return None
        full = self.labels[: self.full_rows * self.columns]
        classes = [set(full[c :: self.columns]) for c in range(self.columns)]
        return [str(next(iter(c))) for c in classes] if all(len(c) == 1 for c in classes) else None

    def column_centres(self) -> list[float]:
        """The x pixel coordinate of the middle of each column."""
        return [self.padding + k * (self.tile + self.padding) + (self.tile - 1) / 2 for k in range(self.columns)]


@dataclass(frozen=True)
class SampleGrid:
    """One sample-grid PNG (``path``): whose samples, of which evaluation cell, and how they are
    tiled (``layout``; None where unknown: shown whole)."""

    path: Path
    method: str
    seed: int
    step: int
    sampler: str | None
    steps: int
    temperature: float
    cfg_scale: float
    n_samples: int | None
    layout: GridLayout | None


def sidecar_path(grid: Path) -> Path:
    """The sidecar of the sample-grid PNG ``grid``: beside it, ``<name>.grid.json``."""
    return grid.with_name(grid.name[: -len(GRID_SUFFIX)] + SIDECAR_SUFFIX)


def write_sidecar(grid: SampleGrid) -> Path:
    """Atomically write the sidecar of ``grid`` (whose PNG is written; its layout known); returns its path."""
    layout = grid.layout
    record = {
        "image": grid.path.name,
        "method": grid.method,
        "seed": grid.seed,
        "step": grid.step,
        "cell": {
            "sampler": grid.sampler,
            "steps": grid.steps,
            "temperature": grid.temperature,
            "cfg_scale": grid.cfg_scale,
            "n_samples": grid.n_samples,
        },
        "tile": layout.tile,
        "padding": layout.padding,
        "rows": layout.rows,
        "columns": layout.columns,
        "labels": list(layout.labels),
    }
    path = sidecar_path(grid.path)
    save_json(record, path)
    return path


def read_sidecar(path: Path) -> SampleGrid:
    """The sample grid a sidecar describes; ValueError naming the file if it is not one."""
    try:
        record = json.loads(path.read_text())
        cell, labels = record["cell"], tuple(record["labels"])
        layout = GridLayout(record["tile"], record["padding"], record["rows"], record["columns"], len(labels), labels)
        return SampleGrid(
            path.parent / record["image"],
            record["method"],
            record["seed"],
            record["step"],
            cell["sampler"],
            cell["steps"],
            cell["temperature"],
            cell["cfg_scale"],
            cell["n_samples"],
            layout,
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a sample-grid sidecar ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- layout 1 (legacy)

LEGACY_GRID_NAME = re.compile(
    r"^step(?P<step>\d+)_steps(?P<steps>\d+)_tau(?P<temperature>[^_]+)"
    r"_cfg(?P<cfg_scale>[^_]+)(?:_n(?P<n_samples>\d+))?\.png$"
)
LEGACY_PADDING = 2
"""The padding of grids written before sidecars (torchvision ``make_grid(padding=2)``)."""


def legacy_grids(run: RunDir, method: str, manifest: dict) -> list[SampleGrid]:
    """LEGACY READING, for folders of layout 1 (no sidecars; the committed ``results/`` folders).
    A grid's cell is read back from its file name (``LEGACY_GRID_NAME``; the sampler is not
    recorded) and its tiling inferred from its pixel size: images of the config's
    ``data.image_size`` pixels, ``LEGACY_PADDING`` apart, ``min(eval.grid_samples, n)`` of them,
    image i of class i mod ``latents.num_classes``. A PNG whose size does not fit that gets no
    layout (it is shown whole)."""
    from PIL import Image

    config = manifest.get("config") or {}
    data = config.get("data") or {}
    classes = (manifest.get("latents") or {}).get("num_classes") or data.get("num_classes")
    grid_samples = int((config.get("eval") or {}).get("grid_samples", 64))
    found = []
    for path in sorted(run.samples.joinpath(method).glob(f"{SEED_PREFIX}*/*{GRID_SUFFIX}")):
        match, seed = LEGACY_GRID_NAME.match(path.name), _seed(path.parent.name)
        if not match or seed is None:
            continue
        try:
            tau, cfg = float(match["temperature"]), float(match["cfg_scale"])
        except ValueError:
            continue
        n = int(match["n_samples"]) if match["n_samples"] else None
        shown = min(grid_samples, n) if n else grid_samples
        with Image.open(path) as image:
            width, height = image.size
        layout = _legacy_layout(width, height, int(data.get("image_size", 0)), shown, classes)
        found.append(SampleGrid(path, method, seed, int(match["step"]), None, int(match["steps"]), tau, cfg, n, layout))
    return found


def _legacy_layout(width: int, height: int, tile: int, shown: int, classes: int | None) -> GridLayout | None:
    """``legacy_grids``' layout of a PNG of ``width`` x ``height`` pixels, None if it does not fit."""
    step = tile + LEGACY_PADDING
    columns, rows = (width - LEGACY_PADDING) // step, (height - LEGACY_PADDING) // step
    if columns < 1 or columns * step + LEGACY_PADDING != width or rows * step + LEGACY_PADDING != height:
        return None
    labels = tuple(i % int(classes) for i in range(shown)) if classes else None
    return GridLayout(tile, LEGACY_PADDING, rows, columns, shown, labels)
