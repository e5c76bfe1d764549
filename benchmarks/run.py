"""``python -m benchmarks.run``: train every method at a matched budget, evaluate, report.

    python -m benchmarks.run --methods purr,cfm,dfm                 # the offline MNIST benchmark
    python -m benchmarks.run --config smoke --out runs/smoke         # CI-sized
    python -m benchmarks.run --list                                  # methods and configs
    python -m benchmarks.run --resume --out runs/default             # continue a stopped run
    python -m benchmarks.run --config smoke --launcher slurm --set launcher.partition=gpu --wait

Rerunning a command on an existing run folder continues it (finished jobs and evaluation cells
are skipped). Exit status 2 for bad input (unknown method, config or key).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from backbones.tokenizers.safe_pickle import NotACheckpointError, UnsafeCheckpointError
from benchmarks.core import logs
from benchmarks.core.config import (
    BenchmarkConfig,
    ConfigError,
    available_configs,
    from_dict,
    load_config,
    sampler_errors,
)
from benchmarks.core.distributed import DistEnv
from benchmarks.data.images import ImageFileError
from benchmarks.launching.launch import JobBusyError
from benchmarks.storage.manifest import (
    add_timings,
    git_commit,
    machine_info,
    now_iso,
    package_versions,
    read_manifest,
    update_manifest,
)
from benchmarks.storage.results import MetricsFileError, final_rows, read_metrics
from benchmarks.storage.run_dir import MANIFEST, METRICS, ConfigChangeRefused, RunDir, new_folder_entry

SUMMARY_EXTRA = ("class_accuracy",)
"""metrics.csv columns the final summary shows besides FID, where the run has them."""
SUMMARY_NAMES = {"fid": "final FID", "class_accuracy": "class accuracy"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--methods", help="comma-separated method names (default: the config's methods section)")
    p.add_argument("--config", default=None, help="config name in benchmarks/configs or a YAML path (default: default)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds: train.seed, train.seed + 1, ...")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.iterations=200 methods.purr.z_loss=0",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out with its saved config (error if there is none)"
    )
    p.add_argument(
        "--plugins",
        default="",
        help="comma-separated modules to import that register extra methods, "
        "data sets, tokenizers, feature extractors or metrics",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="print the registered methods, data sets, tokenizers, feature "
        "extractors and metrics, and the available configs",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars: only the plain stage lines (for log files)"
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write losses, grad norms, learning rate, FIDs and sample grids as TensorBoard "
        "event files to RUN/tensorboard/ (needs: pip install -e '.[tensorboard]')",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the job plan, parameter counts, FLOPs and GPU-hours; read no data, train nothing",
    )
    p.add_argument(
        "--gpu-peak-tflops",
        type=float,
        default=989.0,
        help="GPU peak for --dry-run's GPU-hours (default: 989, H100 SXM dense bf16)",
    )
    p.add_argument(
        "--utilisation",
        type=float,
        default=0.25,
        help="assumed model FLOP utilisation for --dry-run where no step time is measured "
        "(default: 0.25, a reading of DiT-XL/2's step without torch.compile)",
    )
    p.add_argument(
        "--step-seconds",
        type=float,
        default=None,
        metavar="S",
        help="--dry-run: measured seconds per training step of the global batch on launcher.gpus_per_job "
        "GPUs (e.g. from python -m benchmarks.gpu_check); replaces --utilisation for training",
    )
    p.add_argument(
        "--step-seconds-from",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help=f"--dry-run: take each method's seconds per step from a previous run's {MANIFEST} "
        "(same backbone and global batch)",
    )
    p.add_argument(
        "--launcher",
        choices=("local", "submitit-local", "slurm"),
        default=None,
        help="where jobs run (default: the config's launcher.kind); resources: --set launcher.partition=... "
        "launcher.gpus_per_job=... launcher.timeout_min=... (see LauncherConfig)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="submitit launchers: follow the submitted jobs until they finish, then build the report",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long (the jobs keep running; default 48 h)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def fail(message: str) -> NoReturn:  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def import_plugins(spec: str) -> None:
    for module in filter(None, (m.strip() for m in spec.split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            fail(f"--plugins: cannot import {module!r}: {e}")


def print_listing() -> None:
    from methods import get_method, method_names

    print("methods:")
    for name in method_names():
        cls = get_method(name)
        options = ", ".join(cls.option_names()) or "no options"
        print(f"  {name:<14} ({options}); temperature: {cls.temperature_meaning}")
        print(f"  {'':<14} samplers: {', '.join(cls.supported_samplers())}")
    from benchmarks.data.datasets import dataset_names, get_dataset
    from benchmarks.data.tokenizers import get_tokenizer, tokenizer_names
    from benchmarks.evaluation.extractors import feature_extractor_names, get_feature_extractor
    from benchmarks.evaluation.metrics import get_metric, metric_names

    print("data sets (data.dataset):")
    for name in dataset_names():
        ds = get_dataset(name)
        print(
            f"  {name:<14} data.path: {ds.path or 'not used'}"
            + (f" (default {ds.default_path})" if ds.default_path else "")
            + f"; auto extractor: {ds.feature_extractor}"
            + ("; pre-encoded code shards" if ds.encoded else "")
        )
    print("tokenizers (tokenizer.kind):")
    for name in tokenizer_names():
        print(f"  {name:<14} tokenizer.ckpt {'required' if get_tokenizer(name).needs_ckpt else 'optional'}")
    print("feature extractors (eval.feature_extractor; auto: the data set's):")
    for name in feature_extractor_names():
        layer = get_feature_extractor(name).class_layer
        print(f"  {name:<20} class logits: {layer or 'none (class accuracy is NaN)'}")
    print("metrics (eval.metrics; default: all) and the columns they add to every results row:")
    for name in metric_names():
        print(f"  {name:<14} {', '.join(get_metric(name).columns)}")
    print("configs:")
    for name in available_configs():
        print(f"  {name}")


def resolve_config(args: argparse.Namespace) -> tuple[BenchmarkConfig, Path]:
    if args.resume:
        if args.out is None:
            fail("--resume needs --out RUN_DIR (the run to continue)")
        saved = read_manifest(args.out).get("config")
        if saved is None:
            fail(f"--resume: {args.out} holds no run (no {MANIFEST} with a config)")
        if args.config or args.overrides:
            fail("--resume continues with the run's saved config; do not pass --config or --set")
        return from_dict(saved), args.out
    cfg = load_config(args.config or "default", args.overrides)
    return cfg, args.out or Path("runs") / cfg.name


def parse_methods(spec: str, registered: list[str]) -> list[str]:
    """The names of ``--methods a,b``: each registered, none empty, none twice."""
    names = [m.strip() for m in spec.split(",")]
    if "" in names:
        fail(
            f"--methods {spec!r} has an empty method name; give comma-separated names, e.g. --methods purr,cfm "
            f"(registered methods: {', '.join(registered)})"
        )
    unknown = [m for m in names if m not in registered]
    if unknown:
        fail(f"unknown method {unknown[0]!r}; registered methods: {', '.join(registered)}")
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        fail(f"--methods names {twice[0]!r} twice; give each method once")
    return names


def check_config_change(run_dir: Path, cfg: BenchmarkConfig, manifest: dict) -> None:
    """Exit 2 if the run folder refuses ``cfg`` (the rules: ``RunDir.accept_config``), else print
    its notes on what changes."""
    try:
        notes = RunDir(run_dir).accept_config(manifest, cfg.to_dict())
    except ConfigChangeRefused as e:
        fail(f"{e}: use another --out, or --resume to continue it as it was")
    for note in notes if DistEnv.from_environment().is_main else ():  # torchrun: once, from rank 0
        print(f"note: {note}", file=sys.stderr)


def check_results_files(run_dir: Path) -> None:
    """Exit 2 naming the file and line if ``metrics.csv`` or ``traces.csv`` has a damaged line
    (found now, not after the next checkpoint's training)."""
    from benchmarks.storage.results import read_rows

    folder = RunDir(run_dir)
    for path in (folder.metrics, folder.traces):
        try:
            read_rows(path)
        except MetricsFileError as e:
            fail(str(e))


def check_disk_room(cfg: BenchmarkConfig, methods: list[str], seeds: list[int], run_dir: Path) -> None:
    """Exit 2 with the estimate if the run's outputs cannot fit the free disk under ``run_dir``."""
    from benchmarks.launching.plan import disk_room_error

    try:
        error = disk_room_error(cfg, methods, seeds, run_dir)
    except ValueError:  # no class count to size the backbone without data: not estimated
        return
    if error:
        fail(error)


def check_cache() -> None:
    """Exit 2 if the project cache is empty and cannot be written (every entry would have to be built)."""
    from benchmarks.storage.cache import cache_root
    from benchmarks.storage.writable import unwritable_reason

    root = cache_root()
    reason = unwritable_reason(root)
    if reason is not None and not (root.is_dir() and any(root.iterdir())):
        fail(
            f"the project cache {root} is empty and cannot be written ({reason}): set VQFLOW_CACHE to a writable folder"
        )


def os_error_exit(error: OSError, run_dir: Path) -> int:
    """One line for a full disk (exit 1: rerun to continue) or a read-only project cache (exit 2);
    any other OSError propagates with its traceback."""
    import errno

    from benchmarks.storage.cache import cache_root

    where = Path(error.filename or run_dir)
    if error.errno == errno.ENOSPC:
        print(
            f"error: no space left on the device writing {where}: free space there (or move --out to a "
            "larger disk), then rerun the same command to continue",
            file=sys.stderr,
        )
        return 1
    read_only = error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    if read_only and where.resolve().is_relative_to(cache_root().resolve()):
        fail(
            f"the project cache {cache_root()} cannot be written ({error.strerror}: {where}) and lacks an entry "
            "this run needs: set VQFLOW_CACHE to a writable folder (or to a cache holding the entry)"
        )
    raise error


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run folder; exit 2 naming it if it is a file or cannot be written."""
    if run_dir.exists() and not run_dir.is_dir():
        fail(f"--out {run_dir} is a file, not a folder: choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        fail(f"--out {run_dir} cannot be written ({e.strerror or e}): choose a writable --out")


INPUT_ERRORS = (ConfigError, ImageFileError, MetricsFileError, NotACheckpointError, UnsafeCheckpointError, JobBusyError)
"""Problems with the user's files or folders found while running: exit status 2 with the message."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    main_rank = DistEnv.from_environment().is_main
    logs.configure(progress=not args.no_progress and main_rank)
    if not main_rank:  # torchrun: rank 0 prints the stage lines, the others only warnings
        logging.getLogger(logs.ROOT).setLevel(logging.WARNING)
    try:
        return run(args)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished checkpoints and evaluation cells are kept; rerun the same command to continue",
            file=sys.stderr,
        )
        return 130


