"""Read benchmark run folders and merge them into one set of tidy tables.

A run folder (written by ``python -m benchmarks.run``) holds ``metrics.csv`` (one row per
evaluation cell), ``traces.csv`` (entropy along the sampler's t), ``manifest.json`` (resolved
config, per-job summaries), ``tokenizer_floor.json`` and ``<method>/seed<k>/train_log.csv``.
Only these files are read: no checkpoints, no torch.

Variants. Curves are identified by ``(backbone, variant)``. A method's *variant* is its name plus,
in brackets, the settings that tell its runs apart: its own options (``methods.<name>.*``, e.g.
``z_loss``) that differ between the merged runs holding the method, and the *recipe*: the shared
settings (``train.*``, ``data.*``, ``tokenizer.*``) that differ between the merged runs. Settings
that do not change what is trained are ignored: the seed (extra seeds come as extra folders),
iteration count, checkpoint/log cadence, device, compile, paths, the launcher and the ``eval``
section (evaluation settings are columns of every row). So two folders
``--set methods.purr.z_loss=0`` apart give the curves ``purr (z_loss=0)`` and
``purr (z_loss=1e-05)``; two folders that differ only in ``train.seed`` merge into one variant.
A recipe longer than ``RECIPE_LABEL_MAX`` characters is labelled ``recipe 1``, ``recipe 2``, ...
(report.md spells them out). Only variants with the same recipe are compared in speed-ups.

Duplicates. Within one ``(backbone, variant)`` a cell is identified by ``CELL_KEY`` (as in
``benchmarks.storage.results``). When two folders hold the same cell (the same job run twice), the row
of the folder given first is kept and the merge records a note (and warns); likewise for trace
points (``TRACE_KEY``) and for a ``(variant, seed)`` train log present in several folders.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmarks.storage.results import CELL_KEY, TRACE_KEY, MetricsFileError, key_text, read_rows
from benchmarks.storage.run_dir import MANIFEST, METRICS, TRACES, TRAIN_LOG, RunDir, parse_job_key

REQUIRED_METRICS = ["method", "seed", "step", "steps", "temperature", "cfg_scale", "fid"]
REQUIRED_TRACES = [c for c in TRACE_KEY if c != "sampler"] + ["entropy"]
EULER = "euler"
"""The default sampler: every trace of a ``traces.csv`` written before samplers were an evaluation
axis (such files have no ``sampler`` column) is Euler's, and the curves prefer it on ties."""
REQUIRED_TRAIN_LOG = ["step", "loss"]
FLOOR_TIMINGS = ["eval_wall_s"]
"""``tokenizer_floor.json`` keys that are timings; every other key (its metrics, whichever were
computed, and ``n_samples``, ``tokenizer``, ``feature_extractor``, ``ref_stats``) identifies a floor."""
FLOOR_KEYS = ["n_samples", "tokenizer", "feature_extractor", "ref_stats"]

# Config keys (flattened, dotted) that never define a variant.
IGNORED_PREFIXES = ("name", "description", "launcher.", "eval.", "backbone", "methods.")
IGNORED_KEYS = {
    "train.seed",
    "train.iterations",
    "train.checkpoint_every",
    "train.checkpoint_schedule",
    "train.num_checkpoints",
    "train.keep_checkpoints",
    "train.log_every",
    "train.device",
    "train.compile",
    "data.path",
    "data.reference",
    "tokenizer.ckpt",
}


class RunFolderError(ValueError):
    """A run folder or one of its files is missing or malformed; the message names it."""


class MergeWarning(UserWarning):
    """A note about merging run folders (duplicates dropped, a run without a config)."""


@dataclass
class Run:
    """The files of one run folder, as read."""

    path: Path
    name: str
    manifest: dict
    metrics: pd.DataFrame
    traces: pd.DataFrame
    train_logs: pd.DataFrame
    floor: dict | None
    diverged: dict[tuple[str, int], int] = field(default_factory=dict)
    """(method, seed) -> the step at which the job diverged (its last event), from the job events."""

    @property
    def config(self) -> dict:
        return self.manifest.get("config") or {}

    @property
    def backbone(self) -> str:
        return str(self.config.get("backbone", "unknown backbone"))

    def methods(self) -> list[str]:
        found = set(self.manifest.get("methods") or []) | set(self.metrics.get("method", []))
        found |= set(self.train_logs.get("method", []))
        return sorted(found)


