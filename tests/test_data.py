"""Datasets by name, stratified subsets, offline errors, and the tensor batch pipeline."""

import ast
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets
from torchvision.datasets import cifar as cifar_module

import effrank_utils.training.data as data_module
from effrank_utils.training.data import (
    DATASETS,
    BatchPipeline,
    CorruptImage,
    DatasetNotAvailable,
    ImageData,
    check_source,
    dataset_channels,
    dataset_classes,
    load_data,
)
from effrank_utils.training.preprocessing import Preprocessing


def test_digits_split_is_fixed_and_stratified():
    a = load_data("digits", seed=0)
    b = load_data("digits", seed=0)
    assert a.train_images.shape[1:] == (1, 8, 8) and a.train_images.dtype == torch.uint8
    assert a.train_labels.numel() + a.test_labels.numel() == 1797 and a.num_classes == 10
    assert torch.equal(a.test_labels, b.test_labels) and torch.equal(a.train_images, b.train_images)
    counts = torch.bincount(a.test_labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    sub = load_data("digits", train_subset=200, seed=0)
    assert sub.train_labels.numel() == 200 and torch.bincount(sub.train_labels).min() >= 19


def test_test_subset_is_class_balanced_and_drawn_from_the_test_split():
    full = load_data("digits", seed=0)
    sub = load_data("digits", test_subset=100, seed=0)
    assert sub.test_labels.numel() == 100 and torch.bincount(sub.test_labels, minlength=10).tolist() == [10] * 10
    assert torch.equal(sub.train_images, full.train_images)  # the training split is untouched
    pairs = {(img.numpy().tobytes(), int(y)) for img, y in zip(full.test_images, full.test_labels)}
    assert all((img.numpy().tobytes(), int(y)) in pairs for img, y in zip(sub.test_images, sub.test_labels))
    assert torch.equal(load_data("digits", test_subset=100, seed=0).test_images, sub.test_images)  # reproducible


def _write_tree(root, split, classes, per_class, size=6, seed=0, start=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagefolder_tree(tmp_path):
    _write_tree(tmp_path, "train", ["cat", "dog", "emu"], 4)
    _write_tree(tmp_path, "val", ["cat", "dog", "emu"], 2)
    data = load_data("imagefolder", root=tmp_path)
    assert data.train_images.shape == (12, 3, 6, 6) and data.test_images.shape == (6, 3, 6, 6)
    assert data.num_classes == 3 and sorted(set(data.train_labels.tolist())) == [0, 1, 2]
    again = load_data("imagefolder", root=tmp_path)  # from the decode cache
    assert torch.equal(again.train_images, data.train_images)
    raw = np.asarray(Image.open(tmp_path / "train" / "cat" / "0.png")).transpose(2, 0, 1)
    assert np.array_equal(data.train_images[0].numpy(), raw)


def test_imagefolder_without_layout_is_refused(tmp_path):
    with pytest.raises(DatasetNotAvailable, match="train/ and test/"):
        load_data("imagefolder", root=tmp_path)


def test_cache_sees_added_images(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 20)
    _write_tree(tmp_path, "test", ["a", "b"], 2)
    assert load_data("imagefolder", root=tmp_path).train_labels.numel() == 40
    _write_tree(tmp_path, "train", ["a"], 5, seed=1, start=20)  # train/ itself keeps its mtime
    again = load_data("imagefolder", root=tmp_path)
    assert again.train_labels.numel() == 45 and torch.bincount(again.train_labels).tolist() == [25, 20]


def test_cache_sees_an_image_rewritten_in_place(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 2)
    _write_tree(tmp_path, "test", ["a", "b"], 1)
    before = load_data("imagefolder", root=tmp_path)
    path = tmp_path / "train" / "a" / "0.png"
    old = path.stat()
    new_pixels = np.full((6, 6, 3), 7, dtype=np.uint8)
    Image.fromarray(new_pixels).save(path)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000_000))  # a new mtime even on coarse clocks
    after = load_data("imagefolder", root=tmp_path)
    assert not torch.equal(after.train_images[0], before.train_images[0])
    assert np.array_equal(after.train_images[0].numpy(), new_pixels.transpose(2, 0, 1))


def test_fingerprint_follows_the_content_not_the_name_or_folder(tmp_path):
    for root in (tmp_path / "one", tmp_path / "two"):
        _write_tree(root, "train", ["a", "b"], 3)
        _write_tree(root, "test", ["a", "b"], 1)
    _write_tree(tmp_path / "other", "train", ["a", "b"], 3, seed=5)
    _write_tree(tmp_path / "other", "test", ["a", "b"], 1, seed=5)
    one, two, other = (load_data("imagefolder", root=tmp_path / n) for n in ("one", "two", "other"))
    assert one.fingerprint() == two.fingerprint() != other.fingerprint()
    renamed = ImageData("renamed", one.train_images, one.train_labels, one.test_images, one.test_labels, 2)
    assert renamed.fingerprint() == one.fingerprint()
    pixel = one.train_images.clone()
    pixel[0, 0, 0, 0] ^= 1
    label = one.test_labels.clone()
    label[0] = 1 - label[0]
    changed = [ImageData("x", pixel, one.train_labels, one.test_images, one.test_labels, 2),
               ImageData("x", one.train_images, one.train_labels, one.test_images, label, 2),
               ImageData("x", one.train_images, one.train_labels, one.test_images, one.test_labels, 3)]
    assert len({one.fingerprint(), *(d.fingerprint() for d in changed)}) == 4