def run(args: argparse.Namespace) -> int:
    import methods  # noqa: F401  (registers the built-ins)
    from benchmarks.data import datasets, tokenizers  # noqa: F401  (register the built-ins)
    from benchmarks.evaluation import extractors, metrics  # noqa: F401  (register the built-ins)
    from methods import method_names

    import_plugins(args.plugins)
    if args.list:
        print_listing()
        return 0
    try:
        cfg, run_dir = resolve_config(args)
    except ConfigError as e:
        fail(str(e))
    if args.launcher:
        cfg.launcher.kind = args.launcher
    dist = DistEnv.from_environment()
    check_ranks(cfg, dist, dry_run=args.dry_run)
    saved = read_manifest(run_dir) if args.resume else {}
    if args.methods is not None:
        chosen = parse_methods(args.methods, method_names())
    else:
        chosen = saved.get("methods") or list(cfg.methods) or method_names()
    for problem in sampler_errors(cfg, chosen):
        fail(problem)
    if args.seeds < 1:
        fail("--seeds must be >= 1")
    seeds = saved.get("seeds") or [cfg.train.seed + k for k in range(args.seeds)]
    if args.dry_run:
        from benchmarks.launching.plan import StepTime, dry_run, step_time_from_run

        try:
            step_time = None
            if args.step_seconds is not None and args.step_seconds_from is not None:
                fail("give --step-seconds or --step-seconds-from, not both")
            if args.step_seconds is not None:
                if not args.step_seconds > 0:
                    fail("--step-seconds must be > 0")
                step_time = StepTime({"*": args.step_seconds}, max(cfg.launcher.gpus_per_job, 1), "--step-seconds")
            elif args.step_seconds_from is not None:
                step_time = step_time_from_run(args.step_seconds_from, cfg)
            plan = dry_run(
                cfg, chosen, seeds, peak_tflops=args.gpu_peak_tflops, utilisation=args.utilisation, step_time=step_time
            )
            if dist.is_main:
                print(plan)
        except ValueError as e:
            fail(str(e))
        return 0
    if run_dir.is_dir():
        try:
            check_config_change(run_dir, cfg, read_manifest(run_dir))
        except ValueError as e:  # a manifest.json that is not JSON
            fail(f"{RunDir(run_dir).manifest} cannot be read ({e}): restore it, or use another --out")
        check_results_files(run_dir)
    from benchmarks.launching.preflight import check_inputs

    if args.tensorboard:
        from benchmarks.launching.tensorboard_log import require_tensorboard

        try:
            require_tensorboard()
        except ImportError as e:
            fail(str(e))

    try:
        check_inputs(cfg)
    except ConfigError as e:
        fail(str(e))
    check_disk_room(cfg, chosen, seeds, run_dir)
    check_cache()
    prepare_run_dir(run_dir)

    from benchmarks.launching.launch import JobsDiverged, LaunchError, launch

    if not dist.is_main:
        return run_other_rank(cfg, chosen, seeds, run_dir, dist, args)
    start_ranks(cfg, dist)
    update_manifest(
        run_dir,
        {
            **new_folder_entry(read_manifest(run_dir)),
            "config": cfg.to_dict(),
            "methods": sorted(set(saved.get("methods", [])) | set(chosen)),
            "seeds": seeds,
            "versions": package_versions(),
            "machine": machine_info(),
            "git_commit": git_commit(),
        },
    )
    dist.barrier()  # the other ranks start once the manifest holds this config
    start, started = time.perf_counter(), now_iso()
    cells_before = evaluated_cells(run_dir)
    diverged = None
    try:
        done = launch(
            cfg,
            chosen,
            seeds,
            run_dir,
            progress=not args.no_progress,
            wait=args.wait,
            wait_timeout=args.wait_timeout,
            tensorboard=args.tensorboard,
        )
    except JobsDiverged as e:  # the other jobs finished: report them, then fail
        diverged, done = e, True
    except INPUT_ERRORS as e:
        fail(str(e))
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        return os_error_exit(e, run_dir)
    if done:
        add_timings(
            run_dir,
            ("timings",),
            {"total_s": time.perf_counter() - start},
            started=started,
            launcher=cfg.launcher.kind,
            methods=chosen,
            seeds=seeds,
        )
        log_new_cells(run_dir, cells_before)
        with logs.stage("report"):
            build_report_if_available(run_dir)
        table = summary_table(run_dir)
        if table:
            print("\n" + table)
    print(f"\nrun folder: {run_dir.resolve()}")
    folder = RunDir(run_dir)
    for path in (folder.metrics, folder.manifest, folder.report_file, folder.samples):
        if path.exists():
            print(f"  {path.relative_to(run_dir).as_posix():<18} {path.resolve()}")
    if diverged:
        print(f"error: {diverged}", file=sys.stderr)
        return 1
    return 0


