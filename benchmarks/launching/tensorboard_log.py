"""Optional TensorBoard logging of a job (``python -m benchmarks.run --tensorboard``; off by default).

After each evaluated checkpoint, the job's new rows are copied into a TensorBoard event file in
``<run>/tensorboard/<method>-seed<k>/``: from ``train_log.csv`` every logged interval's loss terms
and gradient norm (``train/<column>``) and the learning rate (``train/lr``, constant in the shared
recipe); from ``metrics.csv`` the FID of every cell evaluated at that checkpoint
(``fid/steps<N>_tau<τ>_cfg<w>_n<samples>``); and the cells' sample grids
(``samples/<the same cell name>``). The CSV files stay the record; the event files are a view for
``tensorboard --logdir <run>/tensorboard``. Needs the ``tensorboard`` package:
``pip install -e '.[tensorboard]'``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.storage.run_dir import RunDir
from benchmarks.training.trainer import CheckpointEvent

NOT_LOGGED = {"step", "images_seen", "train_wall_s"}
"""train_log.csv columns that are positions on the x axis, not curves."""


def require_tensorboard() -> None:
    """Raise ImportError with the install command if ``torch.utils.tensorboard`` cannot load."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"--tensorboard needs the tensorboard package ({e}); install it with: pip install -e '.[tensorboard]'"
        ) from None


def logged_points(folder: Path) -> set[tuple[str, int]]:
    """(tag, step) of every value in the TensorBoard event files of ``folder``; a record cut by a
    kill ends its file's reading."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    points = set()
    for path in sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []:
        try:
            for event in EventFileLoader(str(path)).Load():
                points |= {(value.tag, int(event.step)) for value in event.summary.value}
        except Exception:  # noqa: BLE001, S112 (a damaged file: what was read is kept)
            continue
    return points


class TensorBoardLog:
    """Copies one job's new training-log rows, FIDs and sample grids into TensorBoard."""

    def __init__(self, run_dir: str | Path, method: str, seed: int, lr: float, *, from_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.method, self.seed, self.lr = RunDir(run_dir), method, seed, lr
        self.job = self.run.job(method, seed)
        self.logged = logged_points(self.job.tensorboard)
        """(tag, step) of every scalar and image already in the job's event files (an earlier,
        perhaps killed, invocation): never written twice."""
        self.writer = SummaryWriter(log_dir=str(self.job.tensorboard))
        self.logged_step = from_step
        """Training-log rows up to this step are already in the event files (an earlier invocation)."""

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if (tag, step) not in self.logged:
            self.logged.add((tag, step))
            self.writer.add_scalar(tag, value, step)

    def add_image(self, tag: str, grid: Path, step: int) -> None:
        if (tag, step) not in self.logged:
            self.logged.add((tag, step))
            image = np.asarray(Image.open(grid).convert("RGB"))
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def __call__(self, event: CheckpointEvent) -> None:
        self.log_training(self.job.train_log, event.step)
        self.log_evaluation(event.step)
        self.writer.flush()

    def log_training(self, path: Path, up_to: int) -> None:
        if not path.exists():
            return
        log = pd.read_csv(path)
        new = log[(log["step"] > self.logged_step) & (log["step"] <= up_to)]
        for row in new.to_dict("records"):
            step = int(row["step"])
            for column, value in row.items():
                if column not in NOT_LOGGED and pd.notna(value):
                    self.add_scalar(f"train/{column}", float(value), step)
            self.add_scalar("train/lr", self.lr, step)
        self.logged_step = max(self.logged_step, up_to)

    def log_evaluation(self, step: int) -> None:
        path = self.run.metrics
        if not path.exists():
            return
        metrics = pd.read_csv(path)
        cells = metrics[(metrics["method"] == self.method) & (metrics["seed"] == self.seed) & (metrics["step"] == step)]
        for row in cells.to_dict("records"):
            tag = f"steps{row['steps']}_tau{row['temperature']:g}_cfg{row['cfg_scale']:g}_n{row['n_samples']}"
            self.add_scalar(f"fid/{tag}", float(row["fid"]), step)
        for tag, grid in self.job.grids_at(step).items():
            self.add_image(f"samples/{tag}", grid, step)

    def close(self) -> None:
        self.writer.close()
