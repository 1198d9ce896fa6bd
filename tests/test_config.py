"""Presets and input validation: every bad field is refused up front, with its name in the message."""

import os
import stat

import pytest

from effrank_utils.base.storage import ensure_writable_dir
from effrank_utils.run.entry import load_preset
from effrank_utils.run.preflight import make_config
from effrank_utils.run.presets import PRESETS, preset_values


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name, monkeypatch, tmp_path):
    monkeypatch.delenv("EFFRANK_CIFAR10_FOLDER", raising=False)
    cfg = make_config(preset_values(name), check_environment=False)  # the data may not be on this machine
    assert cfg.preset == name and cfg.ranks == tuple(sorted(cfg.ranks))


def test_missing_data_is_refused_before_any_compute(monkeypatch):
    monkeypatch.delenv("EFFRANK_CIFAR10_FOLDER", raising=False)
    with pytest.raises(ValueError, match="data_root: cifar10 files were not found .* download=True"):
        load_preset("cifar10-cpu")


def test_demo_preset_is_the_documented_default():
    cfg = load_preset("demo")
    assert cfg.dataset == "digits" and cfg.init == "svd" and cfg.loss == "kd"
    assert cfg.ranks == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def test_paper_preset_is_the_authors_protocol():
    cfg = load_preset("paper")
    assert (cfg.model, cfg.pretrained, cfg.dataset, cfg.init, cfg.loss) == \
        ("vit_b_32", True, "cifar100", "paper", "geometric")
    assert (cfg.teacher_lr, cfg.teacher_batch_size, cfg.teacher_epochs) == (1e-4, 32, 20)
    assert (cfg.student_lr, cfg.student_batch_size, cfg.student_epochs, cfg.student_schedule) == \
        (1e-4, 24, 200, "constant")
    assert len(cfg.ranks) == 16 and cfg.ranks[0] == 2 and cfg.ranks[-1] == 256


def test_cifar10_cpu_preset_follows_the_folder_variable(monkeypatch, cifar10_folder):
    monkeypatch.setenv("EFFRANK_CIFAR10_FOLDER", str(cifar10_folder))
    cfg = load_preset("cifar10-cpu")
    assert cfg.dataset == "imagefolder" and cfg.data_root == str(cifar10_folder)


def test_overrides_apply_and_lists_become_sorted_tuples():
    cfg = load_preset("smoke", ranks=[8, 2, 4], band=[0.8, 0.9], seeds=3)
    assert cfg.ranks == (2, 4, 8) and cfg.band == (0.8, 0.9) and cfg.seeds == (3,)
    assert cfg.replace(loss="logits").loss == "logits"