def check_ranks(cfg: BenchmarkConfig, dist: DistEnv, *, dry_run: bool) -> None:
    """Exit 2 where the ranks cannot work: a submitting launcher under torchrun (the ranks run
    the jobs themselves), a global batch that does not divide by torchrun's world size, or
    ``launcher.nodes`` > 1 with a launcher other than slurm (outside ``--dry-run``)."""
    kind, batch = cfg.launcher.kind, cfg.train.batch_size
    if dist.enabled and kind != "local":
        fail(
            f"under torchrun ({dist.world_size} ranks) the ranks run the jobs themselves: use --launcher local, "
            f"not {kind} (or submit without torchrun; launcher.nodes x launcher.gpus_per_job sets a job's ranks)"
        )
    if batch % dist.world_size:
        fail(
            f"train.batch_size={batch} must be divisible by torchrun's world size {dist.world_size} "
            "(--nnodes x --nproc_per_node; one equal share per rank)"
        )
    if cfg.launcher.nodes > 1 and kind != "slurm" and not dry_run:
        fail(
            f"launcher.nodes={cfg.launcher.nodes} needs --launcher slurm (the {kind} launcher runs on one machine); "
            "for several ranks here use launcher.gpus_per_job with submitit-local, or torchrun"
        )


def start_ranks(cfg: BenchmarkConfig, dist: DistEnv) -> None:
    """Under torchrun: join the ranks' process group (NCCL on GPUs, gloo on CPU) before any job,
    so rank 0 can hold the others until the run folder is ready. No-op for one process."""
    if not dist.enabled:
        return
    from benchmarks.core.device import resolve_device

    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(dist.local_rank)
        device = torch.device("cuda", dist.local_rank)
    dist.init_process_group(device)


