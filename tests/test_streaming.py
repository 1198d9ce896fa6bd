"""data_loading: an image folder streamed from its files gives the rows a folder held in memory gives; auto
streams above the memory budget; the streamed fingerprint needs no full decode and says what changed."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import effrank_utils.training.streaming as streaming
from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep
from effrank_utils.training.data import ImageData, pipeline_for
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.streaming import FINGERPRINT_SAMPLE, StreamedData

TIMING = ["seconds"]


def _folder(root, per_class=30, test_per_class=10, classes=4, seed=0):
    """A small folder whose classes differ in colour (learnable in an epoch), images of two sizes."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = 10 if i % 2 else 12
                base = np.zeros((size, size, 3)) + 60 * c
                img = np.clip(base + rng.integers(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")
    return root


def _config(root, **fields):
    values = dict(dataset="imagefolder", data_root=str(root), train_subset=None, validation_fraction=0.2,
                  normalization="dataset", crop_padding=1, hflip=True, teacher_epochs=6, ranks=[1, 2, 4],
                  student_epochs=3, student_patience=1, student_schedule="constant", fuse=2, cache_teacher=True,
                  student_batch_size=16, teacher_batch_size=16) | fields
    return load_preset("smoke", **values)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("photos"))


def test_stream_and_memory_give_the_same_rows(folder, tmp_path):
    memory = _config(folder, data_loading="memory")
    stream = _config(folder, data_loading="stream", data_workers=2)
    held, streamed = load_data_for(memory), load_data_for(stream)
    assert isinstance(held, ImageData) and isinstance(streamed, StreamedData)
    rows = {}
    for name, config, data in (("memory", memory, held), ("stream", stream, streamed)):
        rows[name] = run_sweep(config, tmp_path / name, data=data).drop(columns=TIMING)
    assert rows["memory"].equals(rows["stream"]) and rows["memory"]["status"].eq("ok").all()
    teacher = [(tmp_path / kind / "teacher.json").read_text() for kind in ("memory", "stream")]
    assert [t.split('"accuracy": ')[1][:12] for t in teacher] == [teacher[0].split('"accuracy": ')[1][:12]] * 2


def test_streamed_batches_equal_the_batches_in_memory(folder):
    held = load_data_for(_config(folder, data_loading="memory"))
    streamed = load_data_for(_config(folder, data_loading="stream", data_workers=0))
    assert torch.equal(held.train_labels, streamed.train_labels) and torch.equal(held.val_labels, streamed.val_labels)
    config = _config(folder, data_loading="memory")
    batches = zip(pipeline_for(config, held, 16).train_batches(3, 1),
                  pipeline_for(config, streamed, 16).train_batches(3, 1))
    for a, b in batches:
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.index, b.index)
    for (xa, ya), (xb, yb) in zip(pipeline_for(config, held, 16).eval_batches("test"),
                                  pipeline_for(config, streamed, 16).eval_batches("test")):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_test_subset_selects_the_same_images_streamed_and_in_memory(folder):
    held = load_data_for(_config(folder, data_loading="memory", test_subset=8))
    streamed = load_data_for(_config(folder, data_loading="stream", data_workers=0, test_subset=8))
    assert held.test_labels.tolist() == streamed.test_labels.tolist()
    assert torch.bincount(held.test_labels).tolist() == [2, 2, 2, 2]
    config = _config(folder, data_loading="memory")
    for (xa, ya), (xb, yb) in zip(pipeline_for(config, held, 16).eval_batches("test"),
                                  pipeline_for(config, streamed, 16).eval_batches("test")):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_streamed_channel_statistics_equal_and_are_kept(folder, monkeypatch):
    held = load_data_for(_config(folder, data_loading="memory", normalization="dataset"))
    streamed = load_data_for(_config(folder, data_loading="stream", normalization="dataset", data_workers=0))
    assert held.channel_stats() == streamed.channel_stats()  # the same numbers, to the last bit
    again = load_data_for(_config(folder, data_loading="stream", normalization="dataset", data_workers=0))
    monkeypatch.setattr(streaming, "channel_stats_of", lambda *args: pytest.fail("measured twice"))
    assert again.channel_stats() == streamed.channel_stats()  # read from the cache


def test_auto_streams_only_above_the_memory_budget(folder):
    # 96 training images of 3 x 8 x 8 bytes (the smoke input, resized on loading) take 18 KiB
    assert isinstance(load_data_for(_config(folder)), ImageData)
    assert isinstance(load_data_for(_config(folder, memory_budget=1e-6)), StreamedData)
    assert isinstance(load_data_for(_config(folder, memory_budget=1e-6, data_loading="memory")), ImageData)


def test_the_fingerprint_decodes_only_a_sample(folder, monkeypatch):
    decoded = []
    real = streaming.read_image
    monkeypatch.setattr(streaming, "read_image", lambda *args: decoded.append(args[0]) or real(*args))
    data = load_data_for(_config(folder, data_loading="stream"))
    data.fingerprint()
    assert 0 < len(decoded) <= 3 * FINGERPRINT_SAMPLE < len(data.train_labels) + len(data.test_labels)


def test_the_fingerprint_sees_renamed_added_and_resized_files_not_a_touch(tmp_path):
    root = _folder(tmp_path / "f", per_class=5, test_per_class=2, classes=2)
    fingerprint = lambda: load_data_for(_config(root, data_loading="stream")
                                        ).fingerprint()  # noqa: E731
    first = fingerprint()
    assert first.startswith("files-")
    os.utime(root / "train" / "c0" / "1.png", (1, 1))
    assert fingerprint() == first
    (root / "train" / "c0" / "1.png").rename(root / "train" / "c0" / "9.png")
    renamed = fingerprint()
    assert renamed != first
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "train" / "c1" / "extra.png")
    added = fingerprint()
    assert added != renamed
    Image.fromarray(np.full((11, 11, 3), 7, np.uint8)).save(root / "train" / "c1" / "extra.png")
    assert fingerprint() != added


def test_switching_between_memory_and_stream_is_named(folder, tmp_path):
    config = _config(folder, data_loading="memory", teacher_epochs=1, ranks=[1, 2], student_epochs=1,
                     student_patience=0)
    run_sweep(config, tmp_path / "run")
    with pytest.raises(ValueError, match="^data_loading: .* set data_loading to memory as before"):
        run_sweep(config.replace(data_loading="stream"), tmp_path / "run")