def test_fingerprint_survives_a_move_to_another_device():
    data = load_data("digits", train_subset=50)
    digest = data.fingerprint()
    moved = data.to("meta")  # meta tensors hold no values: the digest can only be the one carried over
    assert moved.train_images.device.type == "meta" and moved.fingerprint() == digest


@pytest.mark.parametrize("damage", ["truncated_jpeg", "random_bytes_jpg", "truncated_png"])
def test_corrupt_image_is_named_with_what_to_do(tmp_path, damage):
    _write_tree(tmp_path, "train", ["a", "b"], 2)
    _write_tree(tmp_path, "test", ["a", "b"], 1)
    rng = np.random.default_rng(0)
    if damage == "random_bytes_jpg":
        bad = tmp_path / "train" / "b" / "broken.jpg"
        bad.write_bytes(rng.bytes(500))
    else:
        ext = "jpg" if damage == "truncated_jpeg" else "png"
        bad = tmp_path / "train" / "b" / f"cut.{ext}"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])
    with pytest.raises(CorruptImage, match=rf"^data_root: .*{bad.name}.*remove or replace") as info:
        load_data("imagefolder", root=tmp_path)
    assert isinstance(info.value, ValueError) and str(bad) in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "missing_keys"])
def test_damaged_image_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("EFFRANK_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "images"
    _write_tree(root, "train", ["a", "b"], 3)
    _write_tree(root, "test", ["a", "b"], 1)
    first = load_data("imagefolder", root=root)
    (cache,) = (tmp_path / "cache").glob("imagefolder-*.npz")
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:len(cache.read_bytes()) // 2])
    elif damage == "random_bytes":
        cache.write_bytes(np.random.default_rng(0).bytes(400))
    else:
        np.savez(cache, x_tr=first.train_images.numpy())
    with caplog.at_level(logging.WARNING, logger="effrank_utils.training.data"):
        again = load_data("imagefolder", root=root)
    assert again.fingerprint() == first.fingerprint()
    assert any("damaged" in r.getMessage() and str(cache) in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="effrank_utils.training.data"):
        load_data("imagefolder", root=root)  # the rebuilt cache is whole again
    assert not caplog.records


def test_one_class_folder_is_refused(tmp_path):
    _write_tree(tmp_path, "train", ["cat"], 3)
    _write_tree(tmp_path, "test", ["cat"], 1)
    with pytest.raises(ValueError, match=r"^data_root: .*train holds 1 class folder.*'cat'.*at least 2"):
        load_data("imagefolder", root=tmp_path)


def test_train_and_test_classes_must_match(tmp_path):
    _write_tree(tmp_path, "train", ["cat", "dog"], 2)
    _write_tree(tmp_path, "test", ["cat", "emu"], 1)
    with pytest.raises(ValueError, match="^data_root: train and test class folders differ"):
        load_data("imagefolder", root=tmp_path)


def test_class_folder_without_images_is_refused(tmp_path):
    _write_tree(tmp_path, "train", ["cat", "dog"], 2)
    _write_tree(tmp_path, "test", ["cat", "dog"], 1)
    for png in (tmp_path / "test" / "dog").iterdir():
        png.unlink()
    with pytest.raises(DatasetNotAvailable, match=r"^data_root: .*test.*dog"):
        load_data("imagefolder", root=tmp_path)


def test_registry_facts_without_loading(tmp_path):
    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "imagefolder"}
    assert [dataset_classes(n) for n in ("digits", "cifar10", "cifar100")] == [10, 10, 100]
    assert [dataset_channels(n) for n in DATASETS] == [1, 3, 3, 3]
    assert dataset_classes("imagefolder") is None and dataset_classes("imagefolder", tmp_path) is None
    _write_tree(tmp_path, "train", ["cat", "dog", "emu"], 1)
    _write_tree(tmp_path, "val", ["cat", "dog", "emu"], 1)
    assert dataset_classes("imagefolder", tmp_path) == 3 and dataset_classes("imagefolder", str(tmp_path)) == 3
    for name, root in (("digits", None), ("imagefolder", tmp_path)):  # the facts agree with the loaded data
        data = load_data(name, root=root)
        assert (data.num_classes, data.channels) == (dataset_classes(name, root), dataset_channels(name))
    for ask in (dataset_classes, dataset_channels, load_data):
        with pytest.raises(ValueError, match="^dataset: unknown dataset 'mnist'; allowed: digits, cifar10"):
            ask("mnist")


