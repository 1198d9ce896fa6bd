"""Effective-rank region and knee from an accuracy-vs-rank table (the paper's definitions).

Accuracy is divided by a reference accuracy, made monotone non-decreasing (isotonic regression) and
interpolated with a monotone PCHIP on the linear rank axis. For a band ``(lo, hi)`` the region is
``[r_lo, r_hi]``: the smallest ranks at which the fitted curve reaches ``lo`` and ``hi``. The knee is the rank
that maximizes the perpendicular distance between the fitted curve and the secant joining its endpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import isotonic_regression, minimize_scalar

CROSSED = "crossed"
EXCEEDED_AT_FIRST_RANK = "exceeded_at_first_rank"
NOT_REACHED = "not_reached"
REFERENCE_CHOICES = ("teacher", "best_student")
KNEE_RESOLUTION = 0.01


@dataclass(frozen=True)
class LevelCrossing:
    """Where the fitted curve first reaches ``level``.

    ``status`` is ``crossed`` (``rank`` is the crossing), ``exceeded_at_first_rank`` (the curve is already
    above the level at the smallest swept rank ``bound``; the true crossing lies below the sweep) or
    ``not_reached`` (the curve stays below the level up to the largest swept rank ``bound``).
    """

    level: float
    status: str
    rank: float | None
    bound: float

    def describe(self) -> str:
        if self.status == CROSSED:
            return f"{self.rank:.2f}"
        if self.status == EXCEEDED_AT_FIRST_RANK:
            return f"<= {self.bound:g} (already above {self.level:.0%} at the smallest rank)"
        return f"> {self.bound:g} (never reaches {self.level:.0%} in the swept ranks)"


@dataclass(frozen=True)
class EffectiveRankResult:
    """Region, knee and the fitted curve. ``curve(r)`` gives normalized accuracy on the swept range."""

    ranks: np.ndarray            # distinct swept ranks, ascending
    mean_accuracy: np.ndarray    # mean accuracy per rank (absolute units)
    normalized: np.ndarray       # mean accuracy / reference
    monotone: np.ndarray         # isotonic (non-decreasing) fit of ``normalized``
    reference: float
    band: tuple[float, float]
    low: LevelCrossing
    high: LevelCrossing
    knee: float
    curve: PchipInterpolator = field(repr=False)
    intervals: dict[str, tuple[float, float]] | None = None  # bootstrap over seeds: name -> (2.5%, 97.5%)

    @property
    def region_low(self) -> float | None:
        return self.low.rank

    @property
    def region_high(self) -> float | None:
        return self.high.rank

    def secant(self, r: np.ndarray | float) -> np.ndarray:
        """The straight line joining the fitted curve's endpoints, in normalized units."""
        r0, r1 = self.ranks[0], self.ranks[-1]
        y0, y1 = self.curve(r0), self.curve(r1)
        return y0 + (y1 - y0) * (np.asarray(r, dtype=float) - r0) / (r1 - r0)

    def summary(self) -> str:
        text = (f"region [{self.low.describe()}, {self.high.describe()}] for band "
                f"{self.band[0]:.0%}-{self.band[1]:.0%} of reference {self.reference:.4g}; knee {self.knee:.2f}")
        if self.intervals:
            text += "; 95% bootstrap: " + ", ".join(f"{k} [{a:.2f}, {b:.2f}]" for k, (a, b) in self.intervals.items())
        return text

    def to_dict(self) -> dict:
        """JSON-ready form (no arrays of the fitted curve)."""
        def level(c: LevelCrossing) -> dict:
            return {"level": c.level, "status": c.status, "rank": c.rank, "bound": c.bound}

        return {"reference": self.reference, "band": list(self.band), "region_low": level(self.low),
                "region_high": level(self.high), "knee": self.knee,
                "intervals": {k: list(v) for k, v in (self.intervals or {}).items()} or None}


# ----------------------------------------------------------------------------------------------- inputs
def validate_band(band: Sequence[float]) -> tuple[float, float]:
    """``band`` must be two numbers with ``0 < lo < hi <= 1``."""
    try:
        lo, hi = (float(v) for v in band)
    except (TypeError, ValueError):
        raise ValueError(f"band: expected two numbers (lo, hi) with 0 < lo < hi <= 1, got {band!r}") from None
    if not (0 < lo <= 1 and 0 < hi <= 1) or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"band: levels must lie in (0, 1], got {band!r}")
    if lo >= hi:
        raise ValueError(f"band: lo must be below hi, got lo={lo} hi={hi}")
    return lo, hi


