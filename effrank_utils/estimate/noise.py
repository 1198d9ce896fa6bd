"""How far outside the band is *clearly* outside, given the images a student and the teacher were compared on.

The band stop (:mod:`effrank_utils.run.band_stop`) compares a student's validation accuracy with the teacher's on
the same images, so what can mislead it is the noise of their *difference*: a paired comparison. Per image the
difference of the two being right is -1, 0 or 1; its variance is the discordance (the share of images exactly
one of them gets right) minus the squared accuracy difference. A student that agrees with the teacher on almost
every image has a difference known closely even on a small split; one that disagrees often, a wide one. The
teacher's own binomial noise, ``sqrt(p (1 - p) / n)``, overstates the first and understates the second.
"""

from __future__ import annotations

import math

__all__ = ["NOISE_Z", "MARGIN_RULE", "MARGIN_RULE_WORDS", "UNRECORDED_MARGIN", "paired_noise_margin",
           "effective_margin"]

NOISE_Z = 2.0  # standard errors of the paired difference that "clearly" outside the band must exceed
#: The name of this margin rule, recorded with every band-stop study (a run folder made before the record held
#: students stopped under the teacher's binomial margin, or under this one: it cannot be told which).
MARGIN_RULE = "paired"
MARGIN_RULE_WORDS = f"{NOISE_Z:g} standard errors of its difference from the teacher on the validation split"
UNRECORDED_MARGIN = "unrecorded"  # what a band-stop run folder made before the record is said to hold


def paired_noise_margin(student_accuracy: float, teacher_accuracy: float, discordant: float, size: int) -> float:
    """``NOISE_Z`` standard errors of the student's accuracy minus the teacher's on ``size`` shared images, as a
    fraction of the teacher's accuracy (infinite, so that nothing is judged outside the band, for a teacher that
    gets no image right or an empty split).

    Parameters
    ----------
    student_accuracy, teacher_accuracy
        Their accuracies on the same images.
    discordant
        The share of those images exactly one of them gets right
        (:func:`~effrank_utils.training.loop.discordance`).
    size
        How many images.

    Examples
    --------
    >>> round(paired_noise_margin(0.90, 0.90, 0.01, 144), 4)  # agrees on 99 %: 2 * sqrt(0.01 / 144) / 0.9
    0.0185
    >>> round(paired_noise_margin(0.50, 0.90, 0.44, 144), 4)  # disagrees often: 2 * sqrt((0.44 - 0.16) / 144) / 0.9
    0.098
    """
    if teacher_accuracy <= 0 or size < 1:
        return math.inf
    variance = max(discordant - (student_accuracy - teacher_accuracy) ** 2, 0.0)
    return NOISE_Z * math.sqrt(variance / size) / teacher_accuracy


def effective_margin(margin: float, student_accuracy: float, teacher_accuracy: float, discordant: float,
                     size: int) -> float:
    """The margin the band stop uses for one epoch: ``margin`` or the paired noise margin, whichever is larger."""
    return max(margin, paired_noise_margin(student_accuracy, teacher_accuracy, discordant, size))
