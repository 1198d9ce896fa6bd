"""What the reliability guide promises, case by case: inputs are never deleted, partial or damaged studies are never
taken for finished ones, and bad input or a full disk ends in one line instead of a traceback."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from effrank_utils import cli
from effrank_utils.records import run_folder
from effrank_utils.report import analysis, compare
from effrank_utils.report.plotting import plot_effective_rank
from effrank_utils.report.study import load_study

SMOKE = ["--preset", "smoke", "--set", "ranks=[1,2,4]", "--set", "teacher_epochs=2"]


def effrank(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "effrank_utils", *args], capture_output=True, text=True,
                          timeout=1800)  # a hang guard only


def one_line_error(proc: subprocess.CompletedProcess, status: int, start: str) -> str:
    """The single stderr line of a command that ended with ``status``, checked to start with ``start``."""
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("guarantees") / "results"
    proc = effrank("sweep", *SMOKE, "--results", str(results), "--run-dir", str(results / "A"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results / "A"


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    target = tmp_path / "results" / "copy"
    shutil.copytree(finished, target)
    return target


# ---------------------------------------------------------------------------------------------- data loss
def test_fresh_refuses_to_delete_the_teacher_checkpoint_it_was_given(copy):
    results, checkpoint = copy.parent, copy / "teacher.pt"
    before = checkpoint.read_bytes()
    proc = effrank("sweep", *SMOKE, "--results", str(results), "--run-dir", str(copy), "--fresh",
                   "--set", f"teacher_checkpoint={checkpoint}")
    line = one_line_error(proc, 2, "error: --fresh: teacher_checkpoint ")
    assert "lies inside the run folder" in line
    assert checkpoint.read_bytes() == before and (copy / "config.json").exists()


def test_fresh_refuses_to_delete_a_data_folder_inside_the_run_folder(copy):
    (copy / "data").mkdir()
    with pytest.raises(ValueError, match="--fresh: data_root .* lies inside the run folder"):
        run_folder.remove_run_folder(copy, copy.parent, {"data_root": str(copy / "data"), "teacher_checkpoint": None})
    assert (copy / "data").is_dir()
    run_folder.remove_run_folder(copy, copy.parent, {"data_root": str(copy.parent.parent / "elsewhere")})
    assert not copy.exists()


# ------------------------------------------------------------------------------------------ partial studies
@pytest.fixture
def partial(copy) -> Path:
    """The copy as a sweep killed (or still running) with rank 4 not finished."""
    (copy / "tasks" / "r00004_s0.json").unlink()
    run_folder.write_sweep_csv(copy)
    (copy / "summary.json").unlink(missing_ok=True)
    return copy


def test_analyze_names_the_missing_students_and_never_says_converged(partial):
    proc = effrank("analyze", str(partial))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "incomplete: 1 of 3 students have no result (rank 4 seed 0)" in proc.stdout
    assert "converged (" not in proc.stdout.replace("not converged", "")
    summary = json.loads((partial / "summary.json").read_text())
    assert summary["complete"] is False and summary["missing"] == [[4, 0]]
    assert summary["converged"] is False and summary["convergence"]["converged"] is False
    assert "the study is incomplete (no result for rank 4 seed 0)" in analysis.headline(partial)
    study = load_study(partial)
    title = plot_effective_rank(study, analysis.analyze(study)).axes[0].get_title()
    assert "incomplete: 1 of 3 students have no result" in title


def test_a_finished_study_is_complete(finished):
    study = load_study(finished)
    assert study.complete and study.missing == ()
    assert analysis.summary(study, analysis.analyze(study), "teacher")["complete"] is True


def test_a_student_in_training_counts_as_missing(partial):
    (partial / "tasks" / "state_r00004_s0-r00008_s0.pt").write_bytes(b"")
    study = load_study(partial)
    assert [(t.rank, t.seed) for t in study.missing] == [(4, 0), (8, 0)]


def test_compare_and_dashboard_refuse_an_unfinished_study(partial, finished, tmp_path):
    proc = effrank("compare", str(finished), str(partial), "--out", str(tmp_path / "cmp"))
    line = one_line_error(proc, 2, f"error: run_dir: {partial} is not a finished study")
    assert "rank 4 seed 0" in line and not (tmp_path / "cmp").exists()
    proc = effrank("dashboard", str(partial), "--port", "1")  # refused before any server starts
    one_line_error(proc, 2, f"error: run_dir: {partial} is not a finished study")


# ---------------------------------------------------------------------------------------------- damaged rows
@pytest.mark.parametrize("value", ["abc", float("nan"), 1.5, None])
def test_a_row_with_a_bad_accuracy_is_moved_aside_and_trained_again(copy, value):
    path = copy / "tasks" / "r00002_s0.json"
    row = json.loads(path.read_text())
    path.write_text(json.dumps(row | {"final_accuracy": value}))
    proc = effrank("sweep", *SMOKE, "--results", str(copy.parent), "--run-dir", str(copy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 of 3 tasks to run" in proc.stderr and "final_accuracy" in proc.stderr
    assert (copy / "tasks" / "r00002_s0.json.corrupt").exists()
    table = run_folder.read_sweep(copy)
    assert table["final_accuracy"].between(0, 1).all() and (table["status"] == "ok").all()
    assert effrank("analyze", str(copy)).returncode == 0


@pytest.mark.parametrize("change, problem", [
    ({"status": "done"}, "status 'done' is none of ok, failed"),
    ({"params": "many"}, "params 'many' is not a positive integer"),
    ({"history": [{"epoch": 1, "test_accuracy": "x"}]}, "its history is not a list of epochs"),
    ({"status": "failed", "failure": None}, "a failed row without the reason it failed"),
])
def test_every_field_of_a_row_is_checked_against_its_schema(copy, caplog, change, problem):
    task = run_folder.Task(2, 0)
    path = run_folder.task_path(copy, task)
    path.write_text(json.dumps(json.loads(path.read_text()) | change))
    assert run_folder.read_row(copy, task) is None
    assert problem in caplog.text and path.with_name(path.name + ".corrupt").exists()


def test_analyze_names_a_sweep_table_with_a_bad_accuracy(copy):
    table = pd.read_csv(copy / "sweep.csv")
    table["final_accuracy"] = table["final_accuracy"].astype(object)
    table.loc[1, "final_accuracy"] = "abc"
    table.to_csv(copy / "sweep.csv", index=False)
    line = one_line_error(effrank("analyze", str(copy)), 2, f"error: {copy / 'sweep.csv'}: not a sweep table")
    assert "rank 2 seed 0 has final_accuracy 'abc'" in line


def test_a_folder_where_the_sweep_table_belongs_is_one_line(copy):
    (copy / "sweep.csv").unlink()
    (copy / "sweep.csv").mkdir()
    one_line_error(effrank("analyze", str(copy)), 2, f"error: {copy / 'sweep.csv'}: not a sweep table")
    proc = effrank("sweep", *SMOKE, "--results", str(copy.parent), "--run-dir", str(copy))
    assert "is a folder, where effrank keeps a file" in one_line_error(proc, 2, "error: run_dir: ")


# ------------------------------------------------------------------------------------------------ compare
def test_compare_refuses_a_run_folder_a_file_or_the_same_folder_twice_as_out(finished, copy, tmp_path):
    proc = effrank("compare", str(finished), str(copy), "--out", str(copy))
    one_line_error(proc, 2, f"error: --out: {copy} is a run folder")
    proc = effrank("compare", str(finished), str(copy), "--out", str(copy / "figures"))
    one_line_error(proc, 2, f"error: --out: {copy / 'figures'} is inside the run folder {copy}")
    (tmp_path / "file").write_text("x")
    one_line_error(effrank("compare", str(finished), str(copy), "--out", str(tmp_path / "file")), 2,
                   f"error: --out: {tmp_path / 'file'} is a file")
    one_line_error(effrank("compare", str(finished), str(finished), "--out", str(tmp_path / "cmp")), 2,
                   f"error: run_dirs: {finished} is given twice")
    assert not (copy / "comparison.json").exists()


def test_labels_are_shown_as_plain_text(finished, copy, tmp_path):
    labels = ["_hidden", "costs $5 and $x^2$"]
    compared = compare.load_studies([finished, copy], labels)
    fig = compare.plot_comparison(compared)
    shown = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [s.split(":")[0] for s in shown] == labels
    fig.savefig(tmp_path / "comparison.png")  # mathtext would raise a ParseSyntaxException here


# --------------------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("module", ["effrank_utils.sweep", "effrank_utils.run.sweep"])  # as documented before, now
def test_a_library_module_run_as_a_script_says_what_to_run(module):
    proc = subprocess.run([sys.executable, "-m", module, "--preset", "smoke"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip() == (f"{module} is a library module, not a command; run the effrank command instead "
                                   "(`effrank --help`, or `python -m effrank_utils --help`)")
    assert effrank("--help").returncode == 0


def test_a_results_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = effrank("reproduce", "--preset", "smoke", "--results", str(tmp_path / "file"))
    one_line_error(proc, 2, f"error: --results: {tmp_path / 'file'} is a file, not a writable directory")
    assert (tmp_path / "file").read_text() == "x"


def test_an_unknown_kernel_is_one_line_naming_the_installed_ones(tmp_path):
    proc = effrank("reproduce", "--preset", "smoke", "--results", str(tmp_path), "--kernel", "no_such_kernel")
    line = one_line_error(proc, 2, "error: --kernel: no Jupyter kernel named 'no_such_kernel' is installed")
    assert "installed: " in line and not list(tmp_path.iterdir())


def test_a_teacher_whose_loss_diverges_is_one_line(tmp_path):
    proc = effrank("sweep", *SMOKE, "--run-dir", str(tmp_path / "run"), "--set", "teacher_lr=1e9")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: teacher training failed: non-finite loss")


def test_a_full_disk_is_one_line_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    real_save = torch.save

    def full_disk(payload, f, *args, **kwargs):
        if "optimizers" in payload:  # the teacher's resumable checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(sys, "argv", ["effrank"])
    args = ["sweep", *SMOKE, "--run-dir", str(run_dir)]
    assert cli.main(args) == cli.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: no space left on the device while writing in {run_dir}; free some space "
                       "and rerun the same command: it resumes where it stopped")
    monkeypatch.setattr(torch, "save", real_save)
    assert cli.main(args) == 0
    assert run_folder.read_sweep(run_dir)["rank"].tolist() == [1, 2, 4]
