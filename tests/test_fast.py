"""Fast sweeps: fused students equal solo ones, the teacher-logit cache, adaptive rank refinement."""

import numpy as np
import pandas as pd
import pytest
import torch

from effrank_utils.estimate.refine import next_ranks, tolerance
from effrank_utils.lowrank.factorize import factorize
from effrank_utils.records.run_folder import Task
from effrank_utils.run import sweep
from effrank_utils.run.entry import load_preset
from effrank_utils.run.preflight import preflight
from effrank_utils.run.students import train_students
from effrank_utils.run.teacher import train_teacher
from effrank_utils.training.data import load_data, pipeline_for
from effrank_utils.training.distill import DistillationLoss
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.loop import fit, recipe_for
from effrank_utils.training.teacher_cache import TeacherLogitCache, cache_key


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = load_preset("smoke", crop_padding=1, hflip=True, student_epochs=2, ranks=[1, 2, 4, 8])
    data = load_data("digits", train_subset=cfg.train_subset)
    teacher = train_teacher(cfg, tmp_path_factory.mktemp("teacher"), data)
    return cfg, data, teacher.model


@pytest.mark.parametrize("loss", ["kd", "geometric"])
def test_fused_students_equal_students_trained_alone(setup, loss):
    cfg, data, teacher = setup
    cfg = cfg.replace(loss=loss)
    pipeline = pipeline_for(cfg, data, cfg.student_batch_size)
    ranks = [1, 4, 8]
    recipe = recipe_for(cfg, "student")
    fn = DistillationLoss(teacher, loss, cfg.kd_temperature, cfg.kd_alpha)
    fused = [factorize(teacher, r) for r in ranks]
    fused_results = fit(fused, fn, pipeline, recipe, seed=0)
    for rank, student, fused_result in zip(ranks, fused, fused_results):
        alone = factorize(teacher, rank)
        (alone_result,) = fit([alone], fn, pipeline, recipe, seed=0)
        assert alone_result.final_accuracy == fused_result.final_accuracy
        for (name, a), b in zip(alone.state_dict().items(), student.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6), name


def test_fused_sweep_gives_the_same_table(setup, tmp_path):
    cfg, data, _ = setup
    solo = sweep.run_sweep(cfg, tmp_path / "solo", data=data)
    fused = sweep.run_sweep(cfg.replace(fuse=4), tmp_path / "fused", data=data)
    cols = ["rank", "seed", "params", "final_accuracy", "best_accuracy", "zero_shot_accuracy"]
    pd.testing.assert_frame_equal(solo[cols], fused[cols])


def test_early_stopping_fused_and_cached_gives_the_table_of_students_trained_alone(tmp_path):
    cfg = load_preset("smoke", ranks=[1, 2, 4, 8], student_epochs=6, validation_fraction=0.1, student_patience=1,
                      student_schedule="constant")
    data = load_data_for(cfg)
    solo = sweep.run_sweep(cfg, tmp_path / "solo", data=data)
    fused = sweep.run_sweep(cfg.replace(fuse=4, cache_teacher=True), tmp_path / "fused", data=data)
    cols = ["rank", "seed", "final_accuracy", "val_accuracy", "epochs", "stop_reason"]
    pd.testing.assert_frame_equal(solo[cols], fused[cols])
    assert set(fused["stop_reason"]) <= {"plateau", "cap"} and fused["epochs"].between(1, 6).all()


def test_teacher_cache_fills_once_and_then_replaces_the_teacher(setup, tmp_path, monkeypatch):
    cfg, data, teacher = setup
    cfg = cfg.replace(cache_teacher=True)
    first = train_students(cfg, teacher, data, [Task(2, 0)], cache_dir=tmp_path)
    files = sorted(tmp_path.rglob("epoch_*.pt"))
    assert len(files) == cfg.student_epochs
    # a cache miss runs the teacher and stores its logits; on the second student every lookup must hit
    monkeypatch.setattr(TeacherLogitCache, "store", lambda *a: pytest.fail("teacher was recomputed"))
    again = train_students(cfg, teacher, data, [Task(2, 0)], cache_dir=tmp_path)
    assert again[0]["final_accuracy"] == first[0]["final_accuracy"]
    stored = torch.load(files[0], weights_only=True)["logits"]
    assert stored.dtype == torch.float16 and stored.shape == (data.train_labels.numel(), 10)


