"""Honest analysis at the edges: the knee on the right side of the secant (or undefined), units that do not mix,
and bootstrap intervals that say when their level was missed (censoring)."""

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D

from effrank_utils.estimate.curves import (
    CENSORED_BELOW,
    KNEE_DEFINED,
    KNEE_NOT_ABOVE_SECANT,
    KNEE_TOO_FEW_RANKS,
    effective_rank,
    sensitivity_table,
)
from effrank_utils.estimate.refine import next_ranks
from effrank_utils.report import analysis
from effrank_utils.report.plotting import plot_effective_rank
from effrank_utils.report.study import Study
from effrank_utils.run.entry import load_preset

matplotlib.use("Agg")


def study_of(tmp_path, ranks, accuracy, teacher=1.0):
    """A Study over a given accuracy table (no training, no run folder beyond ``tmp_path``)."""
    ranks = np.asarray(ranks, dtype=float)
    table = pd.DataFrame({"rank": ranks, "seed": 0, "status": "ok", "params": 1000 + 100 * ranks,
                          "teacher_params": 5000.0, "final_accuracy": np.asarray(accuracy, dtype=float)})
    return Study(tmp_path, load_preset("smoke"), teacher, table, table.iloc[:0])


# ------------------------------------------------------------------------------------- 1. the knee's side
SIGMOID_RANKS = np.array([1, 2, 4, 8, 16, 24, 32, 40], dtype=float)


def sigmoid(r):
    return 0.1 + 0.88 / (1 + np.exp(-(np.log(r) - np.log(20)) / 0.3))


def test_knee_is_the_farthest_point_above_the_secant_not_below():
    res = effective_rank(SIGMOID_RANKS, sigmoid(SIGMOID_RANKS), 1.0)
    # was 9.02, where the curve lies 0.1078 *below* the secant; the farthest point above is 27.80 at 0.1077
    assert res.knee == pytest.approx(27.80, abs=0.01)
    assert res.knee_status == KNEE_DEFINED
    assert float(res.curve(res.knee) - res.secant(res.knee)) == pytest.approx(0.1077, abs=1e-4)
    dense_ranks = np.arange(1.0, 41.0)
    dense = effective_rank(dense_ranks, sigmoid(dense_ranks), 1.0)
    assert dense.knee == pytest.approx(27.4, abs=0.1)
    assert abs(res.knee - dense.knee) < 1  # the coarse sweep agrees with the dense one


@pytest.mark.parametrize("ranks, accuracy, status", [
    ([1, 2, 4, 8], [0.5, 0.5, 0.5, 0.5], KNEE_NOT_ABOVE_SECANT),                        # flat
    ([1, 8], [0.5, 0.9], KNEE_TOO_FEW_RANKS),                                           # two ranks
    ([1, 8, 16, 32, 57], [0.3 + 0.01 * r for r in (1, 8, 16, 32, 57)], KNEE_NOT_ABOVE_SECANT),   # linear
    ([1, 2, 4, 8, 16, 32], [0.1 + 0.8 * (r / 32) ** 2 for r in (1, 2, 4, 8, 16, 32)], KNEE_NOT_ABOVE_SECANT),  # convex
])
def test_knee_is_undefined_where_the_curve_never_rises_above_the_secant(ranks, accuracy, status):
    res = effective_rank(ranks, accuracy, 1.0)
    assert res.knee is None and not res.knee_defined
    assert res.knee_status == status and res.knee_status.startswith("undefined")
    assert res.to_dict()["knee"] is None and res.to_dict()["knee_status"] == status
    assert res.describe_knee().startswith("undefined (")
    assert "knee undefined" in res.summary()
    row = sensitivity_table(ranks, accuracy, {"teacher": 1.0}, [(0.85, 0.95)])[0]
    assert row["knee"] == "undefined"


