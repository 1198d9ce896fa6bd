"""The band stop: students clearly outside the band stop early, the others train on; fused, named, refused."""

import json
import math

import pytest

from effrank_utils.base.storage import read_json, write_json
from effrank_utils.estimate.noise import MARGIN_RULE, effective_margin, paired_noise_margin
from effrank_utils.lowrank.factorize import factorize
from effrank_utils.records.config import config_from_dict
from effrank_utils.records.run_folder import Task, check_config, read_epochs, read_row, swept_tasks
from effrank_utils.report import analysis
from effrank_utils.report.compare import estimator_warnings, load_studies
from effrank_utils.report.study import load_study
from effrank_utils.run import sweep
from effrank_utils.run.band_stop import ABOVE_BAND, BELOW_BAND, band_stop_rule
from effrank_utils.run.confirm import confirm
from effrank_utils.run.entry import load_preset
from effrank_utils.run.teacher import train_teacher
from effrank_utils.training.data import pipeline_for
from effrank_utils.training.distill import DistillationLoss
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.loop import Recipe, correct_predictions, discordance, fit, recipe_for


RECIPE = Recipe(50, 1e-3, 0.0, schedule="plateau", patience=2)
LARGE = 100_000  # validation images: a noise margin far below the margin given
RULE = band_stop_rule(0.80, (0.85, 0.95), 0.03, RECIPE, LARGE)  # above: >= 0.784; below: <= 0.656 at a plateau


def history(*accuracies: float, discordant: float = 0.1) -> list[dict]:
    return [{"epoch": i + 1, "val_accuracy": a, "val_discordant": discordant} for i, a in enumerate(accuracies)]


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


def test_the_margin_is_the_paired_noise_of_the_difference_from_the_teacher():
    # 2 standard errors of (student right - teacher right) per image, relative to the teacher's accuracy
    assert paired_noise_margin(0.40, 0.42, 0.30, 300) == pytest.approx(2 * ((0.30 - 0.02 ** 2) / 300) ** 0.5 / 0.42)
    assert effective_margin(0.03, 0.40, 0.42, 0.30, 300) == paired_noise_margin(0.40, 0.42, 0.30, 300) > 0.15
    assert effective_margin(0.03, 0.95, 0.95, 0.01, 100_000) == 0.03
    # CIFAR-10's measured case: teacher 0.42 on 300 validation images
    noisy = band_stop_rule(0.42, (0.85, 0.95), 0.03, RECIPE, validation_size=300)
    assert noisy(history(0.42, 0.43, 0.42, discordant=0.30)) is None  # the teacher's level, disagreeing often
    assert noisy(history(0.46, 0.47, discordant=0.06)) == ABOVE_BAND  # margin 0.066: (0.95 + 0.066) x 0.42 = 0.427
    assert noisy(history(0.30, 0.25, 0.28, discordant=0.20)) == BELOW_BAND  # (0.85 - 0.13) x 0.42 = 0.30
    assert noisy(history(0.33, 0.30, 0.31, discordant=0.30)) is None  # below the band, not beyond its noise
    # demo's case: teacher 0.889 on 144 images; the teacher's binomial noise (0.059 of it) would keep a student
    # that agrees with it on all but 1 % of the images training at the teacher's own level
    demo = band_stop_rule(0.889, (0.85, 0.95), 0.03, RECIPE, validation_size=144)
    assert demo(history(0.889, 0.889, discordant=0.01)) == ABOVE_BAND  # margin 0.03: 0.98 x 0.889 = 0.871
    assert demo(history(0.889, 0.889, discordant=0.08)) is None  # margin 0.071: 1.021 x 0.889 = 0.908
    assert paired_noise_margin(0.5, 0.0, 0.5, 300) == paired_noise_margin(0.5, 0.5, 0.5, 0) == math.inf


def test_an_epoch_without_its_paired_record_is_never_judged_outside_the_band():
    bare = [{"epoch": e, "val_accuracy": a} for e, a in enumerate((0.99, 0.99, 0.01, 0.01, 0.01), 1)]
    assert RULE(bare[:2]) is None and RULE(bare) is None


