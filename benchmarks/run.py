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
import json
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks import logs
from benchmarks.config import BenchmarkConfig, ConfigError, available_configs, from_dict, load_config
from benchmarks.storage.manifest import (add_timings, git_commit, machine_info, now_iso, package_versions,
                                         read_manifest, update_manifest)

SUMMARY_EXTRA = ("class_accuracy",)
"""metrics.csv columns the final summary shows besides FID, where the run has them."""
SUMMARY_NAMES = {"fid": "final FID", "class_accuracy": "class accuracy"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", help="comma-separated method names (default: the config's methods section)")
    p.add_argument("--config", default=None, help="config name in benchmarks/configs or a YAML path (default: default)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds: train.seed, train.seed + 1, ...")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set train.iterations=200 methods.purr.z_loss=0")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its saved config (error if there is none)")
    p.add_argument("--plugins", default="", help="comma-separated modules to import that register extra methods")
    p.add_argument("--list", action="store_true", help="print the registered methods and available configs")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars: only the plain stage lines (for log files)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write losses, grad norms, learning rate, FIDs and sample grids as TensorBoard "
                        "event files to RUN/tensorboard/ (needs: pip install -e '.[tensorboard]')")
    p.add_argument("--dry-run", action="store_true",
                   help="print the job plan, parameter counts, FLOPs and GPU-hours; read no data, train nothing")
    p.add_argument("--gpu-peak-tflops", type=float, default=989.0,
                   help="GPU peak for --dry-run's GPU-hours (default: 989, H100 SXM dense bf16)")
    p.add_argument("--utilisation", type=float, default=0.4,
                   help="assumed model FLOP utilisation for --dry-run (default: 0.4)")
    p.add_argument("--launcher", choices=("local", "submitit-local", "slurm"), default=None,
                   help="where jobs run (default: the config's launcher.kind); resources: --set launcher.partition=... "
                        "launcher.gpus_per_job=... launcher.timeout_min=... (see LauncherConfig)")
    p.add_argument("--wait", action="store_true",
                   help="submitit launchers: follow the submitted jobs until they finish, then build the report")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                   help="with --wait: give up waiting after this long (the jobs keep running; default 48 h)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def fail(message: str) -> "NoReturn":  # noqa: F821
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
    print("configs:")
    for name in available_configs():
        print(f"  {name}")


def resolve_config(args: argparse.Namespace) -> tuple[BenchmarkConfig, Path]:
    if args.resume:
        if args.out is None:
            fail("--resume needs --out RUN_DIR (the run to continue)")
        saved = read_manifest(args.out).get("config")
        if saved is None:
            fail(f"--resume: {args.out} holds no run (no manifest.json with a config)")
        if args.config or args.overrides:
            fail("--resume continues with the run's saved config; do not pass --config or --set")
        return from_dict(saved), args.out
    cfg = load_config(args.config or "default", args.overrides)
    return cfg, args.out or Path("runs") / cfg.name


