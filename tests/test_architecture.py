"""The package's shape: folders are layers, imports only point down (counting those inside functions and under
TYPE_CHECKING), no import cycle, the read side loads neither torch nor the training side, one home per concept."""

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "effrank_utils"
#: Each layer folder and the folders it may import from (besides itself); ``report`` is the read side.
LAYERS = {
    "base": set(),
    "estimate": {"base"},
    "records": {"base", "estimate"},
    "lowrank": {"base", "estimate", "records"},
    "training": {"base", "estimate", "records", "lowrank"},
    "run": {"base", "estimate", "records", "lowrank", "training"},
    "report": {"base", "estimate", "records"},
}
#: Modules that import nothing from the package but these (the config: only the band's default and validation).
LEAVES = {"version": set(), "records.config": {"estimate.curves"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``ImportFrom`` names (``from .x import y`` may name module ``x.y`` or a name in
    ``x``): dotted names under the package, '' for the package itself."""
    if node.level == 0:
        if not (node.module or "").startswith("effrank_utils"):
            return []
        base = node.module.split(".")[1:]
    else:
        here = module.split(".") if module else []
        if not is_package:
            here = here[:-1]
        base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    target = ".".join(base)
    named = [f"{target}.{a.name}" if target else a.name for a in node.names]
    return [n for n in named if n in MODULES] or [target]


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Every module's package-internal imports anywhere in it: top level, inside functions, under TYPE_CHECKING."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module, found = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found.update(resolve(module, path.name == "__init__.py", node))
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("effrank_utils."))
        graph[module] = {m for m in found if m != module}
    return graph


def layer(module: str) -> str | None:
    return module.split(".")[0] if module.split(".")[0] in LAYERS else None


def test_the_graph_sees_function_level_and_type_checking_imports():
    graph = import_graph()
    assert "training.data" in graph["run.preflight"]  # module level
    assert "records.config" in graph["training.data"]  # under TYPE_CHECKING
    assert "report.study" in graph["cli"]  # inside a function


def test_no_import_cycle():
    graph = import_graph()
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


def test_every_module_lives_in_a_layer_folder():
    loose = sorted(m for m in MODULES if layer(m) is None and m not in ("", "cli", "__main__", "version"))
    assert not loose, f"modules outside the layer folders: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)


def test_imports_only_point_down_the_layers():
    wrong = []
    for module, deps in import_graph().items():
        if module in LEAVES and deps - LEAVES[module]:
            wrong.append(f"{module} (a leaf) imports {sorted(deps)}")
        if (own := layer(module)) is None:
            continue
        for dep in deps:
            if dep in ("", "cli", "__main__"):
                wrong.append(f"{module} imports the top of the package ({dep or 'the facade'})")
            elif (target := layer(dep)) is not None and target != own and target not in LAYERS[own]:
                wrong.append(f"{module} ({own}) imports {dep} ({target})")
    assert not wrong, "\n".join(wrong)


def test_the_analysis_side_loads_no_training_code(tmp_path):
    from effrank_utils.base.storage import write_json
    from effrank_utils.records.run_folder import SWEEP_CSV, TEACHER_JSON, write_record
    from effrank_utils.run.entry import load_preset
    write_record(tmp_path, load_preset("smoke"), "fingerprint")
    write_json(tmp_path / TEACHER_JSON, {"status": "done", "accuracy": 0.9})
    (tmp_path / SWEEP_CSV).write_text("rank,seed,status,params,teacher_params,final_accuracy\n"
                                      "1,0,ok,10,100,0.5\n2,0,ok,20,100,0.8\n4,0,ok,40,100,0.9\n")
    code = ("import sys\nimport effrank_utils.report.analysis, effrank_utils.report.panel\n"
            "from effrank_utils import analyze, load_study, summary_text\n"
            f"study = load_study({str(tmp_path)!r})\nsummary_text(study, analyze(study))\n"
            "print(','.join(sorted({m.split('.')[1] for m in sys.modules if m.startswith('effrank_utils.')})))\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    loaded = set(out[0].split(","))
    assert loaded <= {"base", "estimate", "records", "report", "version"}, f"the read side loads {sorted(loaded)}"
    assert out[1] == "False", "the analysis side imports torch"


def test_the_facade_lists_the_api_and_each_name_resolves():
    import effrank_utils
    assert {"open_study", "run_sweep", "load_study", "analyze", "effective_rank", "factorize"} <= set(
        effrank_utils.__all__)
    for name in effrank_utils.__all__:
        assert getattr(effrank_utils, name) is not None
    with pytest.raises(AttributeError):
        effrank_utils.no_such_name  # noqa: B018


@pytest.mark.parametrize("literal", ['"teacher.json"', '"summary.json"', '"config.json"', '"sweep.csv"',
                                     '"teacher.pt"', '"figures"', '"tasks"', "1_000_003", "100_003", "(0.85, 0.95)",
                                     '"region_low": "r_lo"', "<= 64"])
def test_values_have_one_home(literal):
    homes = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if literal in p.read_text()]
    assert len(homes) <= 1, f"{literal} appears in {homes}"


def test_every_config_field_declares_a_role_and_the_identity_follows_from_them():
    from effrank_utils.records import config
    roles = config.field_roles()
    assert set(roles) == set(config.FIELD_NAMES) and set(roles.values()) <= set(config.ROLES)
    assert set(config.STUDY_FIELDS) == {n for n, r in roles.items() if r in ("teacher", "student")}
    unassigned = dataclasses.make_dataclass("Unassigned", [("fresh_field", int, dataclasses.field(default=0))],
                                            bases=(config.StudyConfig,), frozen=True)
    with pytest.raises(ValueError, match="fresh_field declare no role"):
        config.field_roles(unassigned)


def test_registries_live_beside_their_implementations():
    from effrank_utils.lowrank import factorize
    from effrank_utils.run import executors
    from effrank_utils.run.preflight import _registries
    from effrank_utils.training import data, distill, loop
    registries = _registries()
    assert registries["dataset"] == tuple(data.DATASETS)
    assert registries["loss"] == tuple(distill.LOSSES)
    assert registries["init"] == tuple(factorize.INITS)
    assert registries["executor"] == tuple(executors.EXECUTORS)
    assert registries["student_schedule"] == tuple(loop.SCHEDULES)
    config_source = (PACKAGE / "records" / "config.py").read_text()
    for name in ("LOSSES =", "DATASETS =", "EXECUTORS =", "SCHEDULES =", "INITS ="):
        assert name not in config_source