def test_undefined_knee_reaches_summary_json_text_and_figure(tmp_path):
    ranks = [1, 2, 4, 8]
    study = study_of(tmp_path, ranks, [0.5, 0.5, 0.5, 0.5])
    result = analysis.analyze(study, reference=1.0)
    text = analysis.summary_text(study, result)
    assert "effective knee undefined (the fitted curve never rises above its endpoint secant)" in text
    facts = analysis.region_facts(study, result)
    assert facts["knee"] is None and facts["knee_status"] == KNEE_NOT_ABOVE_SECANT
    saved = json.loads(analysis.write_summary(study, result, 1.0).read_text())
    assert saved["knee"] is None and saved["knee_status"] == KNEE_NOT_ABOVE_SECANT
    fig = plot_effective_rank(study, result)
    ax = fig.axes[0]
    assert not any(isinstance(line, Line2D) and line.get_marker() == "D" for line in ax.lines)  # no diamond
    assert any(t.get_text().startswith("knee undefined") for t in ax.get_legend().get_texts())


def test_defined_knee_still_drawn_and_reported(tmp_path):
    study = study_of(tmp_path, SIGMOID_RANKS, sigmoid(SIGMOID_RANKS))
    result = analysis.analyze(study, reference=1.0)
    assert "effective knee 27.80." in analysis.summary_text(study, result)
    assert analysis.region_facts(study, result)["knee"] == pytest.approx(27.80)
    ax = plot_effective_rank(study, result).axes[0]
    assert any(line.get_marker() == "D" for line in ax.lines)


def test_knee_interval_uses_only_resamples_where_it_is_defined():
    # the middle rank's mean sits exactly on the secant: the knee exists only in resamples that lift it above
    res = effective_rank([1, 1, 2, 2, 3, 3], [0.5, 0.5, 0.55, 0.65, 0.7, 0.7], 1.0, band=(0.6, 0.65))
    assert res.knee is None
    knee = res.to_dict()["intervals"]["knee"]
    assert 0 < knee["reached"] < CENSORED_BELOW and knee["censored"] is True
    assert knee["undefined"] == pytest.approx(1 - knee["reached"])
    assert knee["low"] is not None and 1 < knee["low"] <= knee["high"] < 3
    assert "undefined in" in knee["describe"]


def test_refinement_ignores_an_undefined_knee():
    ranks = [1, 2, 4, 8, 16, 32, 64]
    accuracy = [0.2 + 0.01 * r for r in ranks]  # linear: a rounding-noise "knee" (51.91) proposed rank 48
    assert next_ranks(ranks, accuracy, 1.0) == [128]  # only: both levels lie above the sweep
    assert next_ranks([1, 2, 4, 8], [0.5] * 4, 1.0) == [16]


def test_refinement_adds_a_third_rank_when_two_cannot_define_a_knee():
    # both levels unreached at the largest allowed rank: only the knee, undefined with two ranks, asks for more
    assert next_ranks([1, 16], [0.100, 0.147], 0.5, (0.5, 0.9), max_rank=16) == [8]
    assert next_ranks([1, 2], [0.100, 0.147], 0.5, (0.5, 0.9), max_rank=2) == []  # no rank left between


# ------------------------------------------------------------------------------------- 2. units
PCT = [31.0, 60.0, 80.0, 93.1]
FRAC = [0.31, 0.60, 0.80, 0.931]


@pytest.mark.parametrize("accuracy, kwargs, match", [
    (PCT, {"reference": 0.93},
     r"reference: accuracies look like percentages \(max 93.1\) but the reference is a fraction \(0.93\)"),
    (PCT, {"reference": "teacher", "teacher_accuracy": 0.93}, r"percentages \(max 93.1\).*fraction \(0.93\)"),
    (FRAC, {"reference": 93.0},
     r"reference: accuracies look like fractions \(max 0.931\) but the reference is a percentage \(93\)"),
    (FRAC, {"reference": "teacher", "teacher_accuracy": 93.0}, r"fractions \(max 0.931\).*percentage \(93\)"),
])
def test_mixed_units_are_refused_with_both_values(accuracy, kwargs, match):
    with pytest.raises(ValueError, match=match):
        effective_rank([1, 2, 4, 8], accuracy, **kwargs)
    reference = kwargs["reference"] if kwargs["reference"] != "teacher" else kwargs["teacher_accuracy"]
    with pytest.raises(ValueError, match=match):  # every entry point goes through the same check
        sensitivity_table([1, 2, 4, 8], accuracy, {"typed": reference}, [(0.85, 0.95)])
    with pytest.raises(ValueError, match=match):
        next_ranks([1, 2, 4, 8], accuracy, reference)


