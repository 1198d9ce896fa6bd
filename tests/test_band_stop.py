"""The band stop: students clearly outside the band stop early, the others train on; fused, named, refused."""

import json
import math

import pytest

from effrank_utils.estimate.noise import effective_margin, noise_margin
from effrank_utils.records.config import config_from_dict
from effrank_utils.records.run_folder import read_epochs
from effrank_utils.report import analysis
from effrank_utils.report.study import load_study
from effrank_utils.run import sweep
from effrank_utils.run.band_stop import ABOVE_BAND, BELOW_BAND, band_stop_rule
from effrank_utils.run.entry import load_preset
from effrank_utils.training.loop import Recipe

RECIPE = Recipe(50, 1e-3, 0.0, schedule="plateau", patience=2)
LARGE = 100_000  # validation images: a noise margin far below the margin given
RULE = band_stop_rule(0.80, (0.85, 0.95), 0.03, RECIPE, LARGE)  # above: >= 0.784; below: <= 0.656 at a plateau


def history(*accuracies: float) -> list[dict]:
    return [{"epoch": i + 1, "val_accuracy": a} for i, a in enumerate(accuracies)]


@pytest.mark.parametrize("accuracies, reason", [
    ((0.50, 0.79, 0.80), ABOVE_BAND),        # clearly above for `patience` epochs in a row
    ((0.50, 0.79), None),                    # clearly above once: maybe a lucky epoch
    ((0.79, 0.70, 0.79), None),              # not in a row
    ((0.78, 0.78), None),                    # above the band's top, not by the margin
    ((0.50, 0.60), None),                    # below, but still improving
    ((0.60, 0.55, 0.58), BELOW_BAND),        # below by the margin at its first plateau
    ((0.60, 0.70, 0.69, 0.68), None),        # at a plateau, but inside the band's margin: trains on (the cuts)
])
def test_rule_stops_only_students_clearly_outside_the_band(accuracies, reason):
    assert RULE(history(*accuracies)) == reason


def test_rule_needs_a_plateau_to_call_a_student_below():
    never = band_stop_rule(0.80, (0.85, 0.95), 0.03, Recipe(50, 1e-3, 0.0, schedule="constant", patience=0), LARGE)
    assert never(history(0.1, 0.1, 0.1, 0.1)) is None and never(history(0.9)) == ABOVE_BAND  # one epoch suffices


def test_a_small_validation_split_widens_the_margin_to_its_noise():
    # CIFAR-10's measured case: teacher 0.42 on 300 validation images, 2 standard errors = 0.137 of it
    assert noise_margin(0.42, 300) == pytest.approx(2 * (0.42 * 0.58 / 300) ** 0.5 / 0.42)
    assert effective_margin(0.03, 0.42, 300) == noise_margin(0.42, 300) > 0.13
    assert effective_margin(0.03, 0.95, 100_000) == 0.03
    noisy = band_stop_rule(0.42, (0.85, 0.95), 0.03, RECIPE, validation_size=300)
    assert noisy(history(0.42, 0.43, 0.42)) is None  # at the teacher's level: within the noise of 300 images
    assert noisy(history(0.46, 0.47)) == ABOVE_BAND  # (0.95 + 0.137) x 0.42 = 0.457
    assert noisy(history(0.30, 0.25, 0.28)) == BELOW_BAND  # (0.85 - 0.137) x 0.42 = 0.299
    assert noisy(history(0.33, 0.30, 0.31)) is None  # below the band, not beyond its noise: trains on
    assert noise_margin(0.0, 300) == noise_margin(0.5, 0) == math.inf  # nothing to judge against: never stops


@pytest.fixture
def stopped():
    """digits with a validation split of 575 images (enough that its noise margin leaves the weak teacher's students
    room above the band); rank 16 is the full rank of smoke's 16-wide blocks (the teacher itself)."""
    return load_preset("smoke", ranks=[1, 16], train_subset=None, validation_fraction=0.4, student_epochs=4,
                       student_patience=2, student_schedule="plateau", band_stop=0.02)


def test_a_student_clearly_above_the_band_stops_while_the_others_train_on(stopped, tmp_path):
    table = sweep.run_sweep(stopped, tmp_path / "band").set_index("rank")
    assert table.loc[16, "stop_reason"] == ABOVE_BAND and table.loc[16, "epochs"] == 2  # patience 2: in a row
    assert table.loc[1, "stop_reason"] != ABOVE_BAND and table.loc[1, "epochs"] > 1
    plain = sweep.run_sweep(stopped.replace(band_stop=0.0), tmp_path / "plain").set_index("rank")
    assert plain.loc[16, "epochs"] > 1  # without the band stop the same student trains on
    # the stopped student's record is the plain run's second epoch (same stream, same seeds): only training stopped
    first = [read_epochs(tmp_path / name).query("rank == 16 and epoch == 2")["test_accuracy"].item()
             for name in ("band", "plain")]
    assert first[0] == first[1] == table.loc[16, "final_accuracy"]


def test_the_headline_names_the_band_stop_and_where_its_knee_comes_from(stopped, tmp_path):
    sweep.run_sweep(stopped.replace(ranks=[1, 2, 4, 16]), tmp_path)
    study = load_study(tmp_path)
    analysis.save_results(study, analysis.analyze(study), "teacher")
    assert json.loads((tmp_path / "summary.json").read_text())["estimator"]["band_stop"] == 0.02
    line = analysis.headline(tmp_path)
    assert "stopped once 0.02 (or 2 standard errors of the validation accuracy, if more) outside the band" in line
    assert ("(of students stopped above the band: not their converged knee)" in line) == ("knee undefined" not in line)


def test_fused_students_stop_as_they_do_one_by_one(stopped, tmp_path):
    alone = sweep.run_sweep(stopped, tmp_path / "alone")
    fused = sweep.run_sweep(stopped.replace(fuse=2), tmp_path / "fused")
    columns = ["rank", "epochs", "stop_reason", "final_accuracy"]
    assert alone[columns].equals(fused[columns])


def test_band_stop_is_part_of_the_study_identity(stopped, tmp_path):
    sweep.run_sweep(stopped, tmp_path)
    with pytest.raises(ValueError, match="band_stop"):
        sweep.run_sweep(stopped.replace(band_stop=0.05), tmp_path)


@pytest.mark.parametrize("change, match", [
    (dict(band_stop=0.5), r"band_stop: must lie in \[0, 0.5\)"),
    (dict(band_stop=-0.1), "band_stop: must be a non-negative number"),
    (dict(band_stop=0.03, validation_fraction=0.0, student_patience=0, student_schedule="constant"),
     "band_stop: judged on the validation split"),
    (dict(band_stop=0.03, reference="best_student"), "band_stop: judged on the validation split"),
])
def test_bad_band_stop_is_refused_by_name(stopped, change, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(stopped.to_dict() | change)
