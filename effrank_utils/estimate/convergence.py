"""Has the estimate settled? The region and knee as a function of the students' training budget.

From the per-epoch test accuracy every student recorded, the study is re-analyzed as if each student had been
given ``b`` epochs (a student that stopped earlier keeps its last accuracy: it had converged), for budgets
``E/2^k`` up to ``E``, the most epochs any student trained. The estimate is *converged* when r_lo, r_hi and the
knee each moved less than ``max(0.5, 5%)`` of their rank over the last budget step (a doubling).

The check reads one run: students whose stopping rule ended them early (a noisy validation plateau, then rate cuts)
hold still, so it can call converged what a longer rule still moves (measured on ``demo``: patience 8 converged,
patience 12 moved r_hi by 0.65). :func:`movements` holds two runs of one study, a shorter and a longer budget, to
the same tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .curves import (
    CROSSED,
    DEFAULT_BAND,
    EXCEEDED_AT_FIRST_RANK,
    NOT_REACHED,
    QUANTITY_LABELS,
    EffectiveRankResult,
    effective_rank,
)
from .refine import tolerance

ABSOLUTE_TOLERANCE = 0.5   # ranks
RELATIVE_TOLERANCE = 0.05  # of the rank


def budget_steps(max_epochs: int) -> list[int]:
    """Budgets ``ceil(E / 2^k)`` for k = ..., 2, 1, 0, distinct and ascending: the last step is a doubling."""
    if max_epochs < 1:
        raise ValueError(f"max_epochs: must be >= 1, got {max_epochs}")
    steps = {max_epochs}
    budget = max_epochs
    while budget > 1:
        budget = math.ceil(budget / 2)
        steps.add(budget)
    return sorted(steps)


def accuracy_at_budget(epochs: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Per (rank, seed): the test accuracy after ``min(budget, epochs it trained)`` epochs, as columns ``rank``,
    ``seed``, ``epoch`` and ``test_accuracy``."""
    within = epochs[epochs["epoch"] <= budget].sort_values(["rank", "seed", "epoch"])
    return within.groupby(["rank", "seed"], as_index=False).tail(1)[["rank", "seed", "epoch", "test_accuracy"]]


def _value(result: EffectiveRankResult, name: str) -> tuple[str, float | None]:
    """A quantity's status and value: ``crossed``/``defined`` with the rank, else why it is missing."""
    if name == "knee":
        return ("defined", result.knee) if result.knee is not None else (result.knee_status, None)
    crossing = getattr(result, name.removeprefix("region_"))
    return crossing.status, crossing.rank if crossing.status == CROSSED else None


@dataclass(frozen=True)
class Movement:
    """How far one quantity moved over the last budget step, and the tolerance it is held to."""

    name: str
    before: tuple[str, float | None]  # (status, value) at the previous budget
    after: tuple[str, float | None]   # at the last budget

    @property
    def distance(self) -> float:
        """|after - before| when both exist; 0 when both are missing for the same reason; inf otherwise."""
        (status0, v0), (status1, v1) = self.before, self.after
        if v0 is not None and v1 is not None:
            return abs(v1 - v0)
        return 0.0 if status0 == status1 else math.inf

    @property
    def tolerance(self) -> float:
        value = self.after[1] if self.after[1] is not None else 0.0
        return tolerance(value, ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE)

    @property
    def settled(self) -> bool:
        return self.distance < self.tolerance

    def to_dict(self) -> dict:
        """JSON-ready: ``distance`` (None when infinite), ``tolerance`` and ``settled``."""
        return {"distance": None if math.isinf(self.distance) else self.distance, "tolerance": self.tolerance,
                "settled": self.settled}

    def describe(self) -> str:
        label = QUANTITY_LABELS[self.name]
        if self.before[1] is None and self.after[1] is None and self.before[0] == self.after[0]:
            return f"{label} {self.after[0].replace('_', ' ')} at both budgets"
        if math.isinf(self.distance):
            show = lambda s: f"{s[1]:.2f}" if s[1] is not None else s[0].replace("_", " ")  # noqa: E731
            return f"{label} changed from {show(self.before)} to {show(self.after)}"
        return f"{label} moved {self.distance:.2f} (tolerance {self.tolerance:.2f})"


def describe_missing(missing: Sequence[tuple[int, int]], shown: int = 6) -> str:
    """``rank 4 seed 0, rank 8 seed 0`` (the first ``shown``, then how many more)."""
    names = [f"rank {r} seed {s}" for r, s in missing]
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


