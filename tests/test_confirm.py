"""effrank confirm: the students deciding a finished study's region and knee, trained again under a longer budget."""

import json
import shutil

import pandas as pd
import pytest

from effrank_utils.base.storage import CorruptFile
from effrank_utils.cli import main
from effrank_utils.estimate.convergence import deciding_ranks, movements
from effrank_utils.estimate.curves import effective_rank
from effrank_utils.records.run_folder import (
    TEACHER_FILE,
    confirm_paths,
    load_run_config,
    read_sweep,
    rows_digest,
    write_sweep_csv,
)
from effrank_utils.report.analysis import analyze, headline, study_confirmation, summary_text, write_summary
from effrank_utils.report.study import load_study
from effrank_utils.run.confirm import confirm, longer_budget, with_retrained
from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep

STOPPED = dict(validation_fraction=0.1, student_patience=1, student_schedule="constant", student_epochs=3)


# ------------------------------------------------------------------------------------------ which students decide
def fitted(ranks, accuracy, reference=0.93):
    return effective_rank(ranks, accuracy, reference, n_bootstrap=0)


def test_the_ranks_bracketing_each_crossing_and_the_knee_decide():
    result = fitted([1, 2, 4, 8, 16, 32], [0.2, 0.5, 0.81, 0.9, 0.91, 0.92])
    assert 2 < result.region_low < 4 and 4 < result.region_high < 8 and 4 < result.knee < 8
    assert deciding_ranks(result) == [2, 4, 8]  # 1, 16 and 32 lie on one side of every level


def test_a_level_reached_at_the_first_rank_or_never_reached_names_that_end_of_the_sweep():
    above = fitted([4, 8, 16, 32], [0.9, 0.91, 0.92, 0.92])  # both levels already reached at rank 4
    assert above.low.status == above.high.status == "exceeded_at_first_rank" and 8 < above.knee < 16
    assert deciding_ranks(above) == [4, 8, 16]  # the first rank, the knee's bracket
    below = fitted([1, 2, 4, 8], [0.1, 0.2, 0.3, 0.3])  # neither level reached: the largest rank
    assert below.low.status == below.high.status == "not_reached" and 2 < below.knee < 4
    assert deciding_ranks(below) == [2, 4, 8]


def test_a_crossing_on_a_swept_rank_takes_that_rank_and_the_one_below():
    result = fitted([1, 2, 4, 8], [0.2, 0.4, 0.85, 0.95], reference=1.0)
    assert result.region_low == pytest.approx(4.0) and result.region_high == pytest.approx(8.0)
    assert 2 < result.knee < 4 and deciding_ranks(result) == [2, 4, 8]


def test_the_longer_budget_multiplies_the_cap_and_the_patience():
    config = load_preset("smoke", STOPPED)
    longer = longer_budget(config, 3)
    assert (longer.student_epochs, longer.student_patience) == (9, 3)
    assert longer.replace(student_epochs=3, student_patience=1) == config  # nothing else changes
    assert longer_budget(load_preset("smoke"), 2).student_patience == 0  # no patience stays none


@pytest.mark.parametrize("factor", [1, 0, 2.5, True, "2"])
def test_a_factor_below_two_or_not_an_integer_is_refused_by_name(factor):
    with pytest.raises(ValueError, match=r"^factor: .*integer >= 2"):
        longer_budget(load_preset("smoke"), factor)


def rows(*triples, status="ok"):
    return pd.DataFrame([{"rank": r, "seed": s, "status": status, "final_accuracy": a} for r, s, a in triples])


def test_the_retrained_rows_replace_the_deciders_seed_for_seed_and_nothing_else(tmp_path):
    done = rows((1, 0, 0.2), (2, 0, 0.5), (2, 1, 0.6), (4, 0, 0.8), (4, 1, 0.7), (8, 0, 0.9))
    longer = rows((2, 0, 0.55), (2, 1, 0.65), (4, 0, 0.85), (4, 1, 0.75), (8, 0, 0.99))  # rank 8: an older decider
    merged = with_retrained(done, longer, [2, 4], tmp_path).sort_values(["rank", "seed"])
    assert merged[["rank", "seed", "final_accuracy"]].values.tolist() == [
        [1, 0, 0.2], [2, 0, 0.55], [2, 1, 0.65], [4, 0, 0.85], [4, 1, 0.75], [8, 0, 0.9]]
    failed = pd.concat([longer.iloc[:3], rows((4, 1, float("nan")), status="failed")])
    with pytest.raises(FloatingPointError, match="rank 4 seed 1 has no result under the longer budget"):
        with_retrained(done, failed, [2, 4], tmp_path)


