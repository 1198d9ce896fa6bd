"""Curve analysis: closed-form cases, noisy data, out-of-range levels, seeds, sensitivity, bad input."""

import math

import numpy as np
import pytest

from effrank_utils.estimate.curves import (
    CROSSED,
    EXCEEDED_AT_FIRST_RANK,
    NOT_REACHED,
    effective_rank,
    sensitivity_table,
)


def test_linear_ramp_crossings_are_exact():
    r = np.array([1.0, 11.0, 21.0, 31.0, 41.0])
    acc = 0.5 + 0.5 * (r - 1) / 40  # reaches 1.0 at r=41
    res = effective_rank(r, acc, reference=1.0)
    # level L reached at r = 1 + 40 * (L - 0.5) / 0.5
    assert res.region_low == pytest.approx(1 + 80 * 0.35, abs=1e-3)
    assert res.region_high == pytest.approx(1 + 80 * 0.45, abs=1e-3)
    assert res.low.status == res.high.status == CROSSED


@pytest.mark.parametrize("tau", [4.0, 10.0])
def test_exponential_saturation_matches_closed_form(tau):
    r = np.arange(1.0, 80.25, 0.25)
    acc = 1 - np.exp(-r / tau)
    res = effective_rank(r, acc, reference=1.0)
    for level, got in ((0.85, res.region_low), (0.95, res.region_high)):
        assert got == pytest.approx(-tau * math.log(1 - level), abs=1e-3)
    slope = (acc[-1] - acc[0]) / (r[-1] - r[0])  # the secant's slope; the knee is where f' equals it
    assert res.knee == pytest.approx(-tau * math.log(slope * tau), abs=1e-3)


def test_reference_scales_levels():
    r = np.arange(1.0, 65.0)
    acc = 0.8 * (1 - np.exp(-r / 6))
    res = effective_rank(r, acc, reference=0.8, band=(0.5, 0.9))
    assert res.region_low == pytest.approx(-6 * math.log(0.5), abs=0.02)
    best = effective_rank(r, acc, reference="best_student")
    assert best.reference == pytest.approx(acc.max())
    teacher = effective_rank(r, acc, reference="teacher", teacher_accuracy=0.9)
    assert teacher.reference == 0.9 and teacher.region_low > best.region_low


def test_noisy_non_monotone_data_is_made_monotone():
    r = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32], dtype=float)
    acc = np.array([0.20, 0.45, 0.70, 0.66, 0.86, 0.83, 0.92, 0.95, 0.94, 0.96])
    res = effective_rank(r, acc, reference=0.96)
    assert np.all(np.diff(res.monotone) >= 0)
    dense = np.linspace(1, 32, 1000)
    assert np.all(np.diff(res.curve(dense)) >= -1e-12)
    assert 4 < res.region_low < 6 and 8 < res.region_high < 12
    assert res.curve(res.region_low) == pytest.approx(0.85, abs=1e-9)
    assert res.curve(res.region_high) == pytest.approx(0.95, abs=1e-9)


def test_levels_not_reached_or_exceeded_are_explicit():
    r = np.array([2.0, 4.0, 8.0, 16.0])
    high_acc = np.array([0.90, 0.93, 0.94, 0.945])
    res = effective_rank(r, high_acc, reference=1.0)
    assert res.low.status == EXCEEDED_AT_FIRST_RANK and res.low.rank is None and res.low.bound == 2.0
    assert res.high.status == NOT_REACHED and res.high.rank is None and res.high.bound == 16.0
    assert "<= 2" in res.summary() and "> 16" in res.summary()
    low_acc = np.array([0.1, 0.2, 0.3, 0.4])
    assert effective_rank(r, low_acc, 1.0).low.status == NOT_REACHED


