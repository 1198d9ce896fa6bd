"""Comparing studies: the table, the figure, warnings for different estimators, refusal of non-studies."""

import json

import pytest

from effrank_utils.cli import main
from effrank_utils.estimate.convergence import ABSOLUTE_TOLERANCE
from effrank_utils.report.compare import (
    budget_checks,
    comparison_table,
    estimator_warnings,
    load_studies,
    save_comparison,
)
from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep

SMOKE = dict(ranks=[1, 2, 4, 8], student_epochs=1)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Two studies of one teacher recipe factorizing different maps, a third with the same estimator as the
    first (another teacher seed), a fourth that is the first with a longer student budget, and three with early
    stopping under budgets (patience, epochs) of (1, 3), (2, 2) and (2, 3)."""
    root = tmp_path_factory.mktemp("compare")
    runs = {"attention": dict(targets=["qkv", "proj"]), "mlp": dict(targets=["mlp"]),
            "attention-seed1": dict(targets=["qkv", "proj"], seed=1),
            "attention-longer": dict(targets=["qkv", "proj"], student_epochs=4),
            **{f"patience{p}-epochs{e}": dict(validation_fraction=0.2, student_schedule="constant",
                                              student_patience=p, student_epochs=e)
               for p, e in [(1, 3), (2, 2), (2, 3)]}}
    for name, overrides in runs.items():
        run_sweep(load_preset("smoke", SMOKE | overrides), root / name)
    return root


def test_the_table_has_one_line_per_study_and_warns_where_estimators_differ(studies, tmp_path):
    compared = load_studies([studies / "attention", studies / "mlp"], ["attn", "mlp"])
    table = comparison_table(compared)
    assert list(table["study"]) == ["attn", "mlp"]
    assert list(table["targets"]) == [["qkv", "proj"], ["mlp"]]
    assert {"r_lo", "r_hi", "knee", "converged", "teacher_accuracy", "teacher_params", "init"} <= set(table)
    (warning,) = estimator_warnings(compared)
    assert warning.startswith("targets differs (attn: ('qkv', 'proj'), mlp: ('mlp',))")
    paths = save_comparison(compared, str(tmp_path))  # a str, as a notebook parameter is
    assert {p.name for p in paths} == {"comparison.png", "comparison.svg", "comparison.json"}
    record = json.loads((tmp_path / "comparison.json").read_text())
    assert record["warnings"] == [warning] and len(record["table"]) == 2


def test_studies_with_the_same_estimator_give_no_warning(studies):
    assert estimator_warnings(load_studies([studies / "attention", studies / "attention-seed1"])) == []


def test_the_command_prints_the_table_and_the_warnings(studies, tmp_path, capsys):
    assert main(["compare", str(studies / "attention"), str(studies / "mlp"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "attention" in out and "warning: targets differs" in out
    assert (tmp_path / "figures" / "comparison.png").exists()


@pytest.mark.parametrize("case, message", [
    ("not a run folder", "is not an effrank run folder"),
    ("no students", "at least 2 are needed"),
    ("one folder", "at least 2 run folders"),
    ("labels", "1 label(s) for 2 run folder(s)"),
])
def test_what_cannot_be_compared_is_refused_in_one_line(studies, tmp_path, capsys, case, message):
    other = tmp_path / "other"
    other.mkdir()
    if case == "no students":
        from effrank_utils.run.teacher import train_teacher
        train_teacher(load_preset("smoke", SMOKE), other)
    args = {"not a run folder": [str(studies / "mlp"), str(other)],
            "no students": [str(studies / "mlp"), str(other)],
            "one folder": [str(studies / "mlp")],
            "labels": [str(studies / "mlp"), str(studies / "attention"), "--labels", "x"]}[case]
    assert main(["compare", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_longer_budget_of_the_same_study_is_checked_against_the_convergence_tolerance(studies):
    names = ["attention-longer", "mlp", "attention-seed1", "attention"]  # the longer one first: sorted by budget
    compared = load_studies([studies / n for n in names], names)
    (check,) = budget_checks(compared)  # other targets, another teacher seed: not the same study
    assert (check["shorter"], check["longer"]) == ("attention", "attention-longer")
    shorter, longer = compared[3].result, compared[0].result
    for name, before, after in [("region_low", shorter.region_low, longer.region_low),
                                ("region_high", shorter.region_high, longer.region_high),
                                ("knee", shorter.knee, longer.knee)]:
        moved = check["movements"][name]
        assert before is not None and after is not None  # smoke's curves cross both bounds and have a knee
        assert moved["distance"] == pytest.approx(abs(after - before))
        assert moved["tolerance"] >= ABSOLUTE_TOLERANCE
        assert moved["settled"] == (moved["distance"] is not None and moved["distance"] < moved["tolerance"])
    assert check["settled"] == all(m["settled"] for m in check["movements"].values())
    assert check["verdict"].endswith("settled" if check["settled"] else "not converged, train longer")


def test_studies_of_one_budget_get_no_budget_check_and_the_command_prints_one(studies, tmp_path, capsys):
    assert budget_checks(load_studies([studies / "attention", studies / "attention-seed1"])) == []
    assert main(["compare", str(studies / "attention"), str(studies / "attention-longer"), "--out",
                 str(tmp_path)]) == 0
    assert "budget: from attention to attention-longer (a longer student budget): " in capsys.readouterr().out
    assert json.loads((tmp_path / "comparison.json").read_text())["budget_checks"][0]["longer"] == "attention-longer"


def test_only_a_budget_longer_in_every_field_is_checked(studies):
    def pairs(*names):
        return [(c["shorter"], c["longer"]) for c in budget_checks(load_studies([studies / n for n in names], names))]
    assert pairs("patience1-epochs3", "patience2-epochs2") == []  # more patience but fewer epochs: neither is longer
    assert pairs("patience2-epochs3", "patience1-epochs3", "patience2-epochs2") == [
        ("patience1-epochs3", "patience2-epochs3"), ("patience2-epochs2", "patience2-epochs3")]