def _as_arrays(ranks: Iterable[float], accuracy: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(list(ranks), dtype=float)
    a = np.asarray(list(accuracy), dtype=float)
    if r.ndim != 1 or a.ndim != 1 or r.shape != a.shape:
        raise ValueError(f"ranks/accuracy: lengths differ ({r.size} ranks, {a.size} accuracies)")
    if np.isnan(a).any() or np.isnan(r).any():
        raise ValueError("accuracy: contains NaN; drop failed runs before fitting")
    if (r <= 0).any():
        raise ValueError(f"ranks: must be positive, got {r[r <= 0].tolist()}")
    if np.unique(r).size < 2:
        raise ValueError(f"ranks: need at least 2 distinct ranks, got {np.unique(r).tolist()}")
    return r, a


def group_by_rank(ranks: Iterable[float], accuracy: Iterable[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct ranks (ascending) and the accuracies (seeds) at each."""
    r, a = _as_arrays(ranks, accuracy)
    distinct = np.unique(r)
    return distinct, [a[r == x] for x in distinct]


def resolve_reference(reference: float | str, mean_accuracy: np.ndarray, teacher: float | None = None) -> float:
    """A number, ``"teacher"`` (needs ``teacher``) or ``"best_student"`` (the highest mean accuracy)."""
    if isinstance(reference, str):
        if reference == "best_student":
            value = float(np.max(mean_accuracy))
        elif reference == "teacher" and teacher is not None:
            value = float(teacher)
        else:
            raise ValueError(f"reference: {reference!r} is not a number or one of {', '.join(REFERENCE_CHOICES)}"
                             + (" (no teacher accuracy given)" if reference == "teacher" else ""))
    else:
        value = float(reference)
    if not value > 0 or math.isinf(value):
        raise ValueError(f"reference: must be a positive accuracy, got {reference!r}")
    return value


# ----------------------------------------------------------------------------------------------- fitting
def fit_curve(ranks: np.ndarray, normalized: np.ndarray, weights: np.ndarray | None = None
              ) -> tuple[np.ndarray, PchipInterpolator]:
    """Isotonic (non-decreasing) fit of ``normalized`` then a monotone PCHIP through it (linear rank axis)."""
    monotone = isotonic_regression(normalized, weights=weights, increasing=True).x
    return monotone, PchipInterpolator(ranks, monotone, extrapolate=False)


def crossing(curve: PchipInterpolator, ranks: np.ndarray, monotone: np.ndarray, level: float) -> LevelCrossing:
    """First rank where the (non-decreasing) fitted curve reaches ``level``, solved on the PCHIP pieces."""
    if monotone[0] > level:
        return LevelCrossing(level, EXCEEDED_AT_FIRST_RANK, None, float(ranks[0]))
    if monotone[-1] < level:
        return LevelCrossing(level, NOT_REACHED, None, float(ranks[-1]))
    roots = np.asarray(curve.solve(level, extrapolate=False), dtype=float)
    roots = roots[np.isfinite(roots) & (roots >= ranks[0]) & (roots <= ranks[-1])]
    first_knot = float(ranks[np.argmax(monotone >= level)])  # a knot at the level is a root too
    rank = min(float(roots.min()), first_knot) if roots.size else first_knot
    return LevelCrossing(level, CROSSED, rank, rank)


def knee(curve: PchipInterpolator, r0: float, r1: float, resolution: float = KNEE_RESOLUTION) -> float:
    """Rank in ``[r0, r1]`` farthest (perpendicular) from the secant joining the curve's endpoints.

    The perpendicular distance is the vertical gap times a constant, so the gap is maximized: on a grid of
    ``resolution`` and then refined by a bounded scalar search around the best grid point.
    """
    y0, y1 = float(curve(r0)), float(curve(r1))

    def gap(r: np.ndarray | float) -> np.ndarray:
        return np.abs(curve(r) - (y0 + (y1 - y0) * (np.asarray(r) - r0) / (r1 - r0)))

    grid = np.linspace(r0, r1, max(int(math.ceil((r1 - r0) / resolution)) + 1, 2))
    best = int(np.argmax(gap(grid)))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    if hi <= lo:
        return float(grid[best])
    refined = minimize_scalar(lambda r: -float(gap(r)), bounds=(lo, hi), method="bounded",
                              options={"xatol": resolution / 100})
    return float(refined.x if -refined.fun >= gap(grid[best]) else grid[best])


@dataclass(frozen=True)
class _Fit:
    """One fit of the curve: per-rank means, normalized and monotone points, the interpolant and its answers."""

    mean: np.ndarray
    normalized: np.ndarray
    monotone: np.ndarray
    curve: PchipInterpolator
    low: LevelCrossing
    high: LevelCrossing
    knee: float


def _fit(ranks: np.ndarray, groups: list[np.ndarray], reference: float, band: tuple[float, float]) -> _Fit:
    mean = np.array([g.mean() for g in groups])
    normalized = mean / reference
    monotone, curve = fit_curve(ranks, normalized, weights=np.array([g.size for g in groups], dtype=float))
    return _Fit(mean, normalized, monotone, curve, crossing(curve, ranks, monotone, band[0]),
                crossing(curve, ranks, monotone, band[1]), knee(curve, float(ranks[0]), float(ranks[-1])))


def effective_rank(ranks: Iterable[float], accuracy: Iterable[float], reference: float | str,
                   band: Sequence[float] = (0.85, 0.95), *, teacher_accuracy: float | None = None,
                   n_bootstrap: int = 200, seed: int = 0) -> EffectiveRankResult:
    """Effective-rank region and knee of an accuracy-vs-rank table.

    ``ranks``/``accuracy`` are parallel sequences; a rank listed several times holds several seeds (the
    curve uses their mean and, when any rank has two or more, a bootstrap over seeds gives 95% intervals).
    ``reference`` is a number, ``"best_student"``, or ``"teacher"`` with ``teacher_accuracy`` given.
    """
    lo_hi = validate_band(band)
    distinct, groups = group_by_rank(ranks, accuracy)
    ref = resolve_reference(reference, np.array([g.mean() for g in groups]), teacher_accuracy)
    fit = _fit(distinct, groups, ref, lo_hi)
    intervals = None
    if n_bootstrap > 0 and max(g.size for g in groups) > 1:
        intervals = _bootstrap(distinct, groups, reference, teacher_accuracy, lo_hi, n_bootstrap, seed)
    return EffectiveRankResult(distinct, fit.mean, fit.normalized, fit.monotone, ref, lo_hi, fit.low, fit.high,
                               fit.knee, fit.curve, intervals)


def _bootstrap(ranks: np.ndarray, groups: list[np.ndarray], reference: float | str, teacher: float | None,
               band: tuple[float, float], n: int, seed: int) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of r_lo, r_hi and knee, resampling seeds within each rank."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"region_low": [], "region_high": [], "knee": []}
    for _ in range(n):
        sample = [rng.choice(g, size=g.size, replace=True) for g in groups]
        ref = resolve_reference(reference, np.array([g.mean() for g in sample]), teacher)
        fit = _fit(ranks, sample, ref, band)
        for name, value in (("region_low", fit.low.rank), ("region_high", fit.high.rank), ("knee", fit.knee)):
            if value is not None:
                draws[name].append(value)
    return {name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            for name, v in draws.items() if v}


def sensitivity_table(ranks: Iterable[float], accuracy: Iterable[float],
                      references: dict[str, float | str], bands: Sequence[Sequence[float]],
                      teacher_accuracy: float | None = None) -> list[dict]:
    """Region and knee for every (reference, band) pair: one dict per pair, ready for a DataFrame.

    ``references`` maps a label (e.g. ``"teacher"``, ``"teacher - 1pt"``) to a reference accepted by
    :func:`effective_rank`.
    """
    ranks, accuracy = list(ranks), list(accuracy)
    rows = []
    for label, reference in references.items():
        for band in bands:
            res = effective_rank(ranks, accuracy, reference, band, teacher_accuracy=teacher_accuracy, n_bootstrap=0)
            rows.append({"reference": label, "reference_accuracy": res.reference,
                         "band": f"{res.band[0]:.0%}-{res.band[1]:.0%}",
                         "region_low": res.low.describe(), "region_high": res.high.describe(),
                         "knee": round(res.knee, 2)})
    return rows
