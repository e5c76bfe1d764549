"""Speed-up factors: how much sooner Purrception reaches the FID a baseline reaches.

Definitions (one backbone, one Purrception variant P, one baseline B, FID curves of one cell each):

- Curves are means over seeds on the checkpoints every seed of the method has.
- Budget fraction f (1/4, 1/2 or 1: ``FRACTIONS``): ``x_B = f * (B's last checkpoint)``
  (iterations, or training FLOPs there): what B spent.
- Target: ``F`` = B's mean curve at ``x_B`` (the FID B reaches with that share of its budget),
  read at the checkpoint there or interpolated between the two around it linearly in
  (log x, log FID). For f = 1 it is B's final FID.
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

  Why not ``scipy.stats.bootstrap``: it resamples the same way (``paired=False``,
  ``method="percentile"``), but it needs a float statistic and interpolates between resamples, so
  the censored ratios (">=" and "not reached" are bounds, not values) have no place in it: they
  would have to become ±inf, which makes its interval ±inf or NaN and loses the bound. On
  uncensored curves both give the same interval up to that interpolation (tests/test_reports.py
  compares them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20260101
CONFIDENCE = 0.95
FRACTIONS = (0.25, 0.5, 1.0)
"""Shares of the baseline's budget whose FID is a target."""

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


def value_at(x: np.ndarray, fid: np.ndarray, at: float) -> float:
    """The curve ``fid(x)`` (x increasing) at ``x[0] <= at <= x[-1]``: the value at a checkpoint,
    else interpolated linearly in (log x, log FID) (linearly in x if a value is not positive)."""
    x, fid = np.asarray(x, float), np.asarray(fid, float)
    if not x[0] <= at <= x[-1]:
        raise ValueError(f"value_at: {at:g} is outside the curve's checkpoints [{x[0]:g}, {x[-1]:g}]")
    i = int(np.searchsorted(x, at))
    if x[i] == at:
        return float(fid[i])
    if min(x[i - 1], fid[i - 1], fid[i]) > 0:
        return float(np.exp(np.interp(np.log(at), np.log(x[i - 1 : i + 1]), np.log(fid[i - 1 : i + 1]))))
    return float(np.interp(at, x[i - 1 : i + 1], fid[i - 1 : i + 1]))


def speedup(
    purr_x: np.ndarray, purr_fid: np.ndarray, base_x: np.ndarray, base_fid: np.ndarray, fraction: float = 1.0
) -> Speedup:
    """Speed-up from per-seed curves, ``*_fid`` (seeds, points) on checkpoints ``*_x`` (points,), for
    the target the baseline reaches with ``fraction`` of its budget (which must be at or after its
    first checkpoint)."""
    purr_mean = np.asarray(purr_fid, float).reshape(-1, len(purr_x)).mean(axis=0)
    base_mean = np.asarray(base_fid, float).reshape(-1, len(base_x)).mean(axis=0)
    return _speedup_of_means(purr_x, purr_mean, base_x, base_mean, fraction)


def _speedup_of_means(
    purr_x: np.ndarray, purr_mean: np.ndarray, base_x: np.ndarray, base_mean: np.ndarray, fraction: float
) -> Speedup:
    base_spent = fraction * float(base_x[-1])
    target = value_at(base_x, base_mean, base_spent)
    reach = first_reach(purr_x, purr_mean, target)
    return Speedup(base_spent / reach.x, reach.kind, target, base_spent, reach.x)


def bootstrap_interval(
    purr_x: np.ndarray,
    purr_fid: np.ndarray,
    base_x: np.ndarray,
    base_fid: np.ndarray,
    fraction: float = 1.0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[Speedup, Speedup] | None:
    """Percentile bootstrap interval over seeds (see module docstring) of ``speedup(..., fraction)``:
    the resamples at the lower and upper percentiles, or None when both methods have a single seed."""
    purr_fid, base_fid = np.atleast_2d(purr_fid), np.atleast_2d(base_fid)
    n_p, n_b = len(purr_fid), len(base_fid)
    if n_p < 2 and n_b < 2:
        return None
    rng = np.random.default_rng(seed)
    purr_means = purr_fid[rng.integers(0, n_p, (resamples, n_p))].mean(axis=1)  # (resamples, points)
    base_means = base_fid[rng.integers(0, n_b, (resamples, n_b))].mean(axis=1)
    draws = [_speedup_of_means(purr_x, p, base_x, b, fraction) for p, b in zip(purr_means, base_means)]
    values = np.array([d.sort_value() for d in draws])
    order = np.argsort(values, kind="stable")
    alpha = (1.0 - confidence) / 2.0
    lo = int(np.ceil(alpha * resamples)) - 1  # the 2.5th percentile: the 50th of 2000 sorted values
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
