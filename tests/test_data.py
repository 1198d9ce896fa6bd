"""Datasets by name, stratified subsets, offline errors, and the tensor batch pipeline."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets
from torchvision.datasets import cifar as cifar_module

from effrank_utils.data import BatchPipeline, DatasetNotAvailable, ImageData, load_data


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


def _write_tree(root, split, classes, per_class, size=6):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
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
    return BatchPipeline(data, batch_size=2, input_size=kwargs.pop("input_size", 4), mean=(0.0,), std=(1.0,),
                         **kwargs)


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
