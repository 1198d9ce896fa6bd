"""What the analysis notebook and its panel compute, tested without a browser."""

import dataclasses
import re

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from effrank_utils.base.storage import write_json
from effrank_utils.estimate.curves import effective_rank
from effrank_utils.records.run_folder import COLUMNS, SWEEP_CSV, TEACHER_JSON, write_record
from effrank_utils.report import analysis
from effrank_utils.report.panel import analysis_panel
from effrank_utils.report.plotting import plot_effective_rank
from effrank_utils.report.study import load_study
from effrank_utils.run.entry import load_preset

TEACHER = 0.93
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def study(tmp_path):
    """A run directory with a known accuracy table (no training needed)."""
    ranks = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32])
    acc = TEACHER * (1 - np.exp(-ranks / 3.0))
    rows = [{"rank": r, "seed": 0, "status": "ok", "params": 1000 + 100 * r, "teacher_params": 5000,
             "compression": 5000 / (1000 + 100 * r), "final_accuracy": a, "best_accuracy": a}
            for r, a in zip(ranks, acc)]
    rows.append({"rank": 5, "seed": 0, "status": "failed", "params": 1500, "teacher_params": 5000,
                 "failure": "non-finite loss (nan) in epoch 1"})
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / SWEEP_CSV, index=False)
    write_record(tmp_path, load_preset("smoke"), "fingerprint")
    write_json(tmp_path / TEACHER_JSON, {"status": "done", "accuracy": TEACHER})
    return load_study(tmp_path)


def test_failed_rows_are_excluded_and_counted(study):
    assert len(study.table) == 10 and len(study.failed) == 1
    assert 5 not in study.table["rank"].tolist()
    assert "1 failed student(s) excluded" in analysis.summary_text(study, analysis.analyze(study))


def test_callback_recomputes_region_and_knee_for_band_and_reference(study):
    base = analysis.analyze(study)
    moved = analysis.analyze(study, band=(0.7, 0.8), reference=0.9)
    expected = effective_rank(study.ranks, study.accuracy, 0.9, (0.7, 0.8))
    assert moved.region_low == pytest.approx(expected.region_low)
    assert moved.region_high == pytest.approx(expected.region_high)
    assert moved.region_low < base.region_low
    assert moved.region_low == pytest.approx(-3 * np.log(1 - 0.7 * 0.9 / TEACHER), abs=0.05)
    best = analysis.analyze(study, reference="best_student")
    assert best.reference == pytest.approx(study.accuracy.max())


def test_panel_controls_drive_the_summary(study):
    panel = analysis_panel(study)
    assert panel.summary.value == analysis.summary_text(study, analysis.analyze(study, n_bootstrap=0))
    panel.band.value = (0.75, 0.9)
    assert "75%-90%" in panel.summary.value
    panel.reference.value = "value"
    panel.value.value = 0.8
    expected = analysis.analyze(study, (0.75, 0.9), 0.8, n_bootstrap=0)
    assert panel.summary.value == analysis.summary_text(study, expected)
    panel.axis.value = "log"  # display only: the numbers stay
    assert panel.summary.value == analysis.summary_text(study, expected)


def shown_png(panel):
    """The bytes the panel's image widget holds (ipywidgets keeps them as a memoryview)."""
    return bytes(panel.figure.value)


def test_panel_draws_a_png_image_and_redraws_on_change(study):
    open_figures = plt.get_fignums()
    panel = analysis_panel(study)
    linear = shown_png(panel)
    assert isinstance(panel.figure, widgets.Image) and linear.startswith(PNG)
    panel.axis.value = "log"
    assert shown_png(panel).startswith(PNG) and shown_png(panel) != linear
    assert plt.get_fignums() == open_figures  # rendered and closed, never left to pyplot


def test_panel_uses_no_output_widget(study):
    """Headless executors can only emulate the Output widget's capture, by messaging the kernel mid-cell
    (jupyter/nbclient#312): the panel must not contain one."""
    def tree(widget):
        yield widget
        for child in getattr(widget, "children", ()):
            yield from tree(child)

    assert not any(isinstance(w, widgets.Output) for w in tree(analysis_panel(study).widget))


def test_panel_shows_the_error_in_place_of_a_stale_figure(study):
    panel = analysis_panel(study)
    before = shown_png(panel)
    panel.band.value = (0.9, 0.9)  # collapsed: lo must be below hi
    assert panel.summary.value.startswith("<b>Cannot compute:</b> band: lo must be below hi")
    message = shown_png(panel)
    assert message.startswith(PNG) and message != before  # the old figure is replaced, never left up
    panel.band.value = (0.8, 0.9)
    assert shown_png(panel).startswith(PNG) and shown_png(panel) not in (before, message)
    assert panel.summary.value == analysis.summary_text(study, analysis.analyze(study, (0.8, 0.9), n_bootstrap=0))


def test_panel_value_box_shows_the_reference_in_use_rounded(study):
    panel = analysis_panel(study)
    assert panel.value.value == TEACHER and panel.value.disabled
    panel.reference.value = "best_student"
    assert panel.value.value == round(study.accuracy.max(), 4) and panel.value.disabled
    assert f"reference accuracy {study.accuracy.max():.4f}" in panel.summary.value
    panel.reference.value = "value"
    assert not panel.value.disabled


