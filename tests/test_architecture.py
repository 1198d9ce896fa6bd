"""The package's shape: no import cycle, the read side independent of the training side, one home per concept."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "effrank_utils"
TRAINING_SIDE = {"sweep", "students", "executors", "teacher", "training", "distill", "teacher_cache"}


def module_imports() -> dict[str, set[str]]:
    """Each module's package-internal imports that run when it is imported (top level, not TYPE_CHECKING)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        found = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
        graph[path.stem] = found
    return graph


def test_no_import_cycle():
    graph = module_imports()
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "active"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "active":
                pytest.fail("import cycle: " + " -> ".join(trail + [module, dep]))
            if dep not in state:
                visit(dep, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_analysis_side_loads_no_training_code(tmp_path):
    from effrank_utils.presets import load_preset
    from effrank_utils.run_folder import SWEEP_CSV, TEACHER_JSON, write_record
    from effrank_utils.storage import write_json
    write_record(tmp_path, load_preset("smoke"), "fingerprint")
    write_json(tmp_path / TEACHER_JSON, {"status": "done", "accuracy": 0.9})
    (tmp_path / SWEEP_CSV).write_text("rank,seed,status,params,teacher_params,final_accuracy\n"
                                      "1,0,ok,10,100,0.5\n2,0,ok,20,100,0.8\n4,0,ok,40,100,0.9\n")
    code = ("import sys\nimport effrank_utils.curves, effrank_utils.analysis, effrank_utils.plotting, "
            "effrank_utils.panel\n"
            "from effrank_utils.analysis import analyze, load_study, summary_text\n"
            f"study = load_study({str(tmp_path)!r})\nsummary_text(study, analyze(study))\n"
            "print(','.join(sorted(m.split('.')[1] for m in sys.modules if m.startswith('effrank_utils.'))))\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    loaded = set(out[0].split(","))
    assert not loaded & TRAINING_SIDE, f"the analysis side imports {sorted(loaded & TRAINING_SIDE)}"
    assert out[1] == "False", "the analysis side imports torch"


@pytest.mark.parametrize("literal", ['"teacher.json"', '"summary.json"', '"config.json"', '"sweep.csv"',
                                     '"teacher.pt"', '"figures"', '"tasks"', "1_000_003", "100_003"])
def test_run_folder_names_and_seed_rules_have_one_home(literal):
    homes = [p.name for p in PACKAGE.glob("*.py") if literal in p.read_text()]
    assert len(homes) <= 1, f"{literal} appears in {homes}"


def test_registries_live_beside_their_implementations():
    from effrank_utils import data, distill, executors, factorize, training
    from effrank_utils.config import _registries
    registries = _registries()
    assert registries["dataset"] == tuple(data.DATASETS)
    assert registries["loss"] == tuple(distill.LOSSES)
    assert registries["init"] == tuple(factorize.INITS)
    assert registries["executor"] == tuple(executors.EXECUTORS)
    assert registries["student_schedule"] == tuple(training.SCHEDULES)
    config_source = (PACKAGE / "config.py").read_text()
    for name in ("LOSSES =", "DATASETS =", "EXECUTORS =", "SCHEDULES =", "INITS ="):
        assert name not in config_source