def run_other_rank(
    cfg: BenchmarkConfig, methods: list[str], seeds: list[int], run_dir: Path, dist: DistEnv, args: argparse.Namespace
) -> int:
    """A torchrun rank > 0: wait for rank 0 to set up the run folder, then walk the same job list
    (every job trains with DDP and evaluates sharded); rank 0 writes every shared file."""
    from benchmarks.launching.launch import JobsDiverged, LaunchError, launch

    start_ranks(cfg, dist)
    dist.barrier()
    try:
        launch(cfg, methods, seeds, run_dir, progress=False, tensorboard=args.tensorboard)
    except JobsDiverged:
        return 1
    except LaunchError as e:
        print(f"error (rank {dist.rank}): {e}", file=sys.stderr)
        return 1
    return 0


def evaluated_cells(run_dir: Path) -> int:
    """Rows of the run's metrics.csv (0 if it has none)."""
    path = RunDir(run_dir).metrics
    if not path.exists():
        return 0
    with open(path) as f:
        return max(sum(1 for line in f if line.strip()) - 1, 0)


def log_new_cells(run_dir: Path, before: int) -> None:
    after = evaluated_cells(run_dir)
    if after == before:
        logs.reused("evaluation", f"all {after} cells were already in {METRICS}; nothing new evaluated")
    else:
        logs.get_logger("run").info("evaluation: %d new cells, %d in %s", after - before, after, METRICS)