# ------------------------------------------------------------------------------------------ the check
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("study")
    run_sweep(load_preset("smoke", STOPPED), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def study_files(snapshot):
    """A snapshot of the study's own files: all but confirm/, where confirm writes, and the lock files runs take."""
    def files(run_dir):
        return {name: state for name, state in snapshot(run_dir).items()
                if not name.startswith("confirm/") and not name.endswith(".lock")}
    return files


@pytest.fixture(scope="module")
def confirmed(study, study_files):
    before = study_files(study)
    return confirm(study, 2), before


def test_only_the_deciding_students_train_again_under_twice_the_budget(study, confirmed):
    record, _ = confirmed
    folder, path = confirm_paths(study, 2)
    config, longer = load_run_config(study), load_run_config(folder)
    table, retrained = read_sweep(study), read_sweep(folder)
    decided = deciding_ranks(effective_rank(table["rank"], table["final_accuracy"],
                                            json.loads((study / "teacher.json").read_text())["accuracy"],
                                            n_bootstrap=0))
    assert record["ranks"] == decided == sorted(retrained["rank"].tolist())
    assert (longer.student_epochs, longer.student_patience) == (2 * config.student_epochs, 2 * config.student_patience)
    assert (retrained["epochs"] <= 2 * config.student_epochs).all()
    assert (folder / TEACHER_FILE).read_bytes() == (study / TEACHER_FILE).read_bytes()  # the study's teacher
    assert not (folder / "teacher_metrics.csv").exists()  # loaded, not trained again
    assert json.loads(path.read_text()) == record


def test_the_movements_are_those_of_the_curve_with_the_retrained_students_in_place(study, confirmed):
    record, _ = confirmed
    table, retrained = read_sweep(study), read_sweep(confirm_paths(study, 2)[0])
    teacher = json.loads((study / "teacher.json").read_text())["accuracy"]
    merged = pd.concat([table[~table["rank"].isin(record["ranks"])], retrained])
    before = effective_rank(table["rank"], table["final_accuracy"], teacher, n_bootstrap=0)
    after = effective_rank(merged["rank"], merged["final_accuracy"], teacher, n_bootstrap=0)
    assert record["before"]["region_low"] == before.region_low and record["after"]["region_low"] == after.region_low
    expected = {m.name: m.settled for m in movements(before, after)}
    assert {name: m["settled"] for name, m in record["movements"].items()} == expected
    assert record["settled"] == all(expected.values())
    assert record["verdict"].startswith("confirmed" if record["settled"] else "not confirmed")
    assert "patience 2, at most 6 epochs (2x)" in record["verdict"]


def test_the_study_itself_is_only_read_and_can_still_be_extended(study, confirmed, study_files):
    _, before = confirmed
    assert study_files(study) == before
    run_sweep(load_preset("smoke", STOPPED), study)  # a run folder holding confirm/ is still this study's
    assert {k: v for k, v in study_files(study).items() if k.startswith("tasks/")} == {
        k: v for k, v in before.items() if k.startswith("tasks/")}  # resumed: nothing trained again


def test_a_second_confirm_resumes_and_gives_the_same_record(study, confirmed, capsys):
    record, _ = confirmed
    folder, _ = confirm_paths(study, 2)
    rows = {p.name: p.read_bytes() for p in (folder / "tasks").glob("*.json")}
    assert main(["confirm", str(study), "-q"]) == 0
    assert record["verdict"] in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (folder / "tasks").glob("*.json")} == rows


def test_an_incomplete_study_is_refused_before_training(study, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("confirm"))
    (copy / "tasks" / "r00008_s0.json").unlink()
    write_sweep_csv(copy)
    assert main(["confirm", str(copy)]) == 2
    assert "lacks 1 student(s) (e.g. rank 8 seed 0)" in capsys.readouterr().err
    assert not (copy / "confirm").exists()


def test_a_bad_factor_is_one_line_before_anything_is_written(study, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("confirm"))
    assert main(["confirm", str(copy), "--factor", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: factor: ")
    assert not (copy / "confirm").exists()


# ------------------------------------------------------------------------------------------ shown by the analysis
def fit_of(run_dir, band=None):
    loaded = load_study(run_dir)
    return loaded, analyze(loaded, band or loaded.config.band, loaded.config.reference)


def test_the_analysis_shows_the_confirmation_of_the_study_as_it_is(study, confirmed):
    record, _ = confirmed
    loaded, result = fit_of(study)
    assert record["rows"] == rows_digest(loaded.table, loaded.teacher_accuracy)
    assert study_confirmation(loaded, result) == {"record": record, "stale": [],
                                                  "describe": f"longer budget: {record['verdict']}"}
    assert summary_text(loaded, result).endswith(f" Longer budget: {record['verdict']}.")
    _, other_band = fit_of(study, (0.5, 0.6))  # the confirmation held the study's own band, not this one
    assert study_confirmation(loaded, other_band) == {
        "record": None, "stale": [], "describe": "longer budget: checked for the study's own band and reference only"}


def test_a_confirmation_of_other_rows_is_set_aside_and_reading_writes_nothing(study, confirmed, tmp_path,
                                                                            study_files):
    record, _ = confirmed
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    (copy / "tasks" / "r00008_s0.json").unlink()  # the study's rows change (a student to be trained again)
    write_sweep_csv(copy)
    files = study_files(copy), (copy / "confirm" / "x2.json").read_bytes()
    loaded, result = fit_of(copy)
    shown = study_confirmation(loaded, result)
    assert shown["record"] is None and shown["stale"] == [2]
    assert shown["describe"] == (f"longer budget: not checked (effrank confirm {copy}); x2 set aside, computed "
                                 "before the study's students changed")
    assert record["verdict"] not in summary_text(loaded, result)
    assert (study_files(copy), (copy / "confirm" / "x2.json").read_bytes()) == files  # reading wrote nothing
    write_summary(loaded, result, loaded.config.reference)
    assert f"; {shown['describe']}; estimator: " in headline(copy) and record["verdict"] not in headline(copy)


def test_a_study_never_confirmed_says_how_to_confirm_it(study, confirmed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("confirm"))
    loaded, result = fit_of(copy)
    assert study_confirmation(loaded, result) == {"record": None, "stale": [],
                                                  "describe": f"longer budget: not checked (effrank confirm {copy})"}


def test_a_damaged_confirmation_is_named_with_what_to_do(study, confirmed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    (copy / "confirm" / "x2.json").write_text('{"factor": 2, "ro')
    with pytest.raises(CorruptFile, match=r"x2\.json: damaged JSON .*; delete it and run effrank confirm again"):
        load_study(copy)