def test_each_epoch_records_the_students_discordance_with_the_teacher(tmp_path):
    config = load_preset("smoke", validation_fraction=0.3, student_epochs=2)
    data = load_data_for(config)
    teacher = train_teacher(config, tmp_path, data).model
    pipeline = pipeline_for(config, data, config.student_batch_size)
    reference = correct_predictions(teacher, pipeline, split="val")
    students = [factorize(teacher, 16), factorize(teacher, 1)]  # the teacher's own copy (before training), and rank 1
    loss = DistillationLoss(teacher, "kd", config.kd_temperature, config.kd_alpha)
    results = fit(students, loss, pipeline, recipe_for(config, "student"), seed=0, val_reference=reference)
    for student, result in zip(students, results):
        right = correct_predictions(student, pipeline, split="val")
        assert result.history[-1]["val_discordant"] == (right != reference).sum().item() / len(reference)
        assert result.history[-1]["val_accuracy"] == right.sum().item() / len(right)
    assert discordance(correct_predictions(factorize(teacher, 16), pipeline, split="val"), reference) == 0.0
    (plain,) = fit([factorize(teacher, 1)], loss, pipeline, recipe_for(config, "student"), seed=0)
    assert "val_discordant" not in plain.history[-1]


@pytest.fixture
def stopped():
    """digits with a validation split of 575 images and a teacher well above chance; rank 16 is the full rank of
    smoke's 16-wide blocks (the teacher itself), trained at a rate low enough to stay close to it (a student that
    changes a fifth of its answers in an epoch is too far from the teacher to be judged on 575 images)."""
    return load_preset("smoke", ranks=[1, 16], train_subset=None, validation_fraction=0.4, teacher_epochs=30,
                       student_epochs=4, student_lr=3e-4, student_patience=2, student_schedule="plateau",
                       band_stop=0.02)


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
    assert ("stopped once 0.02 (or 2 standard errors of its difference from the teacher on the validation split, "
            "if more) outside the band") in line
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


def test_the_study_records_its_margin_rule_and_each_epoch_what_the_student_was_judged_by(stopped, tmp_path):
    sweep.run_sweep(stopped, tmp_path / "band")
    sweep.run_sweep(stopped.replace(band_stop=0.0), tmp_path / "plain")
    assert read_json(tmp_path / "band" / "config.json")["band_margin"] == MARGIN_RULE == "paired"
    assert read_json(tmp_path / "plain" / "config.json")["band_margin"] is None
    band, plain = read_epochs(tmp_path / "band"), read_epochs(tmp_path / "plain")
    assert band["val_discordant"].between(0, 1).all() and plain["val_discordant"].isna().all()
    row = read_row(tmp_path / "band", Task(16, 0))
    assert all("val_discordant" in h for h in row["history"])
    for name, margin in (("band", "paired"), ("plain", None)):
        study = load_study(tmp_path / name)
        assert analysis.summary(study, analysis.analyze(study), "teacher")["estimator"]["band_stop_margin"] == margin


def test_a_study_from_before_the_rule_was_recorded_is_named_so_and_neither_extended_nor_confirmed(stopped, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    sweep.run_sweep(stopped, old)
    sweep.run_sweep(stopped, new)
    record = read_json(old / "config.json")
    del record["band_margin"]  # as an effrank before the record wrote it
    write_json(old / "config.json", record)
    study = load_study(old)
    analysis.save_results(study, analysis.analyze(study), "teacher")
    assert read_json(old / "summary.json")["estimator"]["band_stop_margin"] == "unrecorded"
    assert ("stopped once 0.02 (with a noise margin the run folder does not record: made by an earlier effrank) "
            "outside the band") in analysis.headline(old)
    (warning,) = estimator_warnings(load_studies([old, new], ["old", "new"]))
    assert warning.startswith("band_stop_margin differs (old: 'unrecorded', new: 'paired')")
    tasks = swept_tasks(old)
    refused = r"stopped by an earlier \(unrecorded\) noise margin of the band stop; this effrank's is 'paired'"
    with pytest.raises(ValueError, match=refused):
        check_config(old, stopped)  # with the cheap checks, before the data is loaded
    with pytest.raises(ValueError, match=refused):
        sweep.run_sweep(stopped.replace(ranks=[1, 2, 16]), old)
    with pytest.raises(ValueError, match=refused):
        confirm(old)
    assert swept_tasks(old) == tasks and not (old / "confirm").exists()
    assert "band_margin" not in read_json(old / "config.json")


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