def test_same_units_pass():
    pct = effective_rank([1, 2, 4, 8], PCT, 93.1)
    frac = effective_rank([1, 2, 4, 8], FRAC, 0.931)
    assert pct.region_low == pytest.approx(frac.region_low) and pct.knee == pytest.approx(frac.knee)
    assert effective_rank([1, 2, 4, 8], PCT, "best_student").reference == 93.1
    noisy = effective_rank([1, 2, 4, 8], [0.5, 0.8, 0.95, 1.004], 1.0)  # seed noise just above 1 is fine
    assert noisy.low.status == "crossed"


@pytest.mark.parametrize("accuracy, match", [
    ([-0.1, 0.5, 0.6, 0.7], r"accuracy: must be finite and non-negative, got \[-0.1\]"),
    ([0.1, 0.5, float("inf"), 0.7], r"accuracy: must be finite and non-negative, got \[inf\]"),
    ([0.1, 0.5, float("-inf"), 0.7], r"accuracy: must be finite and non-negative"),
    ([10, 50, 150, 170], r"accuracy: must be a fraction \(0-1\) or a percentage \(0-100\), got max 170"),
])
def test_impossible_accuracy_is_the_projects_own_error(accuracy, match):
    with pytest.raises(ValueError, match=match):
        effective_rank([1, 2, 4, 8], accuracy, 1.0)


def test_reference_above_100_is_refused():
    with pytest.raises(ValueError, match=r"reference: must be a fraction \(0-1\) or a percentage \(0-100\)"):
        effective_rank([1, 2, 4, 8], PCT, 930.0)


# ------------------------------------------------------------------------------------- 3. censoring
SEED_RANKS = np.repeat([1, 2, 4, 8, 16, 32], 3)
SEED_ACC = [.30, .32, .31, .55, .52, .58, .75, .78, .74, .86, .88, .85, .92, .93, .91, .97, .93, .94]


def test_interval_of_a_level_missed_in_most_resamples_is_censored():
    res = effective_rank(SEED_RANKS, SEED_ACC, 1.0, n_bootstrap=400, seed=0)
    assert res.high.status == "not_reached"
    high = res.to_dict()["intervals"]["region_high"]
    # 285 of 400 resamples never reach 95%; the interval of the other 115 was reported as if it were the answer
    assert high["reached"] == pytest.approx(115 / 400) and high["not_reached"] == pytest.approx(285 / 400)
    assert high["censored"] is True and high["resamples"] == 400
    assert (high["low"], high["high"]) == pytest.approx((22.42, 27.69), abs=0.01)
    assert high["describe"].startswith("censored: > 32 in 71% of resamples")
    low = res.to_dict()["intervals"]["region_low"]
    assert low["reached"] == 1.0 and low["censored"] is False
    assert low["describe"] == f"[{low['low']:.2f}, {low['high']:.2f}]"
    lo, hi = res.intervals["region_high"]  # the (low, high) pair, as the tuple of old
    assert (lo, hi) == res.intervals["region_high"].pair == (high["low"], high["high"])
    assert "region_high censored: > 32 in 71% of resamples" in res.summary()


def test_censoring_reaches_summary_json_text_and_figure(tmp_path):
    study = study_of(tmp_path, SEED_RANKS, SEED_ACC)
    result = analysis.analyze(study, reference=1.0)
    text = analysis.summary_text(study, result)
    assert "95% bootstrap over seeds:" in text and "r_hi censored: > 32 in" in text
    saved = json.loads(analysis.write_summary(study, result, 1.0).read_text())
    assert saved["intervals"]["region_high"]["censored"] is True
    assert saved["intervals"]["region_high"]["reached"] < CENSORED_BELOW
    assert saved["intervals"]["region_low"]["censored"] is False
    ax = plot_effective_rank(study, result).axes[0]
    assert any(t.get_text().startswith("r_hi censored: > 32 in") for t in ax.texts)
    assert any("censored" in t.get_text() for t in ax.get_legend().get_texts())
