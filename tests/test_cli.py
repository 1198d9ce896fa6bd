"""The `effrank` command, driven as a user drives it: a subprocess, its exit status and what it prints."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from effrank_utils.base.storage import file_lock

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--set", "ranks=[1,2,4]", "--set", "teacher_epochs=2"]


def effrank(*args: str, env: dict | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "effrank_utils", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)  # timeout: a hang guard only


def default_sigint() -> None:
    """In the child: Ctrl-C acts as in a terminal even when the suite itself was started in the background (a
    non-interactive shell starts background jobs with SIGINT ignored, and Python then never installs its handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "effrank_utils", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            preexec_fn=default_sigint)


def wait_for(path_glob, folder: Path, proc: subprocess.Popen) -> None:
    """Until a file matching ``path_glob`` appears in ``folder`` (no deadline: the process either gets there or
    exits, which fails the test)."""
    while not list(folder.glob(path_glob)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)


@pytest.mark.parametrize("command", [[], ["reproduce"], ["sweep"], ["analyze"], ["lab"]])
def test_help_of_every_subcommand(command):
    proc = effrank(*command, "--help")
    assert proc.returncode == 0 and "usage: effrank" in proc.stdout
    assert proc.stdout.count("\n") > 3


def test_installed_console_script_runs():
    script = shutil.which("effrank", path=str(Path(sys.executable).parent))
    assert script, "the effrank command is not installed beside this interpreter (pip install -e .)"
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and all(c in proc.stdout for c in ("reproduce", "sweep", "analyze", "lab"))


@pytest.mark.parametrize("args, message", [
    (["sweep", "--preset", "smoke", "--set", "loss=l2"], "error: loss: unknown value 'l2'"),
    (["sweep", "--preset", "smoke", "--set", "ranks=[1]"], "error: ranks: at least 2 ranks are needed"),
    (["sweep", "--preset", "smoke", "--set", "preset=.."], "error: preset: unknown value '..'"),
    (["reproduce", "--preset", "smoke", "--set", "mlp_ratio=0.25"], "error: ranks: 8 exceeds the layer dimension"),
    (["analyze", "/no/such/run"], "error: run_dir: /no/such/run has no teacher yet"),
])
def test_user_errors_are_one_line_with_exit_status_2(args, message, tmp_path):
    proc = effrank(*args, "--results", str(tmp_path)) if args[0] != "analyze" else effrank(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[0]]
    assert proc.stderr.startswith(message) and "Traceback" not in proc.stderr


