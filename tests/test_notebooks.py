"""The numbered notebooks: clean in git, run headlessly with injected parameters, fail loudly."""

import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from effrank_utils.curves import effective_rank
from effrank_utils.reproduce import NOTEBOOKS, main, run_notebooks

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """An 'effrank' kernelspec that runs this interpreter (what `make install` registers)."""
    spec_dir = tmp_path_factory.mktemp("jupyter") / "kernels" / "effrank"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (effrank)", "language": "python"}))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(spec_dir.parents[1]))
    yield
    mp.undo()


@pytest.mark.parametrize("name", NOTEBOOKS)
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
    assert {"preset", "run_dir", "overrides", "ranks", "band", "reference"} <= params


@pytest.fixture(scope="module")
def smoke_run(kernel_env, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke_run")
    executed = run_notebooks("smoke", run_dir, {"ranks": [1, 2, 4, 8, 16], "band": [0.8, 0.9]},
                             progress=False)
    return run_dir, executed


def test_all_notebooks_run_and_write_their_outputs(smoke_run):
    run_dir, executed = smoke_run
    assert [p.name for p in executed] == list(NOTEBOOKS)
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and '"band": [0.8, 0.9]' in injected[0].source
    for name in ("teacher.pt", "teacher.json", "teacher_metrics.csv", "sweep.csv", "config.json", "summary.json",
                 "figures/teacher_history.png", "figures/sweep.png", "figures/effective_rank.png",
                 "figures/effective_rank.svg"):
        assert (run_dir / name).exists(), name


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
    assert summary["estimator"] == {"init": "svd", "loss": "kd", "student_epochs": 1, "targets": ["all"]}
    assert len(summary["table"]) == 5 and summary["config"]["preset"] == "smoke"
    assert np.isclose(summary["teacher_accuracy"], json.loads((run_dir / "teacher.json").read_text())["accuracy"])


def test_rerun_resumes_instead_of_retraining(smoke_run, kernel_env):
    run_dir, _ = smoke_run
    before = (run_dir / "teacher.pt").stat().st_mtime_ns, (run_dir / "sweep.csv").read_text()
    run_notebooks("smoke", run_dir, {"ranks": [1, 2, 4, 8, 16], "band": [0.8, 0.9]}, progress=False)
    after = (run_dir / "teacher.pt").stat().st_mtime_ns, (run_dir / "sweep.csv").read_text()
    assert before == after


def test_reproduce_refuses_bad_parameters_before_running(tmp_path, capsys):
    assert main(["--preset", "smoke", "--results", str(tmp_path), "--set", "loss=l2"]) == 2
    assert "loss: unknown value 'l2'" in capsys.readouterr().err
    assert not (tmp_path / "smoke").exists()


def test_reproduce_fails_loudly_when_a_notebook_fails(tmp_path, capsys, kernel_env):
    # one rank is a valid config, but the analysis notebook needs at least two: it must fail visibly
    code = main(["--preset", "smoke", "--results", str(tmp_path), "--set", "ranks=[2]"])
    err = capsys.readouterr().err
    assert code == 1
    assert "03_effective_rank_analysis.ipynb failed in cell" in err and "at least 2 are needed" in err
    assert not (tmp_path / "smoke" / "summary.json").exists()


def test_sweep_notebook_runs_on_ray(kernel_env, tmp_path):
    pytest.importorskip("ray", reason="the Ray extra is not installed")
    executed = run_notebooks("smoke", tmp_path, {"ranks": [1, 2, 4], "executor": "ray", "workers": 2},
                             progress=False)
    assert pd.read_csv(tmp_path / "sweep.csv")["rank"].tolist() == [1, 2, 4]
    sweep_nb = nbformat.read(executed[1], as_version=4)
    printed = "".join(o.get("text", "") for c in sweep_nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "rank    4 seed 0: ok" in printed  # each row is printed as it lands
    assert (tmp_path / "summary.json").exists()
