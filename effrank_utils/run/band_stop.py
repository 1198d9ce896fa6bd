"""The band stop: a student that is clearly outside the band stops before it has converged.

The region needs converged accuracies only from the students that decide a crossing; the others need only lie
on the right side of the band. With ``band_stop = m > 0`` a student stops

* ``above band`` once its validation accuracy has been at least ``(hi + m)`` times the teacher's for
  ``patience`` epochs in a row (one, without patience): it is within ``1 - hi - m`` of the teacher, and training
  only raises it; one lucky epoch on a small validation split is not enough, and
* ``below band`` at its first validation plateau if its best validation accuracy is at most ``(lo - m)`` times the
  teacher's (instead of the learning-rate cuts that would refine an accuracy that decides nothing).

"Clearly" also means beyond the validation split's sampling noise: the margin used is the larger of ``m`` and
:data:`~effrank_utils.estimate.noise.NOISE_Z` binomial standard errors of the teacher's validation accuracy
(relative to it). On a small split of a hard task that margin is wide and the band stop rarely fires: measured on
CIFAR-10 with 300 validation images at 42 % accuracy, a fixed 0.03 stopped students that the test split put below
the band.

The rule reads only the student's own history and numbers fixed by the config and the data (the band, the margin,
the teacher's validation accuracy and the validation split's size), so a task stays a function of (config, rank,
seed), fused or not, resumed or not. It is exact for the band it was trained for: a region read at another band
may see students stopped early.
"""

from __future__ import annotations

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
        How far outside the band (a fraction of the teacher's accuracy) is "clearly"; ``> 0``. Widened to the
        validation split's noise margin when that is larger (:func:`~effrank_utils.estimate.noise.effective_margin`).
    recipe
        The students' recipe: its ``patience`` defines a plateau, and the epochs in a row above the band.
    validation_size
        Images in the validation split.

    Examples
    --------
    >>> from effrank_utils.training.loop import Recipe
    >>> recipe = Recipe(50, 1e-3, 0.0, schedule="plateau", patience=2)
    >>> rule = band_stop_rule(0.9, (0.8, 0.95), 0.03, recipe, validation_size=10_000)
    >>> rule([{"val_accuracy": 0.89}]) is None  # above, but one epoch only
    True
    >>> rule([{"val_accuracy": 0.89}, {"val_accuracy": 0.9}])
    'above band'
    >>> rule([{"val_accuracy": 0.5}]) is None  # improving: no plateau yet
    True
    >>> rule([{"val_accuracy": 0.5}, {"val_accuracy": 0.4}, {"val_accuracy": 0.45}])
    'below band'
    >>> noisy = band_stop_rule(0.9, (0.8, 0.95), 0.03, recipe, validation_size=100)  # margin 0.067, not 0.03
    >>> noisy([{"val_accuracy": 0.89}, {"val_accuracy": 0.9}]) is None
    True
    """
    lo, hi = band
    margin = effective_margin(margin, teacher_val_accuracy, validation_size)
    above, below = (hi + margin) * teacher_val_accuracy, (lo - margin) * teacher_val_accuracy
    in_a_row = max(1, recipe.patience)

    def rule(history: Sequence[dict]) -> str | None:
        recent = history[-in_a_row:]
        if len(recent) == in_a_row and all(h["val_accuracy"] >= above for h in recent):
            return ABOVE_BAND
        if plateaus(history, recipe.patience) and max(h["val_accuracy"] for h in history) <= below:
            return BELOW_BAND
        return None

    return rule
