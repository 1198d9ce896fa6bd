"""Adaptive rank refinement: after a coarse sweep, add ranks only where the answer is still uncertain.

Each quantity of the answer -- the band's two crossings and the knee (where defined) -- lies between two swept
ranks. While that bracket is wider than the tolerance (``max(1, 5%`` of the rank``)``), its midpoint is proposed.
A level already exceeded at the smallest rank sends the search below it; one never reached, above the largest
rank (up to ``max_rank``). A knee undefined for want of a third rank proposes the middle of the sweep; one
undefined because the fitted curve never rises above its secant (flat, linear, convex) proposes nothing.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .curves import CROSSED, DEFAULT_BAND, EXCEEDED_AT_FIRST_RANK, KNEE_TOO_FEW_RANKS, NOT_REACHED, effective_rank


def tolerance(rank: float, absolute: float = 1.0, relative: float = 0.05) -> float:
    """How tightly a quantity at ``rank`` must be bracketed: 1 rank or 5% of it, whichever is larger."""
    return max(absolute, relative * rank)


def _bisect(swept: np.ndarray, value: float) -> int | None:
    """Midpoint of the swept ranks bracketing ``value`` if that bracket is wider than the tolerance."""
    above = int(np.searchsorted(swept, value, side="left"))
    if above == 0 or above >= swept.size:
        return None
    lo, hi = swept[above - 1], swept[above]
    if value == hi or hi - lo <= tolerance(value) or hi - lo <= 1:
        return None
    return int(round((lo + hi) / 2))


def next_ranks(ranks: Iterable[float], accuracy: Iterable[float], reference: float | str,
               band: Sequence[float] = DEFAULT_BAND, max_rank: int | None = None, *,
               teacher_accuracy: float | None = None) -> list[int]:
    """Ranks to sweep next (sorted, new), or an empty list when region and knee are bracketed to tolerance.
    ``reference`` and ``teacher_accuracy`` are :func:`~effrank_utils.estimate.curves.effective_rank`'s."""
    result = effective_rank(ranks, accuracy, reference, band, teacher_accuracy=teacher_accuracy, n_bootstrap=0)
    swept = result.ranks
    proposals: set[int] = set()
    for crossing in (result.low, result.high):
        if crossing.status == CROSSED:
            mid = _bisect(swept, crossing.rank)
            if mid is not None:
                proposals.add(mid)
        elif crossing.status == EXCEEDED_AT_FIRST_RANK and swept[0] > 1:
            proposals.add(max(1, int(swept[0]) // 2))
        elif crossing.status == NOT_REACHED and (max_rank is None or swept[-1] < max_rank):
            proposals.add(int(min(2 * swept[-1], max_rank or 2 * swept[-1])))
    if result.knee is not None:
        mid = _bisect(swept, result.knee)
    elif result.knee_status == KNEE_TOO_FEW_RANKS:  # a knee needs a third rank: split the sweep
        mid = _bisect(swept, (swept[0] + swept[-1]) / 2)
    else:  # flat, linear or convex: no knee to bracket
        mid = None
    if mid is not None:
        proposals.add(mid)
    return sorted(r for r in proposals if r not in set(swept.astype(int).tolist()))
