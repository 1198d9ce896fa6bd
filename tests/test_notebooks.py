"""The numbered notebooks: clean in git, run headlessly with injected parameters, fail loudly, time out."""

import base64
import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbformat.sign import NotebookNotary

from effrank_utils.cli import main
from effrank_utils.estimate.curves import effective_rank
from effrank_utils.report.reproduce import NOTEBOOKS, NotebookFailed, NotebookTimedOut, run_notebooks

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
ANALYSIS = NOTEBOOKS[-1]
SMOKE = {"ranks": [1, 2, 4, 8, 16], "band": [0.8, 0.9]}
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
COMPARE = "04_compare_studies.ipynb"  # not part of `make reproduce`
DECLARED = {NOTEBOOKS[0]: {"preset", "run_dir", "overrides"},
            NOTEBOOKS[1]: {"preset", "run_dir", "overrides", "confirm_factor"},
            NOTEBOOKS[2]: {"preset", "run_dir", "band", "reference", "save"},
            COMPARE: {"run_dirs", "labels", "out_dir"}}


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """An 'effrank' kernelspec that runs this interpreter (what `make install` registers), and a Jupyter data dir
    of its own, so the notebooks are signed with a throwaway notary."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "effrank"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (effrank)", "language": "python"}))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(root))
    mp.setenv("JUPYTER_DATA_DIR", str(root / "data"))
    yield root / "data"
    mp.undo()


def notebook_copy(tmp_path, edit):
    """A folder with copies of the notebooks, ``edit(name, nb)`` applied to each (it changes ``nb`` in place)."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        edit(name, nb)
        nbformat.write(nb, folder / name)
    return folder


def insert_after_parameters(nb, source):
    """A new code cell right after the parameters cell (papermill's injected parameters come before it)."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))


def panel_state(path):
    """The executed analysis notebook's panel: the widget its last cell shows, and the image and text it holds."""
    nb = nbformat.read(path, as_version=4)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    shown = [o.data[WIDGET_VIEW]["model_id"] for o in last.outputs if WIDGET_VIEW in o.get("data", {})]
    state = nb.metadata.widgets[WIDGET_STATE]["state"]
    image = next(m for m in state.values() if m["model_name"] == "ImageModel")
    png = next(base64.b64decode(b["data"]) for b in image["buffers"] if b["path"] == ["value"])
    html = [m["state"]["value"] for m in state.values() if m["model_name"] == "HTMLModel"]
    return shown, state, png, html


def test_every_numbered_notebook_is_checked():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9]*.ipynb")) == sorted(DECLARED)


