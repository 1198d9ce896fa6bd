"""Teacher training, distillation losses and students on digits."""

import json

import pytest
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer

from effrank_utils.lowrank.factorize import factorize
from effrank_utils.records.run_folder import Task
from effrank_utils.run.entry import load_preset
from effrank_utils.run.students import train_students
from effrank_utils.run.teacher import load_teacher, train_teacher
from effrank_utils.training.data import pipeline_for
from effrank_utils.training.distill import DistillationLoss, feature_taps
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.loop import Recipe, learning_rate

FAST_TEACHER = dict(embed_dim=48, depth=2, num_heads=4, crop_padding=0, teacher_epochs=20, teacher_lr=3e-3,
                    teacher_warmup_epochs=1, teacher_batch_size=32, ranks=[1, 2, 4, 8, 16, 32, 48])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = load_preset("demo", **FAST_TEACHER)
    data = load_data_for(cfg)  # the demo holds out a validation split
    run = tmp_path_factory.mktemp("teacher")
    teacher = train_teacher(cfg, run, data)
    return cfg, data, teacher, run


def test_teacher_learns_digits_in_few_epochs(trained):
    cfg, _, teacher, run = trained  # the budget is epochs, not seconds: no wall-clock assertion
    assert teacher.accuracy > 0.90
    assert cfg.teacher_epochs <= 20
    assert len(teacher.history) == cfg.teacher_epochs
    saved = json.loads((run / "teacher.json").read_text())
    assert saved["status"] == "done" and saved["accuracy"] == teacher.accuracy
    assert (run / "teacher_metrics.csv").read_text().count("\n") == cfg.teacher_epochs + 1
    assert not (run / "teacher.state.pt").exists()


def test_teacher_checkpoint_reloads_and_refuses_other_configs(trained):
    cfg, data, teacher, run = trained
    again = load_teacher(cfg, run, data)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(again.model(x), teacher.model.cpu()(x))
    with pytest.raises(ValueError, match=r"different config \(depth: saved 2, now 3"):
        load_teacher(cfg.replace(depth=3), run, data)


def test_moderate_rank_student_beats_rank_one(trained):
    cfg, data, teacher, _ = trained
    cfg = cfg.replace(student_epochs=2)
    rows = train_students(cfg, teacher.model, data, [Task(1, 0), Task(8, 0)])
    assert rows[1]["final_accuracy"] > rows[0]["final_accuracy"] + 0.1
    assert rows[0]["params"] < rows[1]["params"] < rows[0]["teacher_params"]
    assert rows[1]["best_accuracy"] >= rows[1]["final_accuracy"]


@pytest.mark.parametrize("loss", ["kd", "logits", "geometric"])
def test_loss_vanishes_for_the_full_rank_copy_only(trained, loss):
    cfg, data, teacher, _ = trained
    pipeline = pipeline_for(cfg, data, 64)
    batch = next(pipeline.train_batches(0, 0))
    exact = factorize(teacher.model, 48, init="svd").eval()
    perturbed = factorize(teacher.model, 48, init="svd").eval()
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fn = DistillationLoss(teacher.model, loss, temperature=4.0, alpha=1.0)
    shared = fn.shared(batch)
    same, other = (float(fn.loss(m, batch, shared).detach()) for m in (exact, perturbed))
    assert abs(same) < 1e-4
    assert other > 100 * max(abs(same), 1e-6)


def test_geometric_hooks_find_every_block():
    timm_vit = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=3,
                                 num_heads=2)
    with feature_taps(timm_vit) as feats:
        timm_vit(torch.randn(2, 1, 8, 8))
    assert len(feats) == 2 * 3 and all(f.shape == (2, 5, 16) for f in feats)
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                              hidden_dim=16, mlp_dim=32)
    for model in (tv, factorize(tv, 4)):
        with feature_taps(model) as feats:
            model(torch.randn(2, 3, 32, 32))
        assert len(feats) == 2 * 2 and all(f.shape == (2, 5, 16) for f in feats)


def test_learning_rate_schedule():
    recipe = Recipe(epochs=10, lr=1.0, weight_decay=0.0, warmup_epochs=2, schedule="cosine")
    assert learning_rate(recipe, 0, 10) == pytest.approx(0.05)
    assert learning_rate(recipe, 19, 10) == pytest.approx(1.0)
    assert learning_rate(recipe, 20, 10) == pytest.approx(1.0)
    assert learning_rate(recipe, 99, 10) < 0.001
    flat = Recipe(epochs=10, lr=0.5, weight_decay=0.0, schedule="constant")
    assert learning_rate(flat, 57, 10) == 0.5