@dataclass
class Results:
    """Merged tables of several runs. Every table has ``backbone``, ``variant`` and ``source``
    (index of the run folder in ``runs``) columns besides its own.

    - ``metrics``: metrics.csv rows.  - ``traces``: traces.csv rows.
    - ``train_logs``: train_log.csv rows plus ``method`` and ``seed``.
    - ``jobs``: one row per (backbone, variant, seed) from the manifests' ``jobs``
      (``params``, ``flops_per_step``, ``train_wall_s``, ``step``).
    - ``floors``: one row per distinct tokenizer floor with ``runs`` (names of the folders that hold it).
    - ``variants``: per (backbone, variant): ``method``, ``options`` and ``recipe`` (see ``Variant``),
      ``runs`` (names of the folders holding it).
    - ``labels``: (run index, method) -> variant.
    - ``notes``: human-readable merge notes (duplicates dropped, runs without a config, ...).
    """

    runs: list[Run]
    metrics: pd.DataFrame
    traces: pd.DataFrame
    train_logs: pd.DataFrame
    jobs: pd.DataFrame
    floors: pd.DataFrame
    variants: pd.DataFrame
    labels: dict[tuple[int, str], str] = field(default_factory=dict)
    """(run index, method) -> variant label."""
    notes: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    """One text per diverged job: which variant and seed, in which run, at which step."""

    def config(self, source: int) -> dict:
        return self.runs[source].config


# ----------------------------------------------------------------------------- reading one folder


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=required)
    try:
        read_rows(path)  # a damaged line is named (file and line number) and never re-typed
        frame = pd.read_csv(path)
    except MetricsFileError as e:
        raise RunFolderError(str(e)) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: not a readable CSV file ({e})") from None
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=required)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise RunFolderError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object")
    return data


def _read_train_logs(run: RunDir) -> pd.DataFrame:
    frames = []
    for job in run.jobs():
        log = _read_csv(job.train_log, REQUIRED_TRAIN_LOG)
        if log.empty:
            continue
        frames.append(log.assign(method=job.method, seed=job.seed))
    if not frames:
        return pd.DataFrame(columns=REQUIRED_TRAIN_LOG + ["method", "seed"])
    return pd.concat(frames, ignore_index=True)


def read_run(run_dir: str | Path) -> Run:
    """Read one run folder. Raises RunFolderError if it is not one (no manifest.json, metrics.csv
    or train logs) or if a file is malformed."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunFolderError(f"{path}: no such run folder")
    folder = RunDir(path)
    manifest = _read_json(folder.manifest) or {}
    metrics = _read_csv(folder.metrics, REQUIRED_METRICS)
    traces = _read_csv(folder.traces, REQUIRED_TRACES)
    if "sampler" not in traces.columns:
        traces = traces.assign(sampler=EULER)
    logs = _read_train_logs(folder)
    if not manifest and metrics.empty and logs.empty:
        raise RunFolderError(f"{path}: not a run folder (no {MANIFEST}, {METRICS} or a job's {TRAIN_LOG})")
    name = path.resolve().name
    return Run(
        path=path,
        name=name,
        manifest=manifest,
        metrics=_drop_repeated_cells(metrics, folder.metrics),
        traces=traces,
        train_logs=logs,
        floor=_read_json(folder.floor),
        diverged=_diverged_jobs(folder),
    )


def _diverged_jobs(folder: RunDir) -> dict[tuple[str, int], int]:
    """(method, seed) -> step of every job whose last start/done/diverged event is a divergence."""
    found = {}
    for job in folder.jobs():
        if not job.events.is_file():
            continue
        last = None
        for line in job.events.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(event, dict) and event.get("event") in ("start", "done", "diverged"):
                last = event
        if last is not None and last["event"] == "diverged":
            found[(job.method, job.seed)] = int(last.get("step") or 0)
    return found


def _drop_repeated_cells(metrics: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The rows of a run's ``metrics.csv`` with each cell once (the first line kept); a note names
    the file and the line of every repeated cell (a hand edit or a copied line)."""
    if metrics.empty:
        return metrics
    ident = _key_text(metrics, CELL_KEY)
    repeated = ident.duplicated(keep="first")
    first = {key: i for i, key in reversed(list(enumerate(ident)))}
    for i in metrics.index[repeated]:
        warnings.warn(
            f"{path} line {i + 2} repeats the cell of line {first[ident[i]] + 2} (kept); delete line {i + 2}",
            MergeWarning,
            stacklevel=3,
        )
    return metrics[~repeated].reset_index(drop=True)