BAD = [
    ({"preset": "huge"}, "preset: unknown preset 'huge'"),
    ({"nonsense": 1}, "unknown config field.*'nonsense'"),
    ({"dataset": "mnist"}, "dataset: unknown value 'mnist'; allowed: digits, cifar10, cifar100, imagefolder"),
    ({"loss": "l2"}, "loss: unknown value 'l2'; allowed: geometric, kd, logits"),
    ({"init": "zeros"}, "init: unknown value 'zeros'; allowed: svd, random, paper"),
    ({"targets": ["qkv", "fc9"]}, "targets: unknown target 'fc9'"),
    ({"model": ""}, "model: expected a model name"),
    ({"ranks": []}, "ranks: empty"),
    ({"ranks": [1, 2.5]}, "ranks: must be an integer >= 1, got 2.5"),
    ({"ranks": [0, 4]}, "ranks: must be an integer >= 1, got 0"),
    ({"ranks": [-3]}, "ranks: must be an integer >= 1, got -3"),
    ({"ranks": [2, 2, 4]}, r"ranks: duplicated values"),
    ({"ranks": [4, 17]}, r"ranks: 17 exceeds the layer dimension; allowed: 1\.\.16"),
    ({"seeds": [0, 0]}, "seeds: duplicated values"),
    ({"teacher_epochs": 0}, "teacher_epochs: must be an integer >= 1"),
    ({"student_epochs": -1}, "student_epochs: must be an integer >= 1"),
    ({"student_batch_size": 0}, "student_batch_size: must be an integer >= 1"),
    ({"teacher_batch_size": 1.5}, "teacher_batch_size: must be an integer >= 1"),
    ({"teacher_lr": 0}, "teacher_lr: must be a positive number"),
    ({"student_lr": -1e-3}, "student_lr: must be a positive number"),
    ({"student_lr": float("nan")}, "student_lr: must be a positive number"),
    ({"student_weight_decay": -0.1}, "student_weight_decay: must be a non-negative number"),
    ({"kd_alpha": 1.5}, r"kd_alpha: must lie in \[0, 1\]"),
    ({"band": (0.95, 0.85)}, "band: lo must be below hi"),
    ({"band": (0.5, 1.5)}, r"band: levels must lie in \(0, 1\]"),
    ({"band": (0.0, 0.9)}, r"band: levels must lie in \(0, 1\]"),
    ({"reference": 0}, "reference: must be a positive number"),
    ({"reference": -0.9}, "reference: must be a positive number"),
    ({"reference": "median"}, "reference: 'median' is not a number or one of teacher, best_student"),
    ({"device": "tpu"}, "device: unknown value 'tpu'; allowed: auto, cpu, cuda"),
    ({"patch_size": 3}, "patch_size: 3 does not divide image_size 8"),
    ({"num_heads": 3}, "num_heads: 3 does not divide embed_dim 16"),
    ({"hflip": "maybe"}, "hflip: must be true or false"),
    ({"model": "vit_b_32", "image_size": 32}, "image_size: vit_b_32 takes 224-pixel input"),
    ({"ranks": [1]}, r"ranks: at least 2 ranks are needed for a curve, got \[1\]"),
    ({"mlp_ratio": 0.25}, r"ranks: 8 exceeds the layer dimension; allowed: 1\.\.4"),
    ({"train_subset": 5}, r"train_subset: 5 is smaller than the number of classes \(10\)"),
    ({"test_subset": 9}, r"test_subset: 9 is smaller than the number of classes \(10\)"),
    ({"test_subset": 0}, "test_subset: must be an integer >= 1"),
    ({"model": "vit_nothing_patch99"}, "model: unknown model 'vit_nothing_patch99'"),
    ({"pretrained": True}, "normalization: small_vit has no data config of its own"),
    ({"model": "vit_tiny_patch16_224", "pretrained": True, "normalization": "dataset"},
     "normalization: pretrained weights expect the statistics they were trained with"),
    ({"normalization": "model"}, "normalization: small_vit has no data config of its own"),
    ({"data_loading": "disk"}, "data_loading: unknown value 'disk'; allowed: auto, memory, stream"),
    ({"data_loading": "stream"}, "data_loading: 'stream' reads and decodes image files per batch; digits"),
    ({"memory_budget": 0}, "memory_budget: must be a positive number"),
    ({"data_workers": -1}, "data_workers: must be an integer >= 0"),
    ({"dataset": "imagefolder"}, "data_root: the imagefolder dataset needs a folder"),
    ({"dataset": "imagefolder", "data_root": "/no/such/folder"}, r"data_root: '?/no/such/folder'? does not exist"),
    ({"sweep_mode": "random"}, "sweep_mode: unknown value 'random'; allowed: grid, adaptive"),
    ({"fuse": 0}, "fuse: must be an integer >= 1"),
    ({"checkpoint_every": -1}, "checkpoint_every: must be an integer >= 0"),
]


@pytest.mark.parametrize("overrides, match", BAD, ids=[next(iter(o)) for o, _ in BAD])
def test_bad_input_is_refused_with_the_field_name(overrides, match):
    preset = overrides.pop("preset", "smoke")
    with pytest.raises(ValueError, match=match):
        load_preset(preset, **overrides)


def test_imagefolder_without_train_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data_root: .* must hold train/ and test/"):
        make_config({"dataset": "imagefolder", "data_root": str(tmp_path), "ranks": [1, 2]})


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_results_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IREAD | stat.S_IEXEC)
    with pytest.raises(ValueError, match="run_dir: .* is not a writable directory"):
        ensure_writable_dir(locked / "run")


def test_results_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="run_dir: .* is not a writable directory"):
        ensure_writable_dir(tmp_path / "file")


@pytest.mark.parametrize("name", ["..", "../elsewhere", "/tmp", "my study"])
def test_preset_field_must_name_a_preset(name):
    with pytest.raises(ValueError, match="preset: unknown value .*; allowed: smoke, demo, cifar10-cpu, paper, custom"):
        load_preset("smoke", {"preset": name})
