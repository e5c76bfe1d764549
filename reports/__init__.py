"""Reports: every figure and table of a benchmark, rebuilt from run folders' files alone.

    python -m reports RUN_DIR [RUN_DIR ...] [--out DIR] [--step STEP]

or, from Python, ``reports.build_report([run_dir])``. Reading needs pandas and matplotlib only
(no torch, no checkpoints); see ``reports.load`` (reading and merging run folders),
``reports.curves`` (which rows each figure uses), ``reports.speedup`` (speed-ups and bootstrap
intervals), ``reports.figures``, ``reports.tables`` and ``reports.markdown``.
"""

from reports.build import build_report  # noqa: F401
from reports.load import Results, RunFolderError, load_runs  # noqa: F401