def test_damaged_teacher_cache_is_moved_aside_and_rebuilt(setup, tmp_path):
    cfg, data, teacher = setup
    cfg = cfg.replace(cache_teacher=True)
    first = train_students(cfg, teacher, data, [Task(2, 0)], cache_dir=tmp_path)
    (damaged,) = sorted(tmp_path.rglob("epoch_*.pt"))[:1]
    damaged.write_bytes(b"not a checkpoint")
    again = train_students(cfg, teacher, data, [Task(2, 0)], cache_dir=tmp_path)
    assert again[0]["final_accuracy"] == first[0]["final_accuracy"]
    assert damaged.with_name(damaged.name + ".corrupt").exists()
    assert torch.load(damaged, weights_only=True)["logits"].dtype == torch.float16  # rebuilt


def test_cache_key_changes_with_teacher_data_and_augmentation(setup):
    cfg, data, teacher = setup
    pipeline = pipeline_for(cfg, data, 64)
    key = cache_key(teacher, pipeline, seed=0)
    assert cache_key(teacher, pipeline, seed=0) == key
    assert cache_key(teacher, pipeline, seed=1) != key
    assert cache_key(teacher, pipeline_for(cfg.replace(hflip=False), data, 64), seed=0) != key
    other_data = load_data("digits", train_subset=cfg.train_subset, seed=5)
    assert cache_key(teacher, pipeline_for(cfg, other_data, 64), seed=0) != key
    changed = factorize(teacher, 8)
    assert cache_key(changed, pipeline, seed=0) != key


def test_cache_is_refused_for_the_geometric_loss(setup):
    cfg, _, teacher = setup
    with pytest.raises(ValueError, match="cache_teacher"):
        preflight(cfg.replace(loss="geometric", cache_teacher=True))


def saturating(r):
    return 0.9 * (1 - np.exp(-np.asarray(r, float) / 5.0))


def test_next_ranks_bisects_the_brackets_of_crossings_and_knee():
    coarse = [1, 2, 4, 8, 16, 32, 64]
    new = next_ranks(coarse, saturating(coarse), reference=0.9)
    # r_lo = 9.5 lies in [8, 16], r_hi = 15.0 in [8, 16], the knee (~12.9) in [8, 16]
    assert new == [12]
    assert tolerance(100) == 5 and tolerance(3) == 1


def test_next_ranks_extends_the_grid_when_a_level_is_outside():
    assert next_ranks([4, 8, 16], [0.95, 0.96, 0.97], reference=1.0)[0] == 2  # below the grid
    assert next_ranks([1, 2, 4], [0.2, 0.3, 0.4], reference=1.0, max_rank=6) == [3, 6]


def test_refinement_converges_to_the_dense_answer():
    dense_ranks = np.arange(1, 65)
    dense = next_ranks(dense_ranks, saturating(dense_ranks), 0.9)
    assert dense == []  # nothing left to refine on a dense grid
    swept = [1, 2, 4, 8, 16, 32, 64]
    for _ in range(10):
        new = next_ranks(swept, saturating(swept), 0.9)
        if not new:
            break
        swept = sorted(set(swept) | set(new))
    assert len(swept) < 20
    from effrank_utils.estimate.curves import effective_rank
    full = effective_rank(dense_ranks, saturating(dense_ranks), 0.9)
    refined = effective_rank(swept, saturating(swept), 0.9)
    assert refined.region_low == pytest.approx(full.region_low, abs=tolerance(full.region_low))
    assert refined.region_high == pytest.approx(full.region_high, abs=tolerance(full.region_high))


def test_adaptive_sweep_adds_ranks_inside_the_region(setup, tmp_path):
    cfg, data, _ = setup
    cfg = cfg.replace(ranks=[1, 16], sweep_mode="adaptive", refine_rounds=2, reference=0.5, band=(0.5, 0.9))
    table = sweep.run_sweep(cfg, tmp_path, data=data)
    assert len(table) > 2 and {1, 16} <= set(table["rank"])
    assert table["rank"].is_unique
