"""Results say what made them: library versions, threads, device and commit in config.json and summary.json, and
`effrank compare` warns when studies differ in any of them."""

import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from effrank_utils.cli import main
from effrank_utils.records.run_folder import CONFIG_JSON, read_record
from effrank_utils.report.analysis import analyze, summary
from effrank_utils.report.compare import comparison_warnings, environment_warnings, load_studies
from effrank_utils.report.study import load_study
from effrank_utils.run import provenance
from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("provenance") / "run"
    run_sweep(load_preset("smoke", ranks=[1, 2, 4]), run_dir)
    return run_dir


def test_config_json_and_summary_json_say_what_computed_them(finished):
    env = read_record(finished)["environment"]
    assert env["effrank"] == importlib.metadata.version("effrank")
    for name in ("torch", "torchvision", "timm", "numpy"):
        assert env[name] == importlib.metadata.version(name)
    assert env["torch_threads"] == torch.get_num_threads() and env["device"].startswith("cpu")
    study = load_study(finished)
    record = summary(study, analyze(study), "teacher")
    assert record["environment"] == env and record["environments"] == [env]


def test_the_commit_is_the_checkouts_when_run_from_one():
    commit = provenance.code_commit()
    if not (ROOT / ".git").exists():
        assert commit is None
    else:
        assert re.fullmatch(r"[0-9a-f]{40}( \+ uncommitted changes)?", commit)


def test_a_second_environment_is_kept_beside_the_first(finished, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    monkeypatch.setattr(provenance, "PACKAGES", ("torch", "numpy"))  # another environment, same study
    run_sweep(load_preset("smoke", ranks=[1, 2, 4]), run_dir)
    record = read_record(run_dir)
    assert len(record["environments"]) == 2 and record["environment"] == record["environments"][-1]
    (line,) = environment_warnings(load_studies([finished, run_dir], ["a", "b"]))[-1:]
    assert line.startswith("b was computed under 2 environments (they differ in timm, torchvision)")


def test_compare_warns_when_studies_differ_in_versions_or_threads(finished, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    record = json.loads((other / CONFIG_JSON).read_text())
    env = record["environment"] | {"torch": "9.9.9", "torch_threads": 64}
    (other / CONFIG_JSON).write_text(json.dumps(record | {"environment": env, "environments": [env]}))
    warnings = comparison_warnings(load_studies([finished, other], ["here", "there"]))
    assert any(w.startswith("torch differs (here: ") and "there: '9.9.9'" in w for w in warnings)
    assert any(w.startswith("torch_threads differs (") and "there: 64" in w for w in warnings)
    assert main(["compare", str(finished), str(other), "--out", str(tmp_path / "cmp")]) == 0
    assert "warning: torch_threads differs" in capsys.readouterr().out
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["warnings"]
    assert any(w.startswith("torch differs (run: ") and "other: '9.9.9'" in w for w in saved)  # labelled by folder


def test_constraints_pin_every_requirement_within_its_range():
    from packaging.requirements import Requirement
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        text = line.split("#")[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"
