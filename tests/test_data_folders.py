"""The ImageFolder walk: folder links (loops refused, links out of the tree followed), hidden entries, the
order of samples, and images too large to decode."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from effrank_utils.training.data import CorruptImage, DatasetNotAvailable, check_source, dataset_classes, load_data


def _write_tree(root, split, classes, per_class, size=6, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def _flat(path, value):
    """A 6x6 image whose every pixel is ``value`` (so a decoded image tells which file it came from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def _values(images):
    return images[:, 0, 0, 0].tolist()


def _one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message.startswith("data_root: ")
    return message


@pytest.mark.parametrize("target", [".", "..", "../..", "../../..", "../../b", "../../../test/a"],
                         ids=["itself", "class_folder", "split_folder", "data_root", "other_class", "test_split"])
def test_folder_link_back_into_the_tree_is_refused(tmp_path, target):
    _write_tree(tmp_path, "train", ["a", "b"], 6)
    _write_tree(tmp_path, "test", ["a", "b"], 2)
    (tmp_path / "train" / "a" / "sub").mkdir()
    link = tmp_path / "train" / "a" / "sub" / "loop"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(ValueError, match=r"^data_root: .*link.*remove") as info:
        load_data("imagefolder", root=tmp_path)
    assert str(link) in _one_line_error(info)


def test_class_folder_linked_to_another_class_is_refused(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 3)
    _write_tree(tmp_path, "test", ["a", "b", "c"], 1)
    (tmp_path / "train" / "c").symlink_to("a", target_is_directory=True)
    with pytest.raises(ValueError, match=r"^data_root: ") as info:
        load_data("imagefolder", root=tmp_path)
    assert str(tmp_path / "train" / "c") in _one_line_error(info)


def test_links_to_files_and_to_folders_outside_the_tree_are_followed(tmp_path):
    pool, root = tmp_path / "pool", tmp_path / "subset"
    for i in range(3):
        _flat(pool / "n01" / f"{i}.png", 10 + i)
        _flat(pool / "n02" / f"{i}.png", 20 + i)
    _flat(pool / "n03" / "deep" / "0.png", 30)
    _flat(pool / "single.png", 40)
    _flat(root / "all" / "n04" / "0.png", 50)  # a folder of data_root that is not a split: nothing reads it twice
    (root / "train").mkdir(parents=True)
    (root / "train" / "a").symlink_to(pool / "n01", target_is_directory=True)  # a class folder that is a link
    _flat(root / "train" / "b" / "own.png", 60)
    (root / "train" / "b" / "more").symlink_to(pool / "n02", target_is_directory=True)
    (root / "train" / "b" / "deeper").symlink_to(pool / "n03", target_is_directory=True)
    (root / "train" / "b" / "z.png").symlink_to(pool / "single.png")  # a link to one file
    (root / "train" / "b" / "pooled").symlink_to(root / "all" / "n04", target_is_directory=True)
    _flat(root / "test" / "a" / "0.png", 70)
    _flat(root / "test" / "b" / "0.png", 80)
    data = load_data("imagefolder", root=root)
    assert _values(data.train_images) == [10, 11, 12, 60, 40, 30, 20, 21, 22, 50]
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert _values(data.test_images) == [70, 80]


def test_a_loop_outside_the_tree_is_refused(tmp_path):
    pool, root = tmp_path / "pool", tmp_path / "subset"
    _flat(pool / "p" / "0.png", 1)
    _flat(pool / "q" / "0.png", 2)
    (pool / "p" / "to_q").symlink_to(pool / "q", target_is_directory=True)
    (pool / "q" / "to_p").symlink_to(pool / "p", target_is_directory=True)  # p -> q -> p: a loop of two links
    _write_tree(root, "train", ["a", "b"], 1)
    _write_tree(root, "test", ["a", "b"], 1)
    (root / "train" / "a" / "ext").symlink_to(pool / "p", target_is_directory=True)
    with pytest.raises(ValueError, match=r"^data_root: .*to_p") as info:
        load_data("imagefolder", root=root)
    assert str(root / "train" / "a" / "ext" / "to_q" / "to_p") in _one_line_error(info)


def test_samples_keep_torchvision_order(tmp_path):
    names = ["z.png", "x b.PNG", "x/1.png", "x/0.jpg", "x b/0.png", "x/y/2.png", "10.png", "9.png", "notes.txt"]
    for value, name in enumerate(names):
        path = tmp_path / "train" / "c1" / name
        if name.endswith(".txt"):
            path.write_text("not an image")
        else:
            _flat(path, value)
    _flat(tmp_path / "train" / "c0" / "0.png", 100)
    _write_tree(tmp_path, "test", ["c0", "c1"], 1)
    data = load_data("imagefolder", root=tmp_path)
    expected = make_dataset(tmp_path / "train", {"c0": 0, "c1": 1}, extensions=IMG_EXTENSIONS)
    values = [int(np.asarray(Image.open(path))[0, 0, 0]) for path, _ in expected]
    assert _values(data.train_images) == values and data.train_labels.tolist() == [label for _, label in expected]


def test_hidden_folders_and_files_are_ignored(tmp_path):
    _write_tree(tmp_path, "train", ["cat", "dog"], 3)
    _write_tree(tmp_path, "test", ["cat", "dog"], 1)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # Jupyter's, empty
    _flat(tmp_path / "test" / ".cache" / "x" / "0.png", 1)  # a hidden folder that looks like a class
    _flat(tmp_path / "train" / "cat" / ".hidden.png", 2)
    _flat(tmp_path / "train" / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png", 3)
    _flat(tmp_path / "train" / "dog" / "sub" / ".thumbs" / "0.png", 4)
    (tmp_path / "train" / "dog" / ".bad.jpg").write_bytes(b"not an image")
    assert dataset_classes("imagefolder", tmp_path) == 2 and check_source("imagefolder", tmp_path) == (2, 3)
    data = load_data("imagefolder", root=tmp_path)
    assert data.num_classes == 2 and data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test_labels.tolist() == [0, 1]


def test_a_class_folder_holding_only_hidden_files_has_no_images(tmp_path):
    _write_tree(tmp_path, "train", ["cat", "dog"], 2)
    _write_tree(tmp_path, "test", ["cat", "dog"], 1)
    for png in (tmp_path / "test" / "dog").iterdir():
        png.rename(png.with_name(f".{png.name}"))
    with pytest.raises(DatasetNotAvailable, match=r"^data_root: .*test.*'dog'") as info:
        load_data("imagefolder", root=tmp_path)
    _one_line_error(info)


def test_differing_class_folders_are_named(tmp_path):
    _write_tree(tmp_path, "train", ["cat", "dog", "emu"], 1)
    _write_tree(tmp_path, "test", ["cat", "fox"], 1)
    with pytest.raises(ValueError, match="^data_root: train and test class folders differ") as info:
        load_data("imagefolder", root=tmp_path)
    message = _one_line_error(info)
    assert "only in train: 'dog', 'emu'" in message and "only in test: 'fox'" in message
    assert "'cat'" not in message


def test_many_differing_class_folders_are_named_a_few_then_counted(tmp_path):
    _write_tree(tmp_path, "train", ["cat", "dog"] + [f"t{i:02d}" for i in range(12)], 1, size=2)
    _write_tree(tmp_path, "val", ["cat", "dog"], 1, size=2)
    with pytest.raises(ValueError, match="^data_root: train and val class folders differ") as info:
        check_source("imagefolder", tmp_path)
    message = _one_line_error(info)
    assert "only in train: 't00', 't01', 't02', 't03', 't04' and 7 more" in message
    assert "only in val" not in message and "'t05'" not in message


def test_decompression_bomb_is_a_corrupt_image_named_with_what_to_do(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 2)
    _write_tree(tmp_path, "test", ["a", "b"], 1)
    bomb = tmp_path / "train" / "b" / "huge.png"
    side = 20_000
    assert side * side > 2 * Image.MAX_IMAGE_PIXELS  # PIL raises DecompressionBombError, not only a warning
    Image.new("1", (side, side)).save(bomb)  # one bit per pixel: a file of tens of kB
    assert os.path.getsize(bomb) < 500_000  # small on disk: a decompression bomb
    with pytest.raises(CorruptImage, match=r"^data_root: .*huge\.png.*(resize|remove)") as info:
        load_data("imagefolder", root=tmp_path)
    message = _one_line_error(info)
    assert str(bomb) in message and str(side * side) in message
    assert str(Image.MAX_IMAGE_PIXELS) in message and "MAX_IMAGE_PIXELS" in message


def test_images_load_after_refusals_are_fixed(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 2)
    _write_tree(tmp_path, "test", ["a", "b"], 1)
    link = tmp_path / "train" / "a" / "loop"
    link.symlink_to(".", target_is_directory=True)
    with pytest.raises(ValueError):
        load_data("imagefolder", root=tmp_path)
    link.unlink()
    data = load_data("imagefolder", root=tmp_path)
    assert data.train_images.shape == (4, 3, 6, 6) and torch.bincount(data.train_labels).tolist() == [2, 2]