# ----------------------------------------------------------------------------- variants


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {"a.b.c": value}; lists become tuples (hashable)."""
    out: dict[str, object] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = tuple(value) if isinstance(value, list) else value
    return out


def _recipe_settings(config: dict) -> dict[str, object]:
    """The shared settings of a config that define a variant (dotted keys; see module docstring)."""
    return {k: v for k, v in flatten(config).items() if not k.startswith(IGNORED_PREFIXES) and k not in IGNORED_KEYS}


def _option_settings(config: dict, method: str) -> dict[str, object]:
    """``methods.<method>.*`` of a config, keyed by the option name."""
    prefix = f"methods.{method}."
    return {k[len(prefix) :]: v for k, v in flatten(config).items() if k.startswith(prefix)}


def format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def _differences(settings: dict[int, dict]) -> dict[int, str]:
    """Per run: ``key=value, ...`` over the keys whose values differ between the runs (sorted keys;
    a key a run lacks reads ``default``)."""
    keys = sorted({k for s in settings.values() for k in s})
    differing = [k for k in keys if len({repr(s.get(k, "default")) for s in settings.values()}) > 1]
    return {i: ", ".join(f"{k}={format_value(s.get(k, 'default'))}" for k in differing) for i, s in settings.items()}


@dataclass(frozen=True)
class Variant:
    """One curve's identity. ``options``: its method options that differ between the runs holding
    the method (e.g. ``z_loss=0``); ``recipe``: the shared settings that differ between all the
    runs (``""`` when they agree). Variants compare at a matched budget iff their recipes agree."""

    label: str
    method: str
    options: str
    recipe: str


RECIPE_LABEL_MAX = 40
"""Longer recipe texts are shown in labels as ``recipe 1``, ``recipe 2``, ... (spelled out in report.md)."""


def variant_labels(runs: list[Run]) -> dict[tuple[int, str], Variant]:
    """(run index, method) -> its Variant. The label is the method name, plus in brackets its
    differing options and its recipe (or the recipe's short name). Runs without a saved config
    take the plain method name."""
    configured = [i for i, run in enumerate(runs) if run.config]
    recipes = _differences({i: _recipe_settings(runs[i].config) for i in configured})
    distinct = list(dict.fromkeys(recipes[i] for i in configured))
    short = {
        t: (t if all(len(u) <= RECIPE_LABEL_MAX for u in distinct) else f"recipe {n + 1}")
        for n, t in enumerate(distinct)
    }
    holders: dict[tuple[str, str], list[int]] = {}
    for i, run in enumerate(runs):
        for method in run.methods():
            holders.setdefault((run.backbone, method), []).append(i)
    out = {}
    for (_, method), indices in holders.items():
        options = _differences({i: _option_settings(runs[i].config, method) for i in indices if runs[i].config})
        for i in indices:
            parts = [p for p in (options.get(i, ""), short.get(recipes.get(i, ""), "")) if p]
            label = f"{method} ({', '.join(parts)})" if parts else method
            out[(i, method)] = Variant(label, method, options.get(i, ""), recipes.get(i, ""))
    return out


# ----------------------------------------------------------------------------- merging


def _label(frame: pd.DataFrame, run: Run, source: int, labels: dict) -> pd.DataFrame:
    if frame.empty:
        return frame.assign(
            backbone=pd.Series(dtype=object), variant=pd.Series(dtype=object), source=pd.Series(dtype=int)
        )
    variants = [labels[(source, m)].label if (source, m) in labels else str(m) for m in frame["method"]]
    # metrics rows carry their own backbone; the config's is the fallback
    backbone = frame["backbone"].astype(str) if "backbone" in frame.columns else run.backbone
    return frame.assign(backbone=backbone, variant=variants, source=source)


def _key_text(frame: pd.DataFrame, key: list[str]) -> pd.Series:
    """A string identity per row (``benchmarks.storage.results.key_text`` of each key column)."""
    cols = [c for c in key if c in frame.columns]
    if not len(frame):
        return pd.Series(dtype=str)
    return frame[cols].astype(object).apply(lambda col: col.map(key_text)).agg("|".join, axis=1)


def _dedupe(frame: pd.DataFrame, key: list[str], what: str, runs: list[Run], notes: list[str]) -> pd.DataFrame:
    """Keep the first row (lowest ``source``) of every (backbone, variant, *key) and note the rest,
    saying whether the dropped rows' values differ from the kept ones."""
    if frame.empty:
        return frame.reset_index(drop=True)
    frame = frame.sort_values("source", kind="stable").reset_index(drop=True)
    ident = _key_text(frame, ["backbone", "variant", *key])
    dup = ident.duplicated(keep="first")
    if dup.any():
        value = "fid" if "fid" in frame.columns else "entropy"
        kept = frame[~dup].set_index(ident[~dup])
        for (variant, seed, source), rows in frame[dup].groupby(["variant", "seed", "source"], sort=True):
            originals = kept.loc[ident[rows.index]]
            same = rows[value].reset_index(drop=True).equals(originals[value].reset_index(drop=True))
            origin = ", ".join(sorted({runs[int(s)].name for s in originals["source"]}))
            notes.append(
                f"{what}: {len(rows)} row(s) of {variant} seed {seed} in run '{runs[int(source)].name}' "
                f"duplicate rows of run '{origin}' (given first), which were kept"
                + ("" if same else f"; their {value} values differ")
            )
    return frame[~dup].reset_index(drop=True)


def _jobs_table(runs: list[Run], labels: dict, notes: list[str]) -> pd.DataFrame:
    rows = []
    for i, run in enumerate(runs):
        for key, job in sorted((run.manifest.get("jobs") or {}).items()):
            parsed = parse_job_key(key)
            if parsed is None or not isinstance(job, dict):
                notes.append(f"run '{run.name}': manifest job entry {key!r} not understood, ignored")
                continue
            method, seed = parsed
            variant = labels[(i, method)].label if (i, method) in labels else method
            rows.append(
                {
                    "backbone": run.backbone,
                    "variant": variant,
                    "method": method,
                    "seed": seed,
                    "source": i,
                    **{k: job.get(k) for k in ("step", "params", "flops_per_step", "train_wall_s")},
                }
            )
    columns = ["backbone", "variant", "method", "seed", "source", "step", "params", "flops_per_step", "train_wall_s"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.drop_duplicates(["backbone", "variant", "seed"], keep="first").reset_index(drop=True)


def _floors_table(runs: list[Run]) -> pd.DataFrame:
    """Distinct tokenizer floors (by their metrics, not timings), each with the runs holding it."""
    found: dict[str, dict] = {}
    for run in runs:
        if not run.floor:
            continue
        floor = {k: v for k, v in run.floor.items() if k not in FLOOR_TIMINGS}
        identity = json.dumps(floor, sort_keys=True)
        entry = found.setdefault(identity, {**floor, "runs": [], "backbones": set()})
        entry["runs"].append(run.name)
        entry["backbones"].add(run.backbone)
    rows = [{**e, "runs": ", ".join(e["runs"]), "backbones": ", ".join(sorted(e["backbones"]))} for e in found.values()]
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in FLOOR_KEYS + ["runs", "backbones"]]
    return pd.DataFrame(rows, columns=keys + FLOOR_KEYS + ["runs", "backbones"])


JOB = ["backbone", "variant", "seed"]


def _job_owners(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per job (backbone, variant, seed): ``owner``, the first given folder holding any row of it."""
    held = [f[JOB + ["source"]] for f in frames if not f.empty]
    if not held:
        return pd.DataFrame(columns=JOB + ["owner"])
    return pd.concat(held, ignore_index=True).groupby(JOB)["source"].min().rename("owner").reset_index()


def _one_source_per_job(
    frame: pd.DataFrame, owners: pd.DataFrame, what: str, runs: list[Run], notes: list[str]
) -> pd.DataFrame:
    """Drop a job's rows that come from another folder than its owner's (cells only a later folder
    has, e.g. steps past the first folder's), so a job's loss and FID curves come from one run."""
    if frame.empty or owners.empty:
        return frame
    owner = frame[JOB].merge(owners, on=JOB, how="left")["owner"].to_numpy()
    other = frame["source"].to_numpy() != owner
    for (variant, seed, source), rows in frame[other].groupby(["variant", "seed", "source"], sort=True):
        kept = runs[int(owner[rows.index[0]])].name
        notes.append(
            f"{what}: {len(rows)} row(s) of {variant} seed {seed} only in run '{runs[int(source)].name}' "
            f"(steps {int(rows['step'].min())}-{int(rows['step'].max())}) dropped: the job's curves all come "
            f"from run '{kept}' (given first); give the other folder first to use its rows"
        )
    return frame[~other].reset_index(drop=True)


def merge_runs(runs: list[Run]) -> Results:
    """Merge read runs (see the module docstring for variants and duplicates)."""
    notes: list[str] = []
    names = [r.name for r in runs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        notes.append(f"several run folders are named '{name}'; notes name folders by their base name")
    for run in runs:
        if not run.config:
            notes.append(f"run '{run.name}': no config in {MANIFEST}; its curves are labelled by method name only")
    labels = variant_labels(runs)

    def concat(attr: str) -> pd.DataFrame:
        frames = [_label(getattr(run, attr), run, i, labels) for i, run in enumerate(runs)]
        frames = [f for f in frames if not f.empty]
        return pd.concat(frames, ignore_index=True) if frames else _label(getattr(runs[0], attr), runs[0], 0, labels)

    metrics, traces, logs = concat("metrics"), concat("traces"), concat("train_logs")
    owners = _job_owners([metrics, traces, logs])
    metrics = _dedupe(metrics, CELL_KEY, METRICS, runs, notes)
    traces = _dedupe(traces, TRACE_KEY, TRACES, runs, notes)
    if not logs.empty:
        first = logs.groupby(["backbone", "variant", "seed"])["source"].transform("min")
        for (variant, seed), rows in logs[logs["source"] != first].groupby(["variant", "seed"], sort=True):
            notes.append(
                f"{TRAIN_LOG}: duplicate log of {variant} seed {seed} in run(s) "
                f"{', '.join(sorted({repr(runs[int(s)].name) for s in rows['source']}))}; kept run "
                f"'{runs[int(first[rows.index[0]])].name}' (given first)"
            )
        logs = logs[logs["source"] == first].reset_index(drop=True)
    metrics = _one_source_per_job(metrics, owners, METRICS, runs, notes)
    traces = _one_source_per_job(traces, owners, TRACES, runs, notes)
    held: dict[tuple[str, str], dict] = {}
    for (i, method), v in sorted(labels.items()):
        entry = held.setdefault(
            (runs[i].backbone, v.label), {"method": method, "options": v.options, "recipe": v.recipe, "runs": []}
        )
        entry["runs"].append(runs[i].name)
    variants = pd.DataFrame(
        [
            {"backbone": b, "variant": v, **{k: (", ".join(e[k]) if k == "runs" else e[k]) for k in e}}
            for (b, v), e in sorted(held.items())
        ],
        columns=["backbone", "variant", "method", "options", "recipe", "runs"],
    )
    for note in notes:
        warnings.warn(note, MergeWarning, stacklevel=3)
    return Results(
        runs=runs,
        metrics=metrics,
        traces=traces,
        train_logs=logs,
        jobs=_jobs_table(runs, labels, notes),
        floors=_floors_table(runs),
        variants=variants,
        labels={k: v.label for k, v in labels.items()},
        notes=notes,
        diverged=_diverged_texts(runs, labels),
    )


def _diverged_texts(runs: list[Run], labels: dict) -> list[str]:
    texts = []
    for i, run in enumerate(runs):
        for (method, seed), step in sorted(run.diverged.items()):
            variant = labels[(i, method)].label if (i, method) in labels else method
            texts.append(f"{variant} seed {seed} in run '{run.name}' diverged at step {step:,}")
    for text in texts:
        warnings.warn(text, MergeWarning, stacklevel=3)
    return texts


def load_runs(run_dirs: list[str | Path]) -> Results:
    """Read and merge run folders (the first given wins on duplicates)."""
    if not run_dirs:
        raise RunFolderError("no run folders given")
    return merge_runs([read_run(d) for d in run_dirs])