def test_seeds_use_the_mean_and_give_bootstrap_intervals():
    rng = np.random.default_rng(0)
    base = np.array([1, 2, 4, 8, 16, 32], dtype=float)
    ranks = np.repeat(base, 4)
    acc = 1 - np.exp(-ranks / 5) + rng.normal(0, 0.01, ranks.size)
    res = effective_rank(ranks[::-1], acc[::-1], reference=1.0)  # unsorted on purpose
    assert np.array_equal(res.ranks, base)
    assert res.mean_accuracy[2] == pytest.approx(acc[8:12].mean())
    for name in ("region_low", "region_high", "knee"):
        lo, hi = res.intervals[name]
        assert lo <= hi
    lo, hi = res.intervals["region_low"]
    assert lo - 0.5 <= res.region_low <= hi + 0.5
    assert effective_rank(base, acc[::4], 1.0).intervals is None


def test_sensitivity_table_moves_with_reference():
    r = np.arange(1.0, 65.0)
    acc = 0.9 * (1 - np.exp(-r / 6))
    rows = sensitivity_table(r, acc, {"teacher": 0.9, "teacher - 1pt": 0.89},
                             [(0.85, 0.95), (0.8, 0.9)])
    assert len(rows) == 4
    assert float(rows[0]["region_low"]) > float(rows[2]["region_low"])


@pytest.mark.parametrize("ranks, acc, ref, band, match", [
    ([4, 4], [0.5, 0.6], 1.0, (0.85, 0.95), "at least 2 distinct ranks"),
    ([0, 4], [0.5, 0.6], 1.0, (0.85, 0.95), "ranks: must be positive"),
    ([-1, 4], [0.5, 0.6], 1.0, (0.85, 0.95), "ranks: must be positive"),
    ([1, 4], [float("nan"), 0.6], 1.0, (0.85, 0.95), "accuracy: contains NaN"),
    ([1, 2, 4], [0.5, 0.6], 1.0, (0.85, 0.95), "lengths differ"),
    ([1, 4], [0.5, 0.6], 1.0, (0.95, 0.85), "band: lo must be below hi"),
    ([1, 4], [0.5, 0.6], 1.0, (0.9, 0.9), "band: lo must be below hi"),
    ([1, 4], [0.5, 0.6], 1.0, (0.0, 0.9), r"band: levels must lie in \(0, 1\]"),
    ([1, 4], [0.5, 0.6], 1.0, (0.5, 1.2), r"band: levels must lie in \(0, 1\]"),
    ([1, 4], [0.5, 0.6], 1.0, (0.5,), "band: expected two numbers"),
    ([1, 4], [0.5, 0.6], 0.0, (0.85, 0.95), "reference: must be a positive"),
    ([1, 4], [0.5, 0.6], -0.5, (0.85, 0.95), "reference: must be a positive"),
    ([1, 4], [0.5, 0.6], "teacher", (0.85, 0.95), "no teacher accuracy"),
    ([1, 4], [0.5, 0.6], "median", (0.85, 0.95), "reference: 'median'"),
])
def test_bad_input_is_refused(ranks, acc, ref, band, match):
    with pytest.raises(ValueError, match=match):
        effective_rank(ranks, acc, ref, band)


# The author's recorded accuracies (%) of the paper's ViT-B/32 students on CIFAR-100, and its teacher.
AUTHOR_RANKS = [2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256]
AUTHOR_ACCURACY = [19.53, 32.15, 48.69, 62.68, 67.01, 69.46, 71.17, 72.23, 72.67, 72.57, 72.56, 72.69, 73.28, 72.96,
                   73.43, 72.96]
AUTHOR_TEACHER = 73.35


def test_the_authors_accuracies_give_the_papers_headline():
    result = effective_rank(AUTHOR_RANKS, AUTHOR_ACCURACY, AUTHOR_TEACHER)
    assert round(result.region_low) == 16 and round(result.region_high) == 33  # the paper: [16, 34]
    assert abs(result.region_high - 34) < 1 and round(result.knee) == 31       # the paper: knee 31
    best = effective_rank(AUTHOR_RANKS, AUTHOR_ACCURACY, "best_student")
    assert best.reference == 73.43 and round(best.region_low) == 16 and round(best.region_high) == 34
    assert round(best.knee) == 31