def test_check_source_refuses_what_loading_would_refuse_without_decoding(tmp_path):
    assert check_source("digits") == (10, 1)
    assert check_source("cifar100", tmp_path, download=True) == (100, 3)  # nothing fetched while checking
    with pytest.raises(ValueError, match=r"^data_root: cifar10 files were not found under .*cifar-10-batches-py"):
        check_source("cifar10", tmp_path)
    with pytest.raises(ValueError, match="^data_root: the imagefolder dataset needs a folder"):
        check_source("imagefolder")
    with pytest.raises(ValueError, match="^data_root: .*missing does not exist"):
        check_source("imagefolder", tmp_path / "missing")
    with pytest.raises(ValueError, match="^data_root: .* must hold train/ and test/"):
        check_source("imagefolder", tmp_path)
    _write_tree(tmp_path, "train", ["cat"], 1)
    _write_tree(tmp_path, "test", ["cat"], 1)
    with pytest.raises(ValueError, match="^data_root: .*holds 1 class folder"):
        check_source("imagefolder", tmp_path)
    _write_tree(tmp_path, "train", ["dog"], 1)
    _write_tree(tmp_path, "test", ["dog"], 1)
    assert check_source("imagefolder", tmp_path) == (2, 3)


def test_data_module_does_not_import_config_at_runtime():
    tree = ast.parse(Path(data_module.__file__).read_text())
    modules = [n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)]  # top level: not TYPE_CHECKING
    modules += [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    assert modules and not [m for m in modules if m.split(".")[-1] == "config"]


def test_real_cifar10_tree(cifar10_folder):
    data = load_data("imagefolder", root=cifar10_folder)
    assert data.train_images.shape == (50_000, 3, 32, 32) and data.test_labels.numel() == 10_000
    assert data.num_classes == 10
    mean, _ = data.channel_stats()
    assert mean == pytest.approx((0.4913, 0.4821, 0.4465), abs=0.01)


def test_cifar100_offline_gives_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotAvailable, match=r"cifar100 files were not found under .*cifar-100-python.*"
                                                 r"download=True"):
        load_data("cifar100", root=tmp_path, download=False)


def test_cifar100_reads_torchvision_files(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)),
                 "coarse_labels": [0] * n}
        (folder / split).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    # the test's files are not the official ones, so torchvision's md5 checks are switched off
    monkeypatch.setattr(datasets.CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar_module, "check_integrity", lambda *args, **kwargs: True)
    data = load_data("cifar100", root=tmp_path)
    assert data.num_classes == 100 and data.train_images.shape == (30, 3, 32, 32)
    assert data.test_labels.tolist() == list(range(10))


def _pipeline(**kwargs) -> BatchPipeline:
    x = torch.arange(4 * 1 * 4 * 4, dtype=torch.uint8).reshape(4, 1, 4, 4)
    data = ImageData("toy", x, torch.arange(4), x, torch.arange(4), 4)
    size = kwargs.pop("input_size", 4)
    geometry = Preprocessing("test", (0.0,), (1.0,), "bilinear", 0.875, size, round(size / 0.875))
    return BatchPipeline(data, batch_size=2, preprocessing=geometry, **kwargs)


def test_batches_are_reproducible_per_seed_and_epoch():
    p = _pipeline(crop_padding=1, hflip=True)
    first = [b.x for b in p.train_batches(seed=3, epoch=1)]
    again = [b.x for b in p.train_batches(seed=3, epoch=1)]
    other = [b.x for b in p.train_batches(seed=3, epoch=2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    batches = list(p.train_batches(seed=3, epoch=1))
    assert sorted(torch.cat([b.y for b in batches]).tolist()) == [0, 1, 2, 3]
    assert sorted(torch.cat([b.index for b in batches]).tolist()) == [0, 1, 2, 3]  # each sample once


def test_crop_and_flip_move_pixels_as_asked():
    p = _pipeline(crop_padding=1, hflip=True)
    img = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
    shifted = p.augment(img, torch.tensor([[0, 1]]), torch.tensor([False]))  # one row down (zero row on top)
    assert shifted[0, 0, 0].tolist() == [0, 0, 0, 0] and shifted[0, 0, 1].tolist() == [0, 1, 2, 3]
    centred_flip = p.augment(img, torch.tensor([[1, 1]]), torch.tensor([True]))
    assert torch.equal(centred_flip, img.flip(-1))


def test_resize_to_model_input_and_normalize():
    p = _pipeline(input_size=14)
    x = p.prepare(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8))
    assert x.shape == (2, 1, 14, 14) and torch.allclose(x, torch.ones_like(x))