def check_same_config(run_dir: Path, cfg: BenchmarkConfig) -> None:
    """Refuse to mix results of different configs in one run folder (where the jobs run, the
    ``launcher`` section, may change between invocations)."""
    saved = read_manifest(run_dir).get("config")
    current = json.loads(json.dumps(cfg.to_dict()))  # as the manifest stores it (tuples become lists)
    if saved is not None:
        saved = {k: v for k, v in saved.items() if k != "launcher"}
        current.pop("launcher")
    if saved is None or saved == current:
        return

    def diff(a, b, prefix=""):
        for key in sorted(set(a) | set(b)):
            va, vb = a.get(key), b.get(key)
            if isinstance(va, dict) and isinstance(vb, dict):
                yield from diff(va, vb, f"{prefix}{key}.")
            elif va != vb:
                yield f"{prefix}{key}: {va!r} in the run, {vb!r} now"

    fail(f"{run_dir} holds a run with a different config ({'; '.join(list(diff(saved, current))[:5])}); "
         "use another --out, or --resume to continue it as it was")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(progress=not args.no_progress)
    import methods  # noqa: F401  (registers the built-ins)
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
    saved = read_manifest(run_dir) if args.resume else {}
    if args.methods:
        chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    else:
        chosen = saved.get("methods") or list(cfg.methods) or method_names()
    unknown = [m for m in chosen if m not in method_names()]
    if unknown:
        fail(f"unknown method {unknown[0]!r}; registered methods: {', '.join(method_names())}")
    if args.seeds < 1:
        fail("--seeds must be >= 1")
    seeds = saved.get("seeds") or [cfg.train.seed + k for k in range(args.seeds)]
    if args.dry_run:
        from benchmarks.launching.plan import dry_run

        try:
            print(dry_run(cfg, chosen, seeds, peak_tflops=args.gpu_peak_tflops, utilisation=args.utilisation))
        except ValueError as e:
            fail(str(e))
        return 0
    check_same_config(run_dir, cfg)
    if args.tensorboard:
        from benchmarks.tensorboard_log import require_tensorboard

        try:
            require_tensorboard()
        except ImportError as e:
            fail(str(e))

    from benchmarks.launching.launch import LaunchError, build_report_if_available, launch

    run_dir.mkdir(parents=True, exist_ok=True)
    update_manifest(run_dir, {"config": cfg.to_dict(), "methods": sorted(set(saved.get("methods", [])) | set(chosen)),
                              "seeds": seeds, "versions": package_versions(), "machine": machine_info(),
                              "git_commit": git_commit()})
    start, started = time.perf_counter(), now_iso()
    cells_before = evaluated_cells(run_dir)
    try:
        done = launch(cfg, chosen, seeds, run_dir, progress=not args.no_progress, wait=args.wait,
                      wait_timeout=args.wait_timeout, tensorboard=args.tensorboard)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if done:
        add_timings(run_dir, ("timings",), {"total_s": time.perf_counter() - start}, started=started,
                    launcher=cfg.launcher.kind, methods=chosen, seeds=seeds)
        log_new_cells(run_dir, cells_before)
        with logs.stage("report"):
            build_report_if_available(run_dir)
        table = summary_table(run_dir)
        if table:
            print("\n" + table)
    print(f"\nrun folder: {run_dir.resolve()}")
    for name in ("metrics.csv", "manifest.json", "report/report.md", "samples"):
        if (run_dir / name).exists():
            print(f"  {name:<18} {(run_dir / name).resolve()}")
    return 0


def evaluated_cells(run_dir: Path) -> int:
    """Rows of the run's metrics.csv (0 if it has none)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return 0
    with open(path) as f:
        return max(sum(1 for line in f if line.strip()) - 1, 0)


def log_new_cells(run_dir: Path, before: int) -> None:
    after = evaluated_cells(run_dir)
    if after == before:
        logs.reused("evaluation", f"all {after} cells were already in metrics.csv; nothing new evaluated")
    else:
        logs.get_logger("run").info("evaluation: %d new cells, %d in metrics.csv", after - before, after)


def summary_table(run_dir: Path) -> str | None:
    """Per method: seeds, last checkpoint, final FID (the report's cheap cell there, mean and
    s.d. over seeds) and, where metrics.csv has the column, class accuracy; None without results."""
    from reports.curves import convergence, order_variants
    from reports.load import RunFolderError, load_runs

    try:
        final = convergence(load_runs([run_dir]))
    except (RunFolderError, ValueError):
        return None
    if final.empty:
        return None
    columns = ["fid"] + [c for c in SUMMARY_EXTRA if c in final.columns]
    rows = []
    for variant in order_variants(final["variant"]):
        rows_of = final[final["variant"] == variant]
        last = rows_of[rows_of["step"] == rows_of["step"].max()]
        row = {"method": variant, "seeds": last["seed"].nunique(), "step": int(last["step"].iloc[0])}
        for column in columns:
            values = last[column].astype(float)
            spread = f" ± {values.std():.2f}" if len(values) > 1 else ""
            row[SUMMARY_NAMES.get(column, column)] = f"{values.mean():.2f}{spread}" if values.notna().any() else "-"
        rows.append(row)
    table = pd.DataFrame(rows).to_string(index=False)
    return f"final results (mean ± s.d. over seeds at the last checkpoint):\n{table}"


if __name__ == "__main__":
    sys.exit(main())
