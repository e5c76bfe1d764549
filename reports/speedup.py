"""Speed-up factors: how much sooner Purrception reaches a baseline's final FID.

Definitions (one backbone, one Purrception variant P, one baseline B, cheap-cell FID curves):

- Curves are means over seeds on the checkpoints every seed of the method has.
- Target: ``F = mean over B's seeds of B's FID at B's last such checkpoint`` (its final FID).
- ``x_B`` = B's last checkpoint (iterations, or training FLOPs there): what B spent to reach F.
- ``x_P`` = where P's mean curve first reaches F: the first checkpoint i with
  ``fid_i <= F``, interpolated between checkpoints i-1 and i linearly in (log x, log FID) —
  exact for power-law curves ``FID = a x^-b``, which convergence curves roughly follow
  (linear interpolation in x is used instead if a value there is not positive).
- Speed-up ``r = x_B / x_P``. Two cases give only a bound:
  ``>= x_B / x_0`` when P's first checkpoint x_0 already has ``fid <= F`` (P got there at x_0 or
  earlier); ``< x_B / x_last`` ("not reached") when P's curve never gets to F.
- Confidence interval (when a method has two or more seeds): bootstrap over seeds. Each of
  ``BOOTSTRAP_RESAMPLES`` resamples draws, for P and for B separately, as many seeds as the method
  has, with replacement; recomputes both mean curves, F and r. The interval is the 2.5th and
  97.5th percentiles of the resampled r (order statistics; a "not reached" resample counts as
  below every reached one, a ">=" resample as above every other). The RNG is
  ``numpy.random.default_rng(BOOTSTRAP_SEED)`` for every comparison, so tables are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20260101
CONFIDENCE = 0.95

EXACT, AT_LEAST, NOT_REACHED = "exact", "at_least", "not_reached"


@dataclass(frozen=True)
class Reach:
    """Where a curve first reaches a target. ``kind``: EXACT (``x`` interpolated), AT_LEAST (the
    first point already reaches it: the true x is <= ``x``), NOT_REACHED (true x > ``x``, the last point)."""

    x: float
    kind: str


def first_reach(x: np.ndarray, fid: np.ndarray, target: float) -> Reach:
    """Where the curve ``fid(x)`` (x increasing) first gets to ``fid <= target``."""
    x, fid = np.asarray(x, float), np.asarray(fid, float)
    if x.ndim != 1 or x.shape != fid.shape or len(x) == 0:
        raise ValueError(f"first_reach needs matching non-empty 1-d x and fid, got shapes {x.shape}, {fid.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError("first_reach needs strictly increasing x")
    hit = np.flatnonzero(fid <= target)
    if len(hit) == 0:
        return Reach(float(x[-1]), NOT_REACHED)
    i = int(hit[0])
    if i == 0:
        return Reach(float(x[0]), AT_LEAST)
    x0, x1, f0, f1 = x[i - 1], x[i], fid[i - 1], fid[i]
    if min(x0, f1, target) > 0:
        frac = (np.log(f0) - np.log(target)) / (np.log(f0) - np.log(f1))
        return Reach(float(np.exp(np.log(x0) + frac * (np.log(x1) - np.log(x0)))), EXACT)
    frac = (f0 - target) / (f0 - f1)
    return Reach(float(x0 + frac * (x1 - x0)), EXACT)


@dataclass(frozen=True)
class Speedup:
    """``ratio`` = baseline_x / purr_x; for AT_LEAST it is a lower bound, for NOT_REACHED an upper bound."""

    ratio: float
    kind: str
    target: float
    baseline_x: float
    purr_x: float

    def sort_value(self) -> float:
        """For order statistics: not reached below every value, at-least above every value."""
        return {NOT_REACHED: -np.inf, AT_LEAST: np.inf}.get(self.kind, self.ratio)


def speedup(purr_x: np.ndarray, purr_fid: np.ndarray, base_x: np.ndarray, base_fid: np.ndarray) -> Speedup:
    """Speed-up from per-seed curves: ``*_fid`` (seeds, points) on checkpoints ``*_x`` (points,)."""
    purr_mean = np.asarray(purr_fid, float).reshape(-1, len(purr_x)).mean(axis=0)
    base_fid = np.asarray(base_fid, float).reshape(-1, len(base_x))
    target = float(base_fid[:, -1].mean())
    base_spent = float(base_x[-1])
    reach = first_reach(purr_x, purr_mean, target)
    return Speedup(base_spent / reach.x, reach.kind, target, base_spent, reach.x)


def bootstrap_interval(purr_x: np.ndarray, purr_fid: np.ndarray, base_x: np.ndarray, base_fid: np.ndarray,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       confidence: float = CONFIDENCE) -> tuple[Speedup, Speedup] | None:
    """Percentile bootstrap interval over seeds (see module docstring): the resamples at the lower
    and upper percentiles, or None when both methods have a single seed."""
    purr_fid, base_fid = np.atleast_2d(purr_fid), np.atleast_2d(base_fid)
    n_p, n_b = len(purr_fid), len(base_fid)
    if n_p < 2 and n_b < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = [speedup(purr_x, purr_fid[rng.integers(0, n_p, n_p)], base_x, base_fid[rng.integers(0, n_b, n_b)])
             for _ in range(resamples)]
    values = np.array([d.sort_value() for d in draws])
    order = np.argsort(values, kind="stable")
    alpha = (1.0 - confidence) / 2.0
    lo = int(np.ceil(alpha * resamples)) - 1          # the 2.5th percentile: the 50th of 2000 sorted values
    hi = int(np.ceil((1.0 - alpha) * resamples)) - 1  # the 97.5th percentile: the 1950th
    return draws[order[max(lo, 0)]], draws[order[min(hi, resamples - 1)]]


def format_speedup(s: Speedup) -> str:
    """``2.31x``, ``>=4.00x`` (reached at the first checkpoint) or ``not reached (<0.50x)``."""
    if s.kind == AT_LEAST:
        return f">={s.ratio:.2f}x"
    if s.kind == NOT_REACHED:
        return f"not reached (<{s.ratio:.2f}x)"
    return f"{s.ratio:.2f}x"


def format_interval(bounds: tuple[Speedup, Speedup] | None) -> str:
    if bounds is None:
        return "n/a (1 seed)"
    lo, hi = bounds

    def end(s: Speedup) -> str:
        return {AT_LEAST: f">={s.ratio:.2f}", NOT_REACHED: f"<{s.ratio:.2f}"}.get(s.kind, f"{s.ratio:.2f}")

    return f"[{end(lo)}, {end(hi)}]"
