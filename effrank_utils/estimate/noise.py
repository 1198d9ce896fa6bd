"""How far outside the band is *clearly* outside, given how many images the accuracies were measured on.

An accuracy measured on ``n`` images carries a binomial standard error ``sqrt(p (1 - p) / n)``. The band stop
(:mod:`effrank_utils.run.band_stop`) compares students with the teacher on the validation split, so its margin
must exceed that noise, or a student whose validation accuracy looks above the band can lie below it on the
test split.
"""

from __future__ import annotations

import math

__all__ = ["NOISE_Z", "noise_margin", "effective_margin"]

NOISE_Z = 2.0  # standard errors of the validation accuracy that "clearly" outside the band must exceed


def noise_margin(teacher_val_accuracy: float, validation_size: int) -> float:
    """``NOISE_Z`` binomial standard errors of the teacher's validation accuracy, as a fraction of it (infinite,
    so that nothing is judged outside the band, for a teacher that gets no validation image right).

    Examples
    --------
    >>> round(noise_margin(0.9, 100), 4)  # 2 * sqrt(0.9 * 0.1 / 100) / 0.9
    0.0667
    """
    p = teacher_val_accuracy
    if p <= 0 or validation_size < 1:
        return math.inf
    return NOISE_Z * math.sqrt(p * (1 - p) / validation_size) / p


def effective_margin(margin: float, teacher_val_accuracy: float, validation_size: int) -> float:
    """The margin the band stop uses: ``margin`` or the validation split's noise margin, whichever is larger."""
    return max(margin, noise_margin(teacher_val_accuracy, validation_size))