@dataclass(frozen=True)
class Convergence:
    """Region and knee at each budget, and whether the last budget step moved them less than the tolerance. A
    study with ``missing`` students (no result yet, or failed) is never converged."""

    budgets: tuple[int, ...]
    results: tuple[EffectiveRankResult, ...] = field(repr=False)
    movements: tuple[Movement, ...]   # empty when there is a single budget
    stop_reasons: Mapping[str, int]   # students by why they stopped (plateau, cap)
    missing: tuple[tuple[int, int], ...] = ()  # (rank, seed) of the students the study lacks

    @property
    def converged(self) -> bool:
        return not self.missing and bool(self.movements) and all(m.settled for m in self.movements)

    def verdict(self) -> str:
        """``converged (...)`` or ``not converged: train longer (...)`` in words, naming how far each quantity moved
        against its tolerance (all of them when converged, so that one close to its tolerance is seen as such; those
        that did not settle otherwise), or why the study is incomplete."""
        if self.missing:
            return (f"not converged: the study is incomplete (no result for {describe_missing(self.missing)}); "
                    "rerun the sweep to finish it")
        if not self.movements:
            return "not converged: train longer (one budget only; the students trained a single epoch)"
        said = "converged" if self.converged else "not converged: train longer"
        return f"{said} ({describe_movements(self.movements)} from {self.budgets[-2]} to {self.budgets[-1]} epochs)"

    def table(self) -> pd.DataFrame:
        """One line per budget: r_lo, r_hi and knee (NaN where missing)."""
        return pd.DataFrame([{"budget": b, **{n: _value(r, n)[1] for n in QUANTITY_LABELS}}
                             for b, r in zip(self.budgets, self.results)]).astype(float).astype({"budget": int})

    def to_dict(self) -> dict:
        """JSON-ready: ``converged``, ``verdict``, the budgets and the region/knee at each, the last step's
        movements and the students' stop reasons."""
        return {"converged": self.converged, "verdict": self.verdict(), "budgets": list(self.budgets),
                "at_budget": [{"budget": b, **{n: _value(r, n)[1] for n in QUANTITY_LABELS},
                               **{f"{n}_status": _value(r, n)[0] for n in QUANTITY_LABELS}}
                              for b, r in zip(self.budgets, self.results)],
                "last_step": {m.name: m.to_dict() for m in self.movements},
                "tolerance": {"absolute": ABSOLUTE_TOLERANCE, "relative": RELATIVE_TOLERANCE},
                "stop_reasons": dict(self.stop_reasons), "missing": [list(t) for t in self.missing]}


def movements(before: EffectiveRankResult, after: EffectiveRankResult) -> tuple[Movement, ...]:
    """How far r_lo, r_hi and the knee moved from ``before`` to ``after`` (two budgets, or two runs of one study
    under a shorter and a longer stopping rule), each held to the convergence tolerance."""
    return tuple(Movement(name, _value(before, name), _value(after, name)) for name in QUANTITY_LABELS)


def describe_movements(moved: Sequence[Movement]) -> str:
    """What moved, in words: every quantity when all settled, else only those that did not."""
    settled = all(m.settled for m in moved)
    return "; ".join(m.describe() for m in moved if settled or not m.settled)


def deciding_ranks(result: EffectiveRankResult) -> list[int]:
    """The swept ranks whose students decide r_lo, r_hi and the knee, ascending: the two that bracket each crossed
    level and the knee (the rank itself and the one below where it falls on a swept rank), the smallest rank for a
    level already reached there, the largest for one never reached. The other students lie on one side of every
    level.

    Examples
    --------
    >>> from effrank_utils.estimate.curves import effective_rank
    >>> result = effective_rank([1, 2, 4, 8, 16], [0.3, 0.6, 0.85, 0.9, 0.92], 0.93, n_bootstrap=0)
    >>> deciding_ranks(result)
    [2, 4, 8]
    """
    swept = result.ranks

    def bracket(value: float) -> list[float]:
        above = int(np.searchsorted(swept, value, side="left"))
        return swept[max(above - 1, 0):above + 1].tolist()

    picks: set[float] = set()
    for level in (result.low, result.high):
        if level.status == CROSSED:
            picks.update(bracket(level.rank))
        elif level.status in (EXCEEDED_AT_FIRST_RANK, NOT_REACHED):
            picks.add(swept[0] if level.status == EXCEEDED_AT_FIRST_RANK else swept[-1])
    if result.knee is not None:
        picks.update(bracket(result.knee))
    return sorted(int(r) for r in picks)


def convergence(epochs: pd.DataFrame, reference: float | str, band: Sequence[float] = DEFAULT_BAND,
                stop_reasons: Sequence[str | None] = (), missing: Sequence[tuple[int, int]] = ()) -> Convergence:
    """Region and knee at budgets ``E/2^k .. E`` from per-epoch records (columns ``rank``, ``seed``, ``epoch``,
    ``test_accuracy``), and whether the last step moved them less than the tolerance.

    ``reference`` is an accuracy, or ``"best_student"`` (then the best student *at each budget*).
    ``stop_reasons`` (one per student) are counted for the record; ``missing`` (rank, seed) students make the
    estimate not converged whatever it moved.
    """
    if epochs.empty:
        raise ValueError("epochs: no per-epoch records; the students' histories are needed")
    budgets = budget_steps(int(epochs["epoch"].max()))
    results = []
    for budget in budgets:
        at = accuracy_at_budget(epochs, budget)
        results.append(effective_rank(at["rank"], at["test_accuracy"], reference, band, n_bootstrap=0))
    moved = () if len(results) < 2 else movements(results[-2], results[-1])
    counts = pd.Series([r for r in stop_reasons if isinstance(r, str)], dtype=object).value_counts()
    return Convergence(tuple(budgets), tuple(results), moved, {str(k): int(v) for k, v in counts.items()},
                       tuple((int(r), int(s)) for r, s in missing))
