"""Training-free estimates: spectral measures on matrices with known spectra, per-map tables of real models,
and the side-by-side comparison with truncation and distillation."""

import json
import math

import numpy as np
import pytest
import torch
import torchvision

from effrank_utils.estimate.spectra import MEASURES, energy_rank, entropy_rank, measures, stable_rank, summarize
from effrank_utils.lowrank.weight_spectra import layer_spectra
from effrank_utils.records.run_folder import read_spectra
from effrank_utils.report import analysis
from effrank_utils.report.study import load_study
from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep
from effrank_utils.training.models import small_vit


def singular_values(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(matrix, compute_uv=False)


def test_identity_has_full_rank_by_every_measure():
    s = singular_values(np.eye(10))
    assert entropy_rank(s) == pytest.approx(10) and stable_rank(s) == pytest.approx(10)
    assert [energy_rank(s, q) for q in (0.9, 0.95, 0.99)] == [9, 10, 10]


def test_a_rank_k_matrix_with_equal_singular_values_has_rank_k():
    rng = np.random.default_rng(0)
    q1, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    q2, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    matrix = q1[:, :3] @ np.diag([2.0, 2.0, 2.0]) @ q2[:, :3].T  # 12 x 8, rank 3
    m = measures(singular_values(matrix))
    assert m["entropy_rank"] == pytest.approx(3) and m["stable_rank"] == pytest.approx(3)
    assert m["energy_rank_90"] == 3 and m["energy_rank_99"] == 3


def test_a_known_spectrum():
    s = [3.0, 1.0]
    p = np.array([0.75, 0.25])
    assert entropy_rank(s) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert stable_rank(s) == pytest.approx(10 / 9)
    assert energy_rank(s, 0.9) == 1 and energy_rank(s, 0.95) == 2  # 9 / 10 of the energy is exactly 90%
    assert entropy_rank([1, 0, 0]) == pytest.approx(1) and measures([0, 0])["stable_rank"] == 0


@pytest.mark.parametrize("bad, message", [([], "non-empty"), ([1, -1], ">= 0"), ([np.nan], "finite")])
def test_bad_singular_values_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        entropy_rank(bad)
    with pytest.raises(ValueError, match="share"):
        energy_rank([1], 1.5)


def test_layer_spectra_of_a_vit_with_a_planted_low_rank_map():
    model = small_vit(num_classes=10, in_chans=1, image_size=8, patch_size=2, embed_dim=16, depth=2, num_heads=2,
                      mlp_ratio=2.0)
    with torch.no_grad():
        fc1 = model.blocks[1].mlp.fc1.weight  # 32 x 16
        fc1.copy_(torch.randn(32, 2) @ torch.randn(2, 16))
    table, spectra = layer_spectra(model)
    assert list(table["map"]) == ["qkv", "proj", "fc1", "fc2"] * 2 and list(table["block"]) == [0] * 4 + [1] * 4
    planted = table.set_index("path").loc["blocks.1.mlp.fc1"]
    assert planted["energy_rank_99"] == 2 and planted["entropy_rank"] <= 2 and planted["full_rank"] == 16
    assert len(spectra["blocks.1.mlp.fc1"]) == 16 and spectra["blocks.1.mlp.fc1"][2] < 1e-5
    summary = summarize(table)
    assert set(summary["by_map"]) == {"qkv", "proj", "fc1", "fc2"} and set(summary["by_block"]) == {"0", "1"}
    assert set(summary["model"]) == set(MEASURES)


def test_layer_spectra_split_packed_attention():
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=10)
    table, _ = layer_spectra(model)
    assert list(table["map"]) == ["qkv", "qkv", "qkv", "proj", "fc1", "fc2"]
    assert table["path"].str.endswith("q_proj").sum() == 1


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("spectra")
    run_sweep(load_preset("smoke", ranks=[1, 2, 4, 8], student_epochs=2), run_dir)
    return run_dir


def test_the_sweep_saves_spectra_and_the_analysis_puts_three_estimates_side_by_side(swept):
    table, values = read_spectra(swept)
    assert len(table) == 4 and set(values) == set(table["path"])
    study = load_study(swept)
    result = analysis.analyze(study)
    side = analysis.training_free(study, result)
    assert side["estimate"].str.startswith("weights:").sum() == len(MEASURES)
    assert {"truncation: SVD students before training", "distillation"} <= set(side["estimate"])
    if result.knee is not None:
        assert side.loc[side["estimate"] == "distillation", "vs distilled knee"].item() == pytest.approx(1)
    paths = analysis.save_results(study, result, "teacher")
    assert any(p.name == "spectra.png" for p in paths)
    summary = json.loads((swept / "summary.json").read_text())
    assert summary["training_free"]["spectral"]["maps"] == 4
    assert summary["training_free"]["zero_shot"]["region_low"]["status"] in ("crossed", "not_reached",
                                                                             "exceeded_at_first_rank")


def test_random_init_students_give_no_truncation_estimate(swept, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(swept, copy)
    config = json.loads((copy / "config.json").read_text())
    config["config"]["init"] = "random"
    (copy / "config.json").write_text(json.dumps(config))
    study = load_study(copy)
    side = analysis.training_free(study, analysis.analyze(study))
    assert "truncation: SVD students before training" not in set(side["estimate"])
