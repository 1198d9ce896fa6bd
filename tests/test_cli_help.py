"""A command line that explains itself, driven through the installed `effrank` command: booleans as people type
them, --config files, `effrank fields`, --version, the nearest name for a typo, -q/-v, help without markup."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from effrank_utils.records.config import FIELD_NAMES, ROLES
from effrank_utils.version import __version__

SCRIPT = shutil.which("effrank", path=str(Path(sys.executable).parent))
SMOKE = ["--preset", "smoke", "--set", "ranks=[1,2]", "--set", "teacher_epochs=1"]


def effrank(*args: str) -> subprocess.CompletedProcess:
    assert SCRIPT, "the effrank command is not installed beside this interpreter (pip install -e .)"
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=1800)  # a hang guard only


def test_version():
    proc = effrank("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"effrank {__version__}"


@pytest.mark.parametrize("word, value", [("true", True), ("False", False), ("yes", True), ("no", False),
                                         ("1", True), ("0", False)])
def test_booleans_as_people_type_them(word, value):
    from effrank_utils.run.entry import load_preset
    from effrank_utils.run.presets import parse_assignment
    assert load_preset("smoke", dict([parse_assignment(f"hflip={word}")])).hflip is value


def test_a_bad_boolean_is_one_line_naming_what_is_allowed(tmp_path):
    proc = effrank("sweep", *SMOKE, "--results", str(tmp_path), "--set", "amp=maybe")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: amp: must be true or false (or yes/no, 1/0), got 'maybe'"


def test_fields_lists_every_field_from_the_schema():
    proc = effrank("fields")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["field", "role", "type", "default", "allowed", "meaning"]
    assert [line.split()[0] for line in lines[1:]] == list(FIELD_NAMES)
    loss = next(line for line in lines if line.startswith("loss "))
    assert "student" in loss and '"kd"' in loss and "geometric, kd, logits" in loss
    analysis = effrank("fields", "--role", "analysis").stdout.strip().splitlines()[1:]
    assert [line.split()[0] for line in analysis] == ["band", "reference"] and "analysis" in ROLES


@pytest.mark.parametrize("args, message", [
    (["--set", "rank=3"], "error: unknown config field(s) 'rank'; did you mean 'ranks'? (effrank fields lists every "
                          "field)"),
    (["--preset", "demoo"], "error: preset: unknown preset 'demoo'; did you mean 'demo'?; allowed: "),
])
def test_a_typo_gets_the_nearest_name(args, message, tmp_path):
    proc = effrank("sweep", *args, "--results", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr


def test_a_config_file_in_yaml_or_json_and_a_run_folders_config_reruns_it(tmp_path):
    (tmp_path / "study.yaml").write_text("preset: smoke\nranks: [1, 2]\nteacher_epochs: 1\nhflip: yes\n")
    first = effrank("sweep", "--config", str(tmp_path / "study.yaml"), "--results", str(tmp_path / "results"))
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "results" / "smoke"
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved["ranks"] == [1, 2] and saved["hflip"] is True and saved["teacher_epochs"] == 1
    again = effrank("sweep", "--config", str(run_dir / "config.json"), "--run-dir", str(run_dir), "-q")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "INFO" not in again.stderr  # -q: warnings only; and nothing to train: the same study, finished
    assert json.loads((run_dir / "config.json").read_text())["config"] == saved
    (tmp_path / "bad.json").write_text("{not json")
    bad = effrank("sweep", "--config", str(tmp_path / "bad.json"), "--results", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.startswith(f"error: --config: {tmp_path / 'bad.json'} is not valid JSON")
    other = effrank("sweep", "--config", str(tmp_path / "study.yaml"), "--set", "teacher_epochs=2", "--run-dir",
                    str(run_dir))
    assert other.returncode == 2 and "teacher_epochs: saved 1, now 2" in other.stderr  # --set still overrides


def test_verbose_logs_more_than_the_default(tmp_path):
    quiet = effrank("sweep", *SMOKE, "--run-dir", str(tmp_path / "run"))
    assert quiet.returncode == 0 and "INFO effrank_utils" in quiet.stderr and "DEBUG" not in quiet.stderr
    verbose = effrank("analyze", str(tmp_path / "run"), "-v")
    assert verbose.returncode == 0 and "DEBUG" in verbose.stderr


@pytest.mark.parametrize("command", [[], ["reproduce"], ["sweep"], ["analyze"], ["compare"], ["dashboard"],
                                     ["fields"], ["lab"]])
def test_help_texts_carry_no_markup(command):
    proc = effrank(*command, "--help")
    assert proc.returncode == 0
    for markup in ("``", ":func:", ":mod:", ":class:"):
        assert markup not in proc.stdout, f"{markup} in `effrank {' '.join(command)} --help`"
