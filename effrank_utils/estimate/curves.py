"""Effective-rank region and knee from an accuracy-vs-rank table (the paper's definitions).

Accuracy is divided by a reference accuracy, made monotone non-decreasing (isotonic regression) and
interpolated with a monotone PCHIP on the linear rank axis. For a band ``(lo, hi)`` the region is
``[r_lo, r_hi]``: the smallest ranks at which the fitted curve reaches ``lo`` and ``hi``. The knee is the rank
where the fitted curve lies farthest *above* the secant joining its endpoints (the Kneedle convention: where
adding rank stops paying off). Where the curve never rises above that secant (flat, linear or convex curves, or
fewer than 3 swept ranks) the knee is undefined: ``knee`` is ``None`` and ``knee_status`` says why.

Accuracies and the reference must be in the same units (fractions 0-1 or percentages 0-100); mixing them is
refused. With several seeds per rank a bootstrap over seeds gives 95% intervals, each with the share of
resamples in which the quantity exists (level reached, knee defined); below 95% the interval is *censored*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import isotonic_regression, minimize_scalar

CROSSED = "crossed"
EXCEEDED_AT_FIRST_RANK = "exceeded_at_first_rank"
NOT_REACHED = "not_reached"
REFERENCE_CHOICES = ("teacher", "best_student")
DEFAULT_BAND = (0.85, 0.95)  # the paper's: 85-95% of the reference accuracy
#: The three numbers of an estimate, as people write them.
QUANTITY_LABELS = {"region_low": "r_lo", "region_high": "r_hi", "knee": "knee"}
KNEE_RESOLUTION = 0.01
KNEE_MIN_GAP = 1e-9  # normalized accuracy: a curve no higher than this above its secant has no knee (rounding)
KNEE_DEFINED = "defined"
KNEE_TOO_FEW_RANKS = "undefined: fewer than 3 swept ranks"
KNEE_NOT_ABOVE_SECANT = "undefined: the fitted curve never rises above its endpoint secant"
KNEE_UNDEFINED = "undefined"   # the share of bootstrap resamples without a knee, in Interval.missing
CENSORED_BELOW = 0.95          # an interval whose quantity exists in fewer resamples than this is censored
PERCENT_MAX = 100.0            # accuracies are fractions (<= 1) or percentages (<= 100)
UNIT_RATIO = 10.0              # best accuracy / reference this far from 1, across units: mixed units


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


def _percent(share: float) -> str:
    """``71%``; one decimal where whole percents would round a share that is not 0 or 1 to 0% or 100%."""
    text = f"{share:.0%}"
    return f"{share:.1%}" if text in ("0%", "100%") and 0 < share < 1 else text


@dataclass(frozen=True)
class Interval:
    """95% bootstrap percentile interval of one quantity (``region_low``, ``region_high`` or ``knee``).

    ``low``/``high`` are the 2.5% and 97.5% percentiles over the resamples in which the quantity exists (the level
    was crossed inside the sweep, the knee is defined); ``None`` when it exists in none. ``reached`` is that share
    of the ``resamples``; ``missing`` the shares of the others, by why (``exceeded_at_first_rank``,
    ``not_reached``, ``undefined``). Below :data:`CENSORED_BELOW` the interval is *censored*: it describes only
    the resamples that reached the level. Iterating gives ``(low, high)``, as the plain tuple of old did.
    """

    name: str
    low: float | None
    high: float | None
    reached: float
    resamples: int
    missing: tuple[tuple[str, float], ...] = ()
    first_rank: float = float("nan")
    last_rank: float = float("nan")

    @property
    def censored(self) -> bool:
        return self.reached < CENSORED_BELOW

    @property
    def pair(self) -> tuple[float | None, float | None]:
        return self.low, self.high

    def __iter__(self) -> Iterator[float | None]:
        return iter(self.pair)

    def _missing_text(self) -> list[str]:
        words = {EXCEEDED_AT_FIRST_RANK: f"<= {self.first_rank:g}", NOT_REACHED: f"> {self.last_rank:g}",
                 KNEE_UNDEFINED: "undefined"}
        return [f"{words[why]} in {_percent(share)} of resamples" for why, share in self.missing if share > 0]

    def describe(self) -> str:
        """``[a, b]``; with the share of resamples where it exists when below 100%; ``censored: ...`` below 95%."""
        span = None if self.low is None else f"[{self.low:.2f}, {self.high:.2f}]"
        if self.reached >= 1:
            return span
        missing = ", ".join(self._missing_text())
        if not self.censored:
            return f"{span} in {_percent(self.reached)} of resamples, {missing}"
        text = f"censored: {missing}"
        return text if span is None else f"{text}, {span} in the other {_percent(self.reached)}"

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "reached": self.reached, "censored": self.censored,
                "resamples": self.resamples, **dict(self.missing), "describe": self.describe()}


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
    knee: float | None           # None where undefined (see ``knee_status``)
    knee_status: str             # KNEE_DEFINED or "undefined: <why>"
    curve: PchipInterpolator = field(repr=False)
    intervals: dict[str, Interval] | None = None  # bootstrap over seeds, by name (region_low, region_high, knee)

    @property
    def region_low(self) -> float | None:
        return self.low.rank

    @property
    def region_high(self) -> float | None:
        return self.high.rank

    @property
    def knee_defined(self) -> bool:
        return self.knee is not None

    def describe_knee(self) -> str:
        """``31.04``, or ``undefined (<why>)``."""
        if self.knee is not None:
            return f"{self.knee:.2f}"
        return f"undefined ({self.knee_status.removeprefix('undefined: ')})"

    def secant(self, r: np.ndarray | float) -> np.ndarray:
        """The straight line joining the fitted curve's endpoints, in normalized units."""
        r0, r1 = self.ranks[0], self.ranks[-1]
        y0, y1 = self.curve(r0), self.curve(r1)
        return y0 + (y1 - y0) * (np.asarray(r, dtype=float) - r0) / (r1 - r0)

    def summary(self) -> str:
        text = (f"region [{self.low.describe()}, {self.high.describe()}] for band "
                f"{self.band[0]:.0%}-{self.band[1]:.0%} of reference {self.reference:.4g}; knee {self.describe_knee()}")
        if self.intervals:
            text += "; 95% bootstrap: " + "; ".join(f"{k} {v.describe()}" for k, v in self.intervals.items())
        return text

    def to_dict(self) -> dict:
        """JSON-ready form (no arrays of the fitted curve)."""
        def level(c: LevelCrossing) -> dict:
            return {"level": c.level, "status": c.status, "rank": c.rank, "bound": c.bound}

        return {"reference": self.reference, "band": list(self.band), "region_low": level(self.low),
                "region_high": level(self.high), "knee": self.knee, "knee_status": self.knee_status,
                "intervals": {k: v.to_dict() for k, v in (self.intervals or {}).items()} or None}


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
    """Parallel float arrays: finite positive ranks, accuracies that are fractions or percentages."""
    try:
        r = np.asarray(list(ranks), dtype=float)
        a = np.asarray(list(accuracy), dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ranks/accuracy: expected sequences of numbers ({exc})") from None
    if r.ndim != 1 or a.ndim != 1 or r.shape != a.shape:
        raise ValueError(f"ranks/accuracy: lengths differ ({r.size} ranks, {a.size} accuracies)")
    if np.isnan(a).any() or np.isnan(r).any():
        raise ValueError("accuracy: contains NaN; drop failed runs before fitting")
    if np.isinf(a).any() or (a < 0).any():
        raise ValueError(f"accuracy: must be finite and non-negative, got {a[np.isinf(a) | (a < 0)].tolist()}")
    if (a > PERCENT_MAX).any():
        raise ValueError(f"accuracy: must be a fraction (0-1) or a percentage (0-100), got max {a.max():g}")
    if np.isinf(r).any():
        raise ValueError("ranks: must be finite")
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


def check_units(mean_accuracy: np.ndarray, reference: float) -> None:
    """Refuse accuracies and a reference in different units (fractions up to 1, percentages up to 100).

    Mixing them normalizes accuracy to around 100 (or 0.01) and silently puts both levels outside the sweep.
    Refused: one side above 1 (so a percentage), the other not, and the best mean accuracy over the reference
    off by :data:`UNIT_RATIO` or more. (Noisy fractions a little above 1, or a reference far from the students
    in the same units, pass.)
    """
    top = float(np.max(mean_accuracy))
    ratio = top / reference
    if top > 1 >= reference and ratio >= UNIT_RATIO:
        raise ValueError(f"reference: accuracies look like percentages (max {top:g}) but the reference is a "
                         f"fraction ({reference:g}); use the same units")
    if reference > 1 >= top and ratio <= 1 / UNIT_RATIO:
        raise ValueError(f"reference: accuracies look like fractions (max {top:g}) but the reference is a "
                         f"percentage ({reference:g}); use the same units")


def resolve_reference(reference: float | str, mean_accuracy: np.ndarray, teacher: float | None = None) -> float:
    """A number, ``"teacher"`` (needs ``teacher``) or ``"best_student"`` (the highest mean accuracy).

    The value must be a positive accuracy in the same units as ``mean_accuracy`` (:func:`check_units`).
    """
    if isinstance(reference, str):
        if reference == "best_student":
            value = float(np.max(mean_accuracy))
        elif reference == "teacher" and teacher is not None:
            value = float(teacher)
        else:
            raise ValueError(f"reference: {reference!r} is not a number or one of {', '.join(REFERENCE_CHOICES)}"
                             + (" (no teacher accuracy given)" if reference == "teacher" else ""))
    else:
        try:
            value = float(reference)
        except (TypeError, ValueError):
            raise ValueError(f"reference: {reference!r} is not a number or one of "
                             f"{', '.join(REFERENCE_CHOICES)}") from None
    if not value > 0 or math.isinf(value):
        raise ValueError(f"reference: must be a positive accuracy, got {reference!r}")
    if value > PERCENT_MAX:
        raise ValueError(f"reference: must be a fraction (0-1) or a percentage (0-100), got {value:g}")
    check_units(mean_accuracy, value)
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


def knee(curve: PchipInterpolator, r0: float, r1: float, resolution: float = KNEE_RESOLUTION) -> float | None:
    """Rank in ``[r0, r1]`` where the curve lies farthest *above* the secant joining its endpoints, or ``None``.

    The perpendicular distance is the signed vertical gap (curve minus secant) times a constant, so the gap is
    maximized: on a grid of ``resolution`` and then refined by a bounded scalar search around the best grid point.
    Points *below* the secant never count (a convex stretch is not where adding rank stops paying off). ``None``
    when the curve never rises more than :data:`KNEE_MIN_GAP` above the secant (flat, linear, convex).
    """
    y0, y1 = float(curve(r0)), float(curve(r1))

    def gap(r: np.ndarray | float) -> np.ndarray:
        return curve(r) - (y0 + (y1 - y0) * (np.asarray(r) - r0) / (r1 - r0))

    grid = np.linspace(r0, r1, max(int(math.ceil((r1 - r0) / resolution)) + 1, 2))
    gaps = gap(grid)
    best = int(np.argmax(gaps))
    at, height = float(grid[best]), float(gaps[best])
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    if hi > lo:
        refined = minimize_scalar(lambda r: -float(gap(r)), bounds=(lo, hi), method="bounded",
                                  options={"xatol": resolution / 100})
        if -refined.fun >= height:
            at, height = float(refined.x), float(-refined.fun)
    return at if height > KNEE_MIN_GAP else None


def knee_with_status(curve: PchipInterpolator, ranks: np.ndarray) -> tuple[float | None, str]:
    """The knee of the curve fitted through ``ranks`` and :data:`KNEE_DEFINED` or why it is undefined."""
    if ranks.size < 3:
        return None, KNEE_TOO_FEW_RANKS
    at = knee(curve, float(ranks[0]), float(ranks[-1]))
    return (at, KNEE_DEFINED) if at is not None else (None, KNEE_NOT_ABOVE_SECANT)


@dataclass(frozen=True)
class _Fit:
    """One fit of the curve: per-rank means, normalized and monotone points, the interpolant and its answers."""

    mean: np.ndarray
    normalized: np.ndarray
    monotone: np.ndarray
    curve: PchipInterpolator
    low: LevelCrossing
    high: LevelCrossing
    knee: float | None
    knee_status: str


def _fit(ranks: np.ndarray, groups: list[np.ndarray], reference: float, band: tuple[float, float]) -> _Fit:
    mean = np.array([g.mean() for g in groups])
    normalized = mean / reference
    monotone, curve = fit_curve(ranks, normalized, weights=np.array([g.size for g in groups], dtype=float))
    return _Fit(mean, normalized, monotone, curve, crossing(curve, ranks, monotone, band[0]),
                crossing(curve, ranks, monotone, band[1]), *knee_with_status(curve, ranks))


def effective_rank(ranks: Iterable[float], accuracy: Iterable[float], reference: float | str,
                   band: Sequence[float] = DEFAULT_BAND, *, teacher_accuracy: float | None = None,
                   n_bootstrap: int = 200, seed: int = 0) -> EffectiveRankResult:
    """Effective-rank region and knee of an accuracy-vs-rank table.

    ``ranks``/``accuracy`` are parallel sequences; a rank listed several times holds several seeds (the
    curve uses their mean and, when any rank has two or more, a bootstrap over seeds gives 95% intervals).
    ``reference`` is a number, ``"best_student"``, or ``"teacher"`` with ``teacher_accuracy`` given, in the
    units of ``accuracy`` (fractions or percentages).
    """
    lo_hi = validate_band(band)
    distinct, groups = group_by_rank(ranks, accuracy)
    ref = resolve_reference(reference, np.array([g.mean() for g in groups]), teacher_accuracy)
    fit = _fit(distinct, groups, ref, lo_hi)
    intervals = None
    if n_bootstrap > 0 and max(g.size for g in groups) > 1:
        intervals = _bootstrap(distinct, groups, ref if reference != "best_student" else None, lo_hi,
                               n_bootstrap, seed)
    return EffectiveRankResult(distinct, fit.mean, fit.normalized, fit.monotone, ref, lo_hi, fit.low, fit.high,
                               fit.knee, fit.knee_status, fit.curve, intervals)


def _bootstrap(ranks: np.ndarray, groups: list[np.ndarray], reference: float | None, band: tuple[float, float],
               n: int, seed: int) -> dict[str, Interval]:
    """95% percentile intervals of r_lo, r_hi and knee, resampling seeds within each rank.

    ``reference`` is the fixed reference accuracy, or ``None`` for each resample's best student. Each interval
    counts the resamples in which its quantity is missing (level outside the sweep, knee undefined).
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"region_low": [], "region_high": [], "knee": []}
    missing: dict[str, dict[str, int]] = {"region_low": {EXCEEDED_AT_FIRST_RANK: 0, NOT_REACHED: 0},
                                          "region_high": {EXCEEDED_AT_FIRST_RANK: 0, NOT_REACHED: 0},
                                          "knee": {KNEE_UNDEFINED: 0}}
    for _ in range(n):
        sample = [rng.choice(g, size=g.size, replace=True) for g in groups]
        means = np.array([g.mean() for g in sample])
        fit = _fit(ranks, sample, reference if reference is not None else float(means.max()), band)
        for name, crossed in (("region_low", fit.low), ("region_high", fit.high)):
            if crossed.rank is not None:
                draws[name].append(crossed.rank)
            else:
                missing[name][crossed.status] += 1
        if fit.knee is not None:
            draws["knee"].append(fit.knee)
        else:
            missing["knee"][KNEE_UNDEFINED] += 1
    intervals = {}
    for name, values in draws.items():
        low, high = ((float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if values
                     else (None, None))
        intervals[name] = Interval(name, low, high, len(values) / n, n,
                                   tuple((why, count / n) for why, count in missing[name].items()),
                                   float(ranks[0]), float(ranks[-1]))
    return intervals


def sensitivity_table(ranks: Iterable[float], accuracy: Iterable[float],
                      references: dict[str, float | str], bands: Sequence[Sequence[float]],
                      teacher_accuracy: float | None = None) -> list[dict]:
    """Region and knee for every (reference, band) pair: one dict per pair, ready for a DataFrame.

    ``references`` maps a label (e.g. ``"teacher"``, ``"teacher - 1pt"``) to a reference accepted by
    :func:`effective_rank`. ``knee`` is the rank rounded to 2 decimals, or ``"undefined"``.
    """
    ranks, accuracy = list(ranks), list(accuracy)
    rows = []
    for label, reference in references.items():
        for band in bands:
            res = effective_rank(ranks, accuracy, reference, band, teacher_accuracy=teacher_accuracy, n_bootstrap=0)
            rows.append({"reference": label, "reference_accuracy": res.reference,
                         "band": f"{res.band[0]:.0%}-{res.band[1]:.0%}",
                         "region_low": res.low.describe(), "region_high": res.high.describe(),
                         "knee": round(res.knee, 2) if res.knee is not None else "undefined"})
    return rows
