"""The band stop: a student that is clearly outside the band stops before it has converged.

The region needs converged accuracies only from the students that decide a crossing; the others need only lie
on the right side of the band. With ``band_stop = m > 0`` a student stops

* ``above band`` once its validation accuracy has been at least ``(hi + m)`` times the teacher's for
  ``patience`` epochs in a row (one, without patience): it is within ``1 - hi - m`` of the teacher, and training
  only raises it; one lucky epoch on a small validation split is not enough, and
* ``below band`` at its first validation plateau if its best validation accuracy is at most ``(lo - m)`` times the
  teacher's (instead of the learning-rate cuts that would refine an accuracy that decides nothing).

"Clearly" also means beyond the validation split's sampling noise: the margin used in an epoch is the larger of
``m`` and :data:`~effrank_utils.estimate.noise.NOISE_Z` standard errors of the student's validation accuracy minus
the teacher's, a paired comparison on the same images (:func:`~effrank_utils.estimate.noise.paired_noise_margin`;
each epoch's record carries the student's ``val_discordant`` with the teacher). A student that agrees with the
teacher on almost every image is judged closely even on a small split; one that disagrees often, widely.
Measured on CIFAR-10 with 300 validation images at 42 % accuracy, a fixed 0.03 stopped students that the test
split put below the band. An epoch without ``val_discordant`` is never judged outside the band.

The rule reads only the student's own history and numbers fixed by the config and the data (the band, the margin,
the teacher's validation accuracy and the validation split's size), so a task stays a function of (config, rank,
seed), fused or not, resumed or not. It is exact for the band it was trained for: a region read at another band
may see students stopped early.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from ..estimate.noise import effective_margin
from ..training.loop import Recipe, plateaus

ABOVE_BAND = "above band"
BELOW_BAND = "below band"


def band_stop_rule(teacher_val_accuracy: float, band: Sequence[float], margin: float, recipe: Recipe,
                   validation_size: int) -> Callable[[Sequence[dict]], str | None]:
    """The stop rule for :func:`effrank_utils.training.loop.fit`: ``ABOVE_BAND``, ``BELOW_BAND`` or ``None``.

    Parameters
    ----------
    teacher_val_accuracy
        The teacher's accuracy on the validation split (the students' accuracies are read on the same split).
    band
        ``(lo, hi)``, fractions of the teacher's accuracy.
    margin
        How far outside the band (a fraction of the teacher's accuracy) is "clearly"; ``> 0``. Widened in an epoch
        to the paired noise margin of the student against the teacher when that is larger
        (:func:`~effrank_utils.estimate.noise.effective_margin`).
    recipe
        The students' recipe: its ``patience`` defines a plateau, and the epochs in a row above the band.
    validation_size
        Images in the validation split.

    Examples
    --------
    >>> from effrank_utils.training.loop import Recipe
    >>> recipe = Recipe(50, 1e-3, 0.0, schedule="plateau", patience=2)
    >>> rule = band_stop_rule(0.9, (0.8, 0.95), 0.03, recipe, validation_size=10_000)
    >>> rule([{"val_accuracy": 0.89, "val_discordant": 0.02}]) is None  # above, but one epoch only
    True
    >>> rule([{"val_accuracy": 0.89, "val_discordant": 0.02}, {"val_accuracy": 0.9, "val_discordant": 0.01}])
    'above band'
    >>> rule([{"val_accuracy": 0.5, "val_discordant": 0.4}]) is None  # improving: no plateau yet
    True
    >>> rule([{"val_accuracy": a, "val_discordant": 0.45} for a in (0.5, 0.4, 0.45)])
    'below band'
    >>> small = band_stop_rule(0.9, (0.8, 0.95), 0.03, recipe, validation_size=100)
    >>> small([{"val_accuracy": 0.89, "val_discordant": 0.1}] * 2) is None  # paired margin 0.070, not 0.03
    True
    >>> small([{"val_accuracy": 0.89, "val_discordant": 0.01}] * 2)  # agrees on 99 of 100: margin 0.03
    'above band'
    """
    lo, hi = band

    def margin_of(h: dict) -> float:
        if "val_discordant" not in h:
            return math.inf
        return effective_margin(margin, h["val_accuracy"], teacher_val_accuracy, h["val_discordant"],
                                validation_size)

    def above(h: dict) -> bool:
        return h["val_accuracy"] >= (hi + margin_of(h)) * teacher_val_accuracy

    def below(h: dict) -> bool:
        return h["val_accuracy"] <= (lo - margin_of(h)) * teacher_val_accuracy

    in_a_row = max(1, recipe.patience)

    def rule(history: Sequence[dict]) -> str | None:
        recent = history[-in_a_row:]
        if len(recent) == in_a_row and all(above(h) for h in recent):
            return ABOVE_BAND
        if plateaus(history, recipe.patience) and all(below(h) for h in history):
            return BELOW_BAND
        return None

    return rule