def test_panel_keeps_the_band_slider_on_its_own_row(study):
    panel = analysis_panel(study)
    first, second = panel.widget.children[:2]
    assert first is panel.band and panel.axis in second.children and panel.reference in second.children


def tick_texts(axis):
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_linear_axis_focuses_on_the_region_and_says_what_lies_beyond(study):
    result = analysis.analyze(study, n_bootstrap=0)
    ax = plot_effective_rank(study, result).axes[0]
    right = ax.get_xlim()[1]
    assert max(result.region_high, result.knee) < right < 32
    assert any("to the right" in t.get_text() for t in ax.texts)
    whole = plot_effective_rank(study, result, log_x=True).axes[0]
    assert whole.get_xlim()[1] >= 32 and not any("to the right" in t.get_text() for t in whole.texts)
    (knee,) = [line for line in ax.lines if line.get_marker() == "D"]
    assert knee.get_markerfacecolor() == "none"  # hollow: the student point under it stays visible
    labels = [t for t in ax.texts if t.get_text().startswith("r=")]
    assert len(labels) == 2 and all(t.xycoords == ("data", "axes fraction") for t in labels)  # at the top


def test_log_axis_is_labelled_with_rank_values(study):
    ax = plot_effective_rank(study, analysis.analyze(study, n_bootstrap=0), log_x=True).axes[0]
    labels = tick_texts(ax.xaxis)
    assert labels[0] == "1" and "32" in labels and not any("10^" in t for t in labels)


def test_students_larger_than_the_teacher_are_flagged_on_the_compression_axis(study):
    table = study.table.assign(teacher_params=2500)  # ranks >= 16 now have more parameters than the teacher
    bigger = dataclasses.replace(study, table=table)
    fig = plot_effective_rank(bigger, analysis.analyze(bigger, n_bootstrap=0), log_x=True)
    top = next(a for a in fig.axes[0].child_axes if a.get_xlabel().startswith("compression"))
    flagged = [t for t in tick_texts(top.xaxis) if t.endswith("*")]
    assert flagged and all(float(t[:-2]) < 1 for t in flagged)
    assert "larger than the teacher" in top.get_xlabel()


def test_seeds_with_equal_accuracy_draw_without_a_negative_spread(study):
    # the mean of three equal accuracies can round 1e-16 below their minimum; matplotlib refuses negative bars
    table = pd.concat([study.table.assign(seed=s, final_accuracy=0.9388888888888889) for s in range(3)])
    equal = dataclasses.replace(study, table=table)
    assert (table.groupby("rank")["final_accuracy"].mean() < 0.9388888888888889).any()
    plot_effective_rank(equal, analysis.analyze(equal, reference=1.0, n_bootstrap=0))


def test_region_facts_report_cost_at_both_ends(study):
    result = analysis.analyze(study)
    facts = analysis.region_facts(study, result)
    assert facts["params_at_low"] == round(1000 + 100 * result.region_low)
    assert facts["compression_at_high"] == pytest.approx(5000 / (1000 + 100 * result.region_high), abs=0.01)


def test_sensitivity_table_covers_bands_and_references(study):
    table = analysis.sensitivity(study)
    assert len(table) == 4 * 3
    assert set(table["reference"]) == {"teacher -1 pt", "teacher", "teacher +1 pt", "best student"}
    lows = table[table["band"] == "85%-95%"].set_index("reference")["region_low"].astype(float)
    assert lows["teacher -1 pt"] < lows["teacher"] < lows["teacher +1 pt"]


def test_summary_json_round_trips(study):
    result = analysis.analyze(study)
    path = analysis.write_summary(study, result, "teacher")
    saved = pd.read_json(path, typ="series")
    assert saved["region_low"]["rank"] == pytest.approx(result.region_low)
    assert saved["failed_students"] == 1


def test_panel_shows_censored_intervals_and_an_undefined_knee(tmp_path):
    """Three seeds per rank whose r_hi is not reached in most resamples (the issue's table), then a flat curve."""
    ranks = [1, 2, 4, 8, 16, 32]
    acc = [.30, .32, .31, .55, .52, .58, .75, .78, .74, .86, .88, .85, .92, .93, .91, .97, .93, .94]
    rows = [{"rank": r, "seed": s, "status": "ok", "params": 1000 + 100 * r, "teacher_params": 5000,
             "final_accuracy": acc[3 * i + s]} for i, r in enumerate(ranks) for s in range(3)]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / SWEEP_CSV, index=False)
    write_record(tmp_path, load_preset("smoke"), "fingerprint")
    write_json(tmp_path / TEACHER_JSON, {"status": "done", "accuracy": 1.0})
    panel = analysis_panel(load_study(tmp_path), reference=1.0)
    assert re.search(r"r_hi censored: &gt; 32 in \d+% of resamples", panel.summary.value)
    flat = pd.DataFrame([dict(row, final_accuracy=0.5) for row in rows], columns=COLUMNS)
    flat.to_csv(tmp_path / SWEEP_CSV, index=False)
    panel = analysis_panel(load_study(tmp_path), band=(0.6, 0.7), reference=1.0)
    assert "knee undefined" in panel.summary.value
