"""Plain lines a person (or a cluster job's log file) can follow, next to the progress bars.

Every stage of a run writes ``HH:MM:SS <stage>: started`` when it begins and
``HH:MM:SS <stage>: done in 12.3 s`` when it ends (``failed after ...`` if it raised), and a
stage a rerun does not need says what it reused. The lines go through the ``logging`` logger
``vqflow`` (``vqflow.<part>`` below it), which ``configure()`` sends to stderr once per process;
a library user who never calls it sees nothing (Python's default for INFO lines).

``show_progress()`` is the process-wide progress-bar switch for bars whose callers have no
``progress`` argument to pass (the feature extractor's training); ``--no-progress`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

ROOT = "vqflow"
_progress = True


def get_logger(part: str) -> logging.Logger:
    """The logger of one part of the suite (``vqflow.<part>``)."""
    return logging.getLogger(f"{ROOT}.{part}")


def configure(*, progress: bool = True, stream=None) -> None:
    """Print the suite's INFO lines to ``stream`` (default stderr) as ``HH:MM:SS name: message``,
    and set the progress-bar switch. Calling it again only changes the switch and the stream."""
    global _progress
    _progress = progress
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def show_progress() -> bool:
    return _progress


def seconds(value: float) -> str:
    """12.345 -> '12.3 s'; 754 -> '12 min 34 s'."""
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


@contextlib.contextmanager
def stage(name: str, part: str = "run") -> Iterator[None]:
    """Log ``name: started`` and ``name: done in T`` (or ``failed after T``) around a block."""
    logger = get_logger(part)
    logger.info("%s: started", name)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        logger.info("%s: failed after %s", name, seconds(time.perf_counter() - start))
        raise
    logger.info("%s: done in %s", name, seconds(time.perf_counter() - start))


def reused(name: str, what: str, part: str = "run") -> None:
    """Log that a stage was skipped because its result already exists: ``name: reused <what>``."""
    get_logger(part).info("%s: skipped, %s", name, what)
