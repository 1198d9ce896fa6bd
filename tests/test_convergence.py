"""Students trained to convergence: early stopping on a validation split, the budget trajectory of the region,
and the converged flag."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from effrank_utils.estimate.convergence import Movement, accuracy_at_budget, budget_steps, convergence
from effrank_utils.estimate.curves import NOT_REACHED, effective_rank
from effrank_utils.records.run_folder import EPOCHS_CSV, read_epochs
from effrank_utils.report import analysis
from effrank_utils.report.study import load_study
from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep
from effrank_utils.training import loop
from effrank_utils.training.data import load_data, pipeline_for, validation_split
from effrank_utils.training.loop import (
    CAP,
    PLATEAU,
    PLATEAU_CUTS,
    PLATEAU_FACTOR,
    Recipe,
    fit,
    plateaued,
    plateaus,
    rate_factor,
)
from effrank_utils.training.models import build_model

SMOKE = dict(validation_fraction=0.1, student_patience=1, student_schedule="constant", student_epochs=6)


# ------------------------------------------------------------------------------------------ early stopping
class CrossEntropy:
    def shared(self, batch):
        return None

    def loss(self, model, batch, shared):
        return F.cross_entropy(model(batch.x), batch.y)


@pytest.fixture(scope="module")
def setup():
    config = load_preset("smoke", validation_fraction=0.2)
    data = load_data("digits", train_subset=300, validation_fraction=0.2)
    return config, data, pipeline_for(config, data, 64)


def models(config, data, n=2):
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(build_model(config, data.num_classes, data.channels))
    return out


@pytest.fixture
def scripted_validation(monkeypatch):
    """Validation accuracy by script: model 0 plateaus after its first epoch, model 1 improves every epoch."""
    calls = {0: 0, 1: 0}
    real = loop.correct_predictions

    def correct_predictions(model, pipeline, amp=False, split="test"):
        if split != "val":
            return real(model, pipeline, amp, split)
        calls[model.slot] += 1
        right = 5 if model.slot == 0 else calls[model.slot]  # of 10 images: 0.5, or 0.1 more every epoch
        return torch.arange(10) < right

    monkeypatch.setattr(loop, "correct_predictions", correct_predictions)
    return calls


def tagged(group):
    for slot, model in enumerate(group):
        model.slot = slot
    return group


def constant_with(patience):
    return Recipe(epochs=10, lr=1e-3, weight_decay=0.0, schedule="constant", patience=patience)


def test_plateau_helper():
    history = [{"val_accuracy": v} for v in (0.2, 0.5, 0.5, 0.4)]
    assert plateaued(history, constant_with(2)) and not plateaued(history, constant_with(3))
    assert not plateaued(history, constant_with(0))
    assert not plateaued(history[:3], constant_with(2))  # a plateau needs patience epochs after a best


def test_plateaus_are_counted_from_the_best_so_far_and_restart_after_each():
    values = (0.2, 0.5, 0.5, 0.4, 0.5, 0.5, 0.6, 0.6, 0.6)  # plateaus end at epochs 3 and 5; 0.6 is a new best
    history = [{"val_accuracy": v} for v in values]
    assert [plateaus(history[:n], 2) for n in range(1, 10)] == [0, 0, 0, 1, 1, 2, 2, 2, 3]
    assert plateaus(history, 0) == 0


def test_the_plateau_schedule_cuts_the_rate_at_each_plateau_then_stops():
    recipe = Recipe(epochs=20, lr=1e-3, weight_decay=0.0, schedule="plateau", patience=1)
    history = []
    factors = []
    for value in (0.5, 0.5, 0.6, 0.6, 0.6):  # plateaus after epochs 2, 4 and 5
        history.append({"val_accuracy": value})
        factors.append(rate_factor(history, recipe))
    assert factors == pytest.approx([1, PLATEAU_FACTOR, PLATEAU_FACTOR, PLATEAU_FACTOR ** 2, PLATEAU_FACTOR ** 2])
    assert [plateaued(history[:n], recipe) for n in range(1, 6)] == [False] * 4 + [True]
    assert PLATEAU_CUTS == 2
    assert rate_factor(history, constant_with(1)) == 1.0  # only the plateau schedule cuts


def test_a_plateau_scheduled_student_trains_on_at_a_lower_rate(setup, scripted_validation):
    config, data, pipeline = setup
    recipe = Recipe(epochs=8, lr=1e-3, weight_decay=0.0, schedule="plateau", patience=1)
    flat, rising = fit(tagged(models(config, data)), CrossEntropy(), pipeline, recipe, seed=0)
    assert (flat.stop_reason, len(flat.history)) == (PLATEAU, 4)  # cut after epochs 2 and 3, stopped after 4
    assert [h["lr"] for h in flat.history] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    assert (rising.stop_reason, len(rising.history)) == (CAP, 8)
    assert {h["lr"] for h in rising.history} == {1e-3}


def test_a_plateaued_student_stops_and_an_improving_one_hits_the_cap(setup, scripted_validation):
    config, data, pipeline = setup
    recipe = Recipe(epochs=6, lr=1e-3, weight_decay=0.0, schedule="constant", patience=2)
    flat, rising = fit(tagged(models(config, data)), CrossEntropy(), pipeline, recipe, seed=0)
    assert (flat.stop_reason, len(flat.history)) == (PLATEAU, 3)  # best at epoch 1, then 2 without improvement
    assert (rising.stop_reason, len(rising.history)) == (CAP, 6)
    assert [h["val_accuracy"] for h in rising.history] == pytest.approx([0.1 * k for k in range(1, 7)])
    assert all({"val_accuracy", "test_accuracy"} <= set(h) for h in flat.history + rising.history)
    assert flat.final_accuracy == flat.history[-1]["test_accuracy"]


def test_leaving_the_group_does_not_change_the_others(setup, scripted_validation):
    config, data, pipeline = setup
    recipe = Recipe(epochs=4, lr=1e-3, weight_decay=0.0, schedule="constant", patience=1)
    group = tagged(models(config, data))
    _, together = fit(group, CrossEntropy(), pipeline, recipe, seed=0)
    alone = tagged(models(config, data))[1:]
    alone[0].slot = 1
    (solo,) = fit(alone, CrossEntropy(), pipeline, recipe, seed=0)
    assert [h["test_accuracy"] for h in solo.history] == [h["test_accuracy"] for h in together.history]
    torch.testing.assert_close(alone[0].state_dict(), group[1].state_dict())


def test_resume_in_the_middle_of_a_group_with_a_stopped_student(setup, scripted_validation, tmp_path):
    config, data, pipeline = setup
    recipe = Recipe(epochs=6, lr=1e-3, weight_decay=0.0, schedule="constant", patience=2)
    straight = tagged(models(config, data))
    expected = fit(straight, CrossEntropy(), pipeline, recipe, seed=0)

    class Killed(Exception):
        pass

    def kill_at_4(epoch, results):
        assert results[0].stop_reason == (PLATEAU if epoch >= 3 else None)
        if epoch == 4:
            raise Killed

    scripted_validation.update({0: 0, 1: 0})
    with pytest.raises(Killed):
        fit(tagged(models(config, data)), CrossEntropy(), pipeline, recipe, seed=0, state_path=tmp_path / "s.pt",
            on_epoch=kill_at_4)
    scripted_validation.update({0: 3, 1: 4})  # the validation script picks up where the killed run left it
    resumed_models = tagged(models(config, data, n=2))
    resumed = fit(resumed_models, CrossEntropy(), pipeline, recipe, seed=0, state_path=tmp_path / "s.pt")
    def strip(result):  # wall time differs between runs
        return result.stop_reason, [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]

    assert [strip(r) for r in resumed] == [strip(r) for r in expected]
    for got, want in zip(resumed_models, straight):
        torch.testing.assert_close(got.state_dict(), want.state_dict())


def test_early_stopping_needs_a_validation_split(setup):
    config, _, _ = setup
    data = load_data("digits", train_subset=300)
    with pytest.raises(ValueError, match="validation split"):
        fit(models(config, data, 1), CrossEntropy(), pipeline_for(config, data, 64),
            Recipe(epochs=2, lr=1e-3, weight_decay=0.0, schedule="constant", patience=1), seed=0)


# ------------------------------------------------------------------------------------------ config and data
@pytest.mark.parametrize("overrides, message", [
    (dict(student_patience=2, student_schedule="constant"), "student_patience: early stopping is judged on a "
                                                            "validation split"),
    (dict(student_patience=2, validation_fraction=0.1), "student_patience: a cosine schedule"),
    (dict(teacher_patience=2, validation_fraction=0.1), "teacher_patience: a cosine schedule"),
    (dict(validation_fraction=0.5), "validation_fraction: must lie in"),
    (dict(student_patience=-1), "student_patience: must be an integer >= 0"),
    (dict(student_schedule="plateau"), "student_schedule: 'plateau' cuts the learning rate"),
])
def test_bad_stopping_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_preset("smoke", overrides)


def test_validation_split_is_held_out_from_training_class_balanced_and_reproducible():
    plain = load_data("digits", train_subset=300)
    split = load_data("digits", train_subset=300, validation_fraction=0.2)
    again = load_data("digits", train_subset=300, validation_fraction=0.2)
    assert split.val_labels.numel() == 60 and split.train_labels.numel() == 240
    assert torch.equal(split.test_images, plain.test_images)  # the reported split is untouched
    assert torch.bincount(split.val_labels, minlength=10).min() >= 5
    train, val = validation_split(np.repeat(np.arange(10), 30), 0.2, seed=0)
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(300))
    assert torch.equal(split.val_images, again.val_images)
    assert split.fingerprint() == again.fingerprint() != plain.fingerprint()
    with pytest.raises(ValueError, match="validation_fraction: 0.01 of 300 training images gives 3"):
        load_data("digits", train_subset=300, validation_fraction=0.01)


# ------------------------------------------------------------------------------------------ budget trajectory
RANKS = (1, 2, 4, 8, 16)


def epochs_table(final: dict[int, float], rise: dict[int, float], stopped: dict[int, int], cap: int) -> pd.DataFrame:
    """Accuracy per epoch: ``final[r] - rise[r] / epoch`` (rising, flattening), until ``stopped[r]`` (or cap)."""
    rows = []
    for r in RANKS:
        for e in range(1, stopped.get(r, cap) + 1):
            rows.append({"rank": r, "seed": 0, "epoch": e, "test_accuracy": final[r] - rise[r] / e})
    return pd.DataFrame(rows)


FINAL = {1: 0.3, 2: 0.6, 4: 0.85, 8: 0.93, 16: 0.95}


def test_budget_steps_end_in_a_doubling():
    assert budget_steps(1) == [1]
    assert budget_steps(10) == [1, 2, 3, 5, 10]
    assert budget_steps(64) == [1, 2, 4, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="max_epochs"):
        budget_steps(0)


def test_accuracy_at_a_budget_keeps_a_stopped_students_last_accuracy():
    table = epochs_table(FINAL, {r: 0.1 for r in RANKS}, stopped={16: 3}, cap=8)
    at = accuracy_at_budget(table, 5).set_index("rank")
    assert at.loc[16, "epoch"] == 3 and at.loc[16, "test_accuracy"] == pytest.approx(0.95 - 0.1 / 3)
    assert at.loc[1, "epoch"] == 5 and at.loc[1, "test_accuracy"] == pytest.approx(0.3 - 0.1 / 5)


def test_the_last_budget_is_the_reported_estimate():
    table = epochs_table(FINAL, {r: 0.2 for r in RANKS}, stopped={8: 4, 16: 5}, cap=12)
    found = convergence(table, 1.0)
    last = accuracy_at_budget(table, 12)
    direct = effective_rank(last["rank"], last["test_accuracy"], 1.0, n_bootstrap=0)
    assert found.budgets == (1, 2, 3, 6, 12)
    assert found.results[-1].region_low == direct.region_low and found.results[-1].knee == direct.knee
    assert list(found.table()["budget"]) == [1, 2, 3, 6, 12]


def test_converged_when_the_last_doubling_moves_nothing():
    table = epochs_table(FINAL, {r: 0.002 for r in RANKS}, stopped={}, cap=16)
    found = convergence(table, 1.0, stop_reasons=["cap"] * 3 + ["plateau"] * 2)
    assert found.converged and found.verdict().startswith("converged (r_lo moved ")
    # every quantity is named with how far it moved against its tolerance, not only "less than"
    assert found.verdict() == ("converged (r_lo moved 0.00 (tolerance 0.50); r_hi not reached at both budgets; "
                               "knee moved 0.00 (tolerance 0.50) from 8 to 16 epochs)")
    assert found.to_dict()["stop_reasons"] == {"cap": 3, "plateau": 2}
    assert all(step["settled"] for step in found.to_dict()["last_step"].values())


def test_a_quantity_missing_at_both_budgets_for_the_same_reason_is_said_so():
    step = Movement("region_high", (NOT_REACHED, None), (NOT_REACHED, None))
    assert step.settled and step.describe() == "r_hi not reached at both budgets"
    assert Movement("knee", ("defined", 4.0), ("defined", 4.25)).describe() == "knee moved 0.25 (tolerance 0.50)"


def test_not_converged_when_the_region_still_moves():
    rise = {1: 0.2, 2: 0.6, 4: 0.6, 8: 0.4, 16: 0.1}  # small ranks still climbing at the cap
    found = convergence(epochs_table(FINAL, rise, stopped={}, cap=16), 1.0)
    assert not found.converged
    assert found.verdict().startswith("not converged: train longer (r_lo moved")
    assert "from 8 to 16 epochs" in found.verdict()


def test_a_single_budget_is_never_called_converged():
    found = convergence(epochs_table(FINAL, {r: 0 for r in RANKS}, stopped={}, cap=1), 1.0)
    assert not found.converged and "one budget only" in found.verdict()


def test_a_level_that_appears_in_the_last_step_is_not_settled():
    final = {**FINAL, 16: 0.97, 8: 0.9}
    rise = {1: 0.0, 2: 0.0, 4: 0.0, 8: 0.0, 16: 0.2}  # only at the cap does rank 16 reach 95%
    found = convergence(epochs_table(final, rise, stopped={}, cap=8), 0.99)
    high = next(m for m in found.movements if m.name == "region_high")
    assert high.before[0] == "not_reached" and not high.settled
    assert "r_hi changed from not reached to" in found.verdict()


# ------------------------------------------------------------------------------------------ the study
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("converged")
    run_sweep(load_preset("smoke", SMOKE), run_dir)
    return run_dir


def test_rows_record_epochs_stop_reason_and_per_epoch_accuracy(stopped_run):
    table = pd.read_csv(stopped_run / "sweep.csv")
    epochs = read_epochs(stopped_run)
    assert set(table["stop_reason"]) <= {PLATEAU, CAP} and (table["epochs"] <= 6).all()
    assert len(epochs) == table["epochs"].sum() and epochs["val_accuracy"].notna().all()
    last = epochs.sort_values("epoch").groupby("rank").tail(1).set_index("rank")["test_accuracy"]
    assert np.allclose(last.loc[table["rank"]].to_numpy(), table["final_accuracy"].to_numpy())
    row = json.loads((stopped_run / "tasks" / "r00001_s0.json").read_text())
    assert [h["epoch"] for h in row["history"]] == list(range(1, row["epochs"] + 1))


def test_summary_and_headline_say_whether_it_converged(stopped_run):
    study = load_study(stopped_run)
    result = analysis.analyze(study)
    analysis.save_results(study, result, "teacher")
    summary = json.loads((stopped_run / "summary.json").read_text())
    found = summary["convergence"]
    assert summary["converged"] is found["converged"] in (True, False)
    assert found["budgets"][-1] == int(study.table["epochs"].max())
    assert [b["budget"] for b in found["at_budget"]] == found["budgets"]
    assert summary["estimator"]["student_patience"] == 1
    headline = analysis.headline(stopped_run)
    assert ("; converged (" in headline) != ("; not converged: train longer" in headline)
    assert (stopped_run / "figures" / "convergence.png").exists()


def test_a_sweep_without_per_epoch_records_says_so(stopped_run, tmp_path):
    import shutil
    copy = tmp_path / "old"
    shutil.copytree(stopped_run, copy)
    (copy / EPOCHS_CSV).unlink()
    study = load_study(copy)
    analysis.write_summary(study, analysis.analyze(study), "teacher")
    assert json.loads((copy / "summary.json").read_text())["converged"] is None
    assert "convergence unknown" in analysis.headline(copy)


def test_a_plateau_scheduled_sweep_records_its_cuts_and_says_so(tmp_path):
    run_dir = tmp_path / "cuts"
    run_sweep(load_preset("smoke", SMOKE | dict(student_schedule="plateau", student_epochs=12, ranks=(1, 4))),
              run_dir)
    cut = 0
    for task in sorted((run_dir / "tasks").glob("*.json")):
        row = json.loads(task.read_text())
        rates = [h["lr"] for h in row["history"]]
        cut += min(rates) < 3e-3
        assert rates == sorted(rates, reverse=True)
        assert {round(r / 3e-3, 6) for r in rates} <= {1.0, 0.1, 0.01}  # the smoke rate, cut by 10x per plateau
        if row["stop_reason"] == PLATEAU:  # stopped at the third plateau, after two cuts
            assert rates[-1] == pytest.approx(3e-5)
    assert cut, "no student reached a plateau: the test would not see a cut"
    assert read_epochs(run_dir)["lr"].notna().all()
    study = load_study(run_dir)
    analysis.save_results(study, analysis.analyze(study), "teacher")
    assert "learning rate cut at earlier plateaus, stopping at a validation plateau (patience 1)" in \
        analysis.headline(run_dir)