def test_run_folder_that_is_a_file_or_read_only_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = effrank("sweep", *SMOKE, "--run-dir", str(tmp_path / "file"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: run_dir: ")
    assert "Traceback" not in proc.stderr and "not a writable directory" in proc.stderr


def test_fresh_with_a_traversing_preset_deletes_nothing(tmp_path):
    trav = tmp_path / "trav"
    (trav / "results").mkdir(parents=True)
    (trav / "precious.txt").write_text("keep me")
    proc = effrank("reproduce", "--results", str(trav / "results"), "--fresh", "--set", "preset=..",
                   "--set", "ranks=[1,2]")
    assert proc.returncode == 2 and "preset: unknown value '..'" in proc.stderr
    assert (trav / "precious.txt").read_text() == "keep me"


def test_fresh_refuses_a_folder_that_is_not_a_run_folder(tmp_path):
    (tmp_path / "results" / "smoke").mkdir(parents=True)
    (tmp_path / "results" / "smoke" / "thesis.tex").write_text("keep me")
    proc = effrank("reproduce", "--preset", "smoke", "--results", str(tmp_path / "results"), "--fresh")
    assert proc.returncode == 2 and "is not an effrank run folder" in proc.stderr
    assert (tmp_path / "results" / "smoke" / "thesis.tex").exists()


@pytest.fixture(scope="module")
def analyzed_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = effrank("sweep", *SMOKE, "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_sweep_prints_the_table(analyzed_run):
    run_dir, proc = analyzed_run
    assert pd.read_csv(run_dir / "sweep.csv")["rank"].tolist() == [1, 2, 4]
    assert "rank" in proc.stdout and "final_accuracy" in proc.stdout


def test_analyze_writes_summary_and_figure(analyzed_run):
    run_dir, _ = analyzed_run
    proc = effrank("analyze", str(run_dir), "--band", "0.5", "0.9", "--reference", "best_student")
    assert proc.returncode == 0, proc.stderr
    assert "Effective-rank region" in proc.stdout
    assert (run_dir / "summary.json").exists() and (run_dir / "figures" / "effective_rank.png").exists()
    import json
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["band"] == [0.5, 0.9] and summary["reference"]["kind"] == "best_student"
    bad = effrank("analyze", str(run_dir), "--band", "0.9", "0.5")
    assert bad.returncode == 2 and bad.stderr.startswith("error: band: lo must be below hi")


def test_ctrl_c_prints_one_line_and_exits_130_then_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = start("sweep", *SMOKE, "--run-dir", str(run_dir),
                 env={"EFFRANK_PAUSE_AT": "epoch_done:rank 2 seed 0:1", "EFFRANK_PAUSE_DIR": str(tmp_path)})
    wait_for("*.paused", tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130
    assert err.rstrip().endswith("interrupted; rerun the same command to resume")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "test hook EFFRANK_PAUSE_AT='epoch_done:rank 2 seed 0:1' is set" in err  # hooks announce themselves
    again = effrank("sweep", *SMOKE, "--run-dir", str(run_dir))
    assert again.returncode == 0 and pd.read_csv(run_dir / "sweep.csv")["rank"].tolist() == [1, 2, 4]


def test_a_pause_variable_left_set_by_accident_does_not_hang(tmp_path):
    proc = effrank("sweep", *SMOKE, "--run-dir", str(tmp_path / "run"),
                   env={"EFFRANK_PAUSE_AT": "between_tasks", "EFFRANK_PAUSE_DIR": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_waiting_for_a_locked_task_names_its_holder(analyzed_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(analyzed_run[0], run_dir)
    (run_dir / "tasks" / "r00001_s0.json").unlink()
    (run_dir / "tasks" / "r00002_s0.json").unlink()
    with file_lock(run_dir / "tasks" / "r00001_s0.lock"):
        proc = start("sweep", *SMOKE, "--run-dir", str(run_dir))
        wait_for("r00002_s0.json", run_dir / "tasks", proc)  # it trained what it could and now waits
        time.sleep(1)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"waiting for r00001_s0.lock: held by process {os.getpid()} on " in err


def test_failed_students_make_the_sweep_exit_non_zero_and_list_them(tmp_path):
    # a worker killed mid-task breaks the process pool: its students are recorded as failed
    proc = effrank("sweep", *SMOKE, "--set", "executor=processes", "--set", "workers=2", "--run-dir",
                   str(tmp_path / "run"), env={"EFFRANK_CRASH_AT": "epoch_done:rank 2 seed 0:1",
                                               "EFFRANK_CRASH_ONCE": str(tmp_path / "crashed")})
    assert (tmp_path / "crashed").exists(), proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "student(s) failed" in proc.stderr and "rank 2 seed 0: worker failed" in proc.stderr
    again = effrank("sweep", *SMOKE, "--set", "executor=processes", "--run-dir", str(tmp_path / "run"))
    assert again.returncode == 0, again.stderr[-3000:]  # a rerun trains them again


def test_makefile_passes_paths_with_spaces(tmp_path):
    results = tmp_path / "with space" / "results"
    proc = subprocess.run(["make", "-s", "-o", ".venv/.installed", "reproduce", f"BIN={Path(sys.executable).parent}",
                           "PRESET=smoke", f"RESULTS={results}", "ARGS=--set loss=l2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "unrecognized arguments" not in proc.stderr
    assert "error: loss: unknown value 'l2'" in proc.stderr


def test_reproduce_refuses_another_studys_folder_before_running_notebooks(analyzed_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(analyzed_run[0], run_dir)
    proc = effrank("reproduce", *SMOKE, "--set", "student_epochs=2", "--run-dir", str(run_dir))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: run_dir: ") and "student_epochs: saved 1, now 2" in proc.stderr
    assert not (run_dir / "notebooks").exists()


@pytest.mark.parametrize("content", ["", "a,b\n1,2\n"])
def test_analyze_names_a_damaged_sweep_table(analyzed_run, tmp_path, content):
    run_dir = tmp_path / "run"
    shutil.copytree(analyzed_run[0], run_dir)
    (run_dir / "sweep.csv").write_text(content)
    proc = effrank("analyze", str(run_dir))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {run_dir / 'sweep.csv'}: not a sweep table")


def test_lab_settings_save_widget_state_and_keep_other_overrides(tmp_path):
    from effrank_utils.cli import WIDGETS_PLUGIN, write_lab_settings
    path = tmp_path / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}}))
    assert write_lab_settings(tmp_path) == path
    settings = json.loads(path.read_text())
    assert settings[WIDGETS_PLUGIN] == {"saveState": True}
    assert settings["@jupyterlab/apputils-extension:themes"] == {"theme": "JupyterLab Dark"}
