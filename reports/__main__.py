"""``python -m reports RUN_DIR [RUN_DIR ...] [--out DIR] [--step STEP] [--plugins MODULES]``

Rebuild the figures (PNG and PDF) and report.md of one or several benchmark run folders.
Several folders are merged (e.g. one per method from a job array, or extra seeds added
later): rows are concatenated, duplicate cells keep the first folder's row with a note.
Exit status 2 for bad input (missing folder, malformed file, no sweep at --step).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

from benchmarks.storage.run_dir import REPORT_FILE
from reports.build import build_report
from reports.load import MergeWarning, RunFolderError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reports", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders written by benchmarks.run")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <first RUN_DIR>/report)")
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint for the temperature figure, sample grids and entropy traces "
        "(default: each method's last checkpoint with a temperature sweep)",
    )
    p.add_argument(
        "--plugins",
        default="",
        help="comma-separated modules registering extra methods (for their temperature definitions)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for module in filter(None, (m.strip() for m in args.plugins.split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            print(f"error: --plugins: cannot import {module!r}: {e}", file=sys.stderr)
            return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MergeWarning)
        try:
            out = build_report(args.run_dirs, args.out, step=args.step)
        except (RunFolderError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    for w in caught:
        if issubclass(w.category, MergeWarning):
            print(f"note: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"report: {out / REPORT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