def build_report_if_available(run_dir: Path) -> Path | None:
    """Build the run's report (``reports.build_report``); returns its folder. A failure is
    reported, not raised: the results are complete, and ``python -m reports RUN_DIR`` rebuilds
    the report from them."""
    import warnings

    from reports import build_report
    from reports.load import MergeWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MergeWarning)
            out = build_report([run_dir])
        for w in caught:
            if issubclass(w.category, MergeWarning):
                print(f"note: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return out
    except Exception as e:  # noqa: BLE001 (any failure of the report leaves the results intact)
        print(
            f"warning: the report failed ({type(e).__name__}: {e}); rebuild it with: python -m reports {run_dir}",
            file=sys.stderr,
        )
        return None


def summary_table(run_dir: Path) -> str | None:
    """Per method: seeds, last checkpoint, final FID (the first ``at: every`` cell of the run's
    config at the last checkpoint, mean and s.d. over seeds) and, where metrics.csv has the
    column, class accuracy; None without results."""
    try:
        final = final_rows(read_metrics(RunDir(run_dir).metrics), read_manifest(run_dir).get("config") or {})
    except (MetricsFileError, ValueError):
        return None
    if final.empty:
        return None
    columns = ["fid"] + [c for c in SUMMARY_EXTRA if c in final.columns]
    rows = []
    for method, last in final.groupby("method", sort=False):
        row = {"method": method, "seeds": last["seed"].nunique(), "step": int(last["step"].iloc[0])}
        for column in columns:
            values = last[column].astype(float)
            spread = f" ± {values.std():.2f}" if len(values) > 1 else ""
            row[SUMMARY_NAMES.get(column, column)] = f"{values.mean():.2f}{spread}" if values.notna().any() else "-"
        rows.append(row)
    table = pd.DataFrame(rows).to_string(index=False)
    return f"final results (mean ± s.d. over seeds at the last checkpoint):\n{table}"


if __name__ == "__main__":
    sys.exit(main())