@pytest.mark.parametrize("name", DECLARED)
def test_notebooks_are_clean_and_parameterized(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "effrank"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(c.get("id") for c in nb.cells)
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs must be stripped in git"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3
    params = {line.split("=")[0].strip() for line in code[0].source.splitlines() if "=" in line}
    assert params == DECLARED[name]  # each notebook declares only the parameters it uses


@pytest.fixture(scope="module")
def smoke_run(kernel_env, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke_run")
    executed = run_notebooks("smoke", run_dir, SMOKE, progress=False)
    return run_dir, executed


def test_all_notebooks_run_and_write_their_outputs(smoke_run):
    run_dir, executed = smoke_run
    assert [p.name for p in executed] == list(NOTEBOOKS)
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and f'run_dir = "{run_dir.resolve()}"' in injected[0].source
        assert ('"band": [0.8, 0.9]' in injected[0].source) == ("overrides" in DECLARED[path.name])
    for name in ("teacher.pt", "teacher.json", "teacher_metrics.csv", "sweep.csv", "config.json", "summary.json",
                 "figures/teacher_history.png", "figures/sweep.png", "figures/effective_rank.png",
                 "figures/effective_rank.svg"):
        assert (run_dir / name).exists(), name


def test_the_sweep_notebook_confirms_the_verdict_and_the_analysis_shows_it(smoke_run):
    run_dir, executed = smoke_run
    record = json.loads((run_dir / "confirm" / "x2.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["confirmation"]["record"] == record and summary["confirmation"]["stale"] == []
    assert summary["confirmation"]["describe"] == f"longer budget: {record['verdict']}"
    analysis = "".join(o.get("text", "") for c in nbformat.read(executed[2], as_version=4).cells
                       for o in c.get("outputs", []))
    assert f"Longer budget: {record['verdict']}." in analysis  # in the summary paragraph
    assert f"longer budget: {record['verdict']}\n" in analysis  # and under the one-run check


def test_summary_matches_the_curve_analysis_of_the_csv(smoke_run):
    run_dir, _ = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    table = pd.read_csv(run_dir / "sweep.csv")
    assert table["rank"].tolist() == [1, 2, 4, 8, 16]
    expected = effective_rank(table["rank"], table["final_accuracy"], summary["teacher_accuracy"], (0.8, 0.9))
    assert summary["band"] == [0.8, 0.9] and summary["reference"]["kind"] == "teacher"
    for key, crossing in (("region_low", expected.low), ("region_high", expected.high)):
        assert summary[key]["status"] == crossing.status
        if crossing.rank is None:
            assert summary[key]["rank"] is None
        else:
            assert summary[key]["rank"] == pytest.approx(crossing.rank, abs=1e-9)
    assert summary["knee"] == pytest.approx(expected.knee, abs=1e-9)
    assert summary["estimator"] == {"init": "svd", "loss": "kd", "student_epochs": 1, "student_patience": 0,
                                    "student_schedule": "cosine", "validation_fraction": 0.0, "targets": ["all"],
                                    "band_stop": 0.0, "band_stop_margin": None}
    assert len(summary["table"]) == 5 and summary["config"]["preset"] == "smoke"
    assert np.isclose(summary["teacher_accuracy"], json.loads((run_dir / "teacher.json").read_text())["accuracy"])


def test_rerun_resumes_instead_of_retraining(smoke_run, kernel_env):
    run_dir, _ = smoke_run
    before = (run_dir / "teacher.pt").stat().st_mtime_ns, (run_dir / "sweep.csv").read_text()
    run_notebooks("smoke", run_dir, SMOKE, progress=False)
    after = (run_dir / "teacher.pt").stat().st_mtime_ns, (run_dir / "sweep.csv").read_text()
    assert before == after


def test_reproduce_refuses_bad_parameters_before_running(tmp_path, capsys):
    assert main(["reproduce", "--preset", "smoke", "--results", str(tmp_path), "--set", "loss=l2"]) == 2
    assert "loss: unknown value 'l2'" in capsys.readouterr().err


@pytest.mark.parametrize("factor", ["1", "-2"])
def test_reproduce_refuses_a_confirm_factor_below_two_before_running(factor, kernel_env, tmp_path, capsys):
    assert main(["reproduce", "--preset", "smoke", "--results", str(tmp_path), "--confirm-factor", factor]) == 2
    assert capsys.readouterr().err.startswith("error: --confirm-factor: the budget's multiple must be an integer")
    assert not any(tmp_path.iterdir())
    assert not (tmp_path / "smoke").exists()


def test_executed_notebooks_are_trusted(smoke_run, kernel_env):
    _, executed = smoke_run
    notary = NotebookNotary()
    assert Path(notary.data_dir) == kernel_env  # the test's own notary, not the user's
    for path in executed:
        assert notary.check_signature(nbformat.read(path, as_version=4)), path.name


def test_analysis_panel_completes_headlessly_again_and_again(smoke_run):
    """Notebook 03 used to hang now and then in its panel cell (jupyter/nbclient#312); run it three more times."""
    run_dir, _ = smoke_run
    for attempt in range(3):  # a stuck cell would raise NotebookTimedOut instead of blocking the suite
        [path] = run_notebooks("smoke", run_dir, SMOKE, progress=False, notebooks=[ANALYSIS])
        shown, state, png, html = panel_state(path)
        assert shown and state[shown[0]]["model_name"] == "VBoxModel", attempt
        assert png.startswith(b"\x89PNG"), attempt  # the figure is saved in the widget state
        assert any(text.startswith("Effective-rank region") for text in html), attempt


def test_printed_sweep_rows_reach_the_terminal(kernel_env, tmp_path, capsys):
    run_notebooks("smoke", tmp_path, {"ranks": [1, 4]}, notebooks=NOTEBOOKS[:2])  # progress on, as in `make`
    lines = capsys.readouterr().out.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("[02_rank_sweep] rank ")]
    rows = [lines[i] for i in at]
    assert [row.split(":")[0] for row in rows[:2]] == [f"[02_rank_sweep] rank {r:>4} seed 0" for r in (1, 4)]
    assert all(": ok, final accuracy " in row for row in rows)
    # then the deciding students again (effrank confirm), under a line that says so, and its verdict
    record = json.loads((tmp_path / "confirm" / "x2.json").read_text())
    header = lines.index("[02_rank_sweep] confirming: the deciding students again under 2x the budget")
    assert at[1] < header < at[2] and len(rows) == 2 + len(record["ranks"])
    assert lines.index(f"[02_rank_sweep] {record['verdict']}") > at[-1]
    assert any(line.startswith("[01_train_teacher] teacher: test accuracy ") for line in lines)
    assert any(line.startswith("[01_train_teacher] model input: mean (0.3079), std (0.3786)") for line in lines)
    assert any(line.endswith("bilinear resize to 9, center crop 8 (dataset)") for line in lines)
    assert at[1] < lines.index(f"[02_rank_sweep] 2 students in {tmp_path / 'sweep.csv'}")
    assert not any("final_accuracy" in line or "student/s" in line for line in lines)  # no tables, no tqdm bars


def test_reproduce_fails_loudly_when_a_notebook_fails(kernel_env, tmp_path):
    def edit(name, nb):
        if name == NOTEBOOKS[0]:
            insert_after_parameters(nb, 'raise RuntimeError("the teacher cannot be trained here")')

    folder = notebook_copy(tmp_path, edit)
    with pytest.raises(NotebookFailed) as failed:
        run_notebooks("smoke", tmp_path / "run", {}, notebook_dir=folder, progress=False)
    executed = nbformat.read(tmp_path / "run" / "notebooks" / NOTEBOOKS[0], as_version=4)
    [cell] = [c for c in executed.cells if "cannot be trained" in c.source]
    assert cell.execution_count is not None
    message = str(failed.value)
    assert message.startswith(f"notebook {NOTEBOOKS[0]} failed in cell {cell.execution_count}: RuntimeError: "
                              "the teacher cannot be trained here")
    assert not (tmp_path / "run" / "notebooks" / NOTEBOOKS[1]).exists()  # the study stopped there


def test_a_stuck_cell_times_out_with_a_clear_error(kernel_env, tmp_path):
    def edit(name, nb):
        if name == NOTEBOOKS[0]:
            insert_after_parameters(nb, "import time\n\ntime.sleep(3600)")

    folder = notebook_copy(tmp_path, edit)
    with pytest.raises(NotebookTimedOut) as timed_out:  # without the timeout this cell would run for an hour
        run_notebooks("smoke", tmp_path / "run", {}, notebook_dir=folder, progress=False, cell_timeout=3)
    executed = nbformat.read(tmp_path / "run" / "notebooks" / NOTEBOOKS[0], as_version=4)
    [cell] = [c for c in executed.cells if "time.sleep(3600)" in c.source]
    assert isinstance(timed_out.value, NotebookFailed)
    assert str(timed_out.value).startswith(
        f"notebook {NOTEBOOKS[0]} failed in cell {cell.execution_count}: CellTimeoutError: A cell timed out while it "
        "was being executed, after 3 seconds.")


def test_sweep_notebook_runs_on_ray(kernel_env, tmp_path):
    pytest.importorskip("ray", reason="the Ray extra is not installed")
    executed = run_notebooks("smoke", tmp_path, {"ranks": [1, 2, 4], "executor": "ray", "workers": 2},
                             progress=False)
    assert pd.read_csv(tmp_path / "sweep.csv")["rank"].tolist() == [1, 2, 4]
    sweep_nb = nbformat.read(executed[1], as_version=4)
    printed = "".join(o.get("text", "") for c in sweep_nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "rank    4 seed 0: ok" in printed  # each row is printed as it lands
    assert (tmp_path / "summary.json").exists()


def outputs_text(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_teacher_notebook_says_a_checkpoint_teacher_was_loaded_not_trained(kernel_env, tmp_path):
    import torch

    from effrank_utils.run.entry import load_preset
    from effrank_utils.training.models import build_model
    checkpoint = tmp_path / "mine.pt"
    torch.save({"model": build_model(load_preset("smoke"), 10, 1).state_dict()}, checkpoint)
    (executed,) = run_notebooks("smoke", tmp_path / "run", {"teacher_checkpoint": str(checkpoint)}, progress=False,
                                notebooks=[NOTEBOOKS[0]])
    assert "(loaded from teacher_checkpoint, not trained)" in outputs_text(executed)
    assert (tmp_path / "run" / "figures" / "teacher_history.png").exists()


def test_compare_notebook_runs_on_two_studies(smoke_run, kernel_env, tmp_path):
    import papermill

    from effrank_utils.run.entry import load_preset
    from effrank_utils.run.sweep import run_sweep
    run_dir, _ = smoke_run
    other = tmp_path / "mlp-only"
    run_sweep(load_preset("smoke", {"ranks": [1, 2, 4, 8, 16], "targets": ["mlp"]}), other)
    executed = tmp_path / COMPARE
    papermill.execute_notebook(NOTEBOOK_DIR / COMPARE, executed, cwd=NOTEBOOK_DIR, progress_bar=False,
                               parameters={"run_dirs": [str(run_dir), str(other)], "labels": ["all", "mlp"],
                                           "out_dir": str(tmp_path / "out")})
    assert "warning: targets differs" in outputs_text(executed)
    assert (tmp_path / "out" / "figures" / "comparison.png").exists()
