"""Datasets held in memory as uint8 tensors, and batch pipelines that augment on tensors.

Small images are decoded once; every epoch's order, crops and flips are drawn from a generator seeded by
``(seed, epoch)``, so a batch stream is reproducible and identical for every student that shares it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .config import DATASETS, StudyConfig
from .storage import atomic_write

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_ENV = "EFFRANK_CACHE"
DIGITS_TEST_FRACTION = 0.2


class DatasetNotAvailable(FileNotFoundError):
    """The dataset's files are not where they are expected (and could not be downloaded)."""


@dataclass(frozen=True)
class ImageData:
    """A dataset in memory: uint8 images ``N x C x H x W`` and int64 labels for both splits."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training split, in [0, 1] units (computed once)."""
        if "_stats" not in self.__dict__:  # frozen dataclass: memoize without __setattr__
            x = self.train_images.float().div_(255)
            self.__dict__["_stats"] = (tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist()))
        return self.__dict__["_stats"]

    def to(self, device: torch.device | str) -> "ImageData":
        """A copy on ``device`` (through pinned memory when it is a GPU); the same object if already there."""
        device = torch.device(device)
        if self.train_images.device == device:
            return self

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)

        moved = ImageData(self.name, move(self.train_images), move(self.train_labels), move(self.test_images),
                          move(self.test_labels), self.num_classes)
        if "_stats" in self.__dict__:
            moved.__dict__["_stats"] = self.__dict__["_stats"]
        return moved


# ------------------------------------------------------------------------------------------------ loading
def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of ``size`` samples (sorted), reproducible for a seed."""
    if size >= labels.size:
        return np.arange(labels.size)
    from sklearn.model_selection import train_test_split
    keep, _ = train_test_split(np.arange(labels.size), train_size=size, stratify=labels, random_state=seed)
    return np.sort(keep)


def _digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    bunch = load_digits()
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)[:, None]  # 0..16 -> 0..255, 1 channel
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target, test_size=DIGITS_TEST_FRACTION,
                                              stratify=bunch.target, random_state=seed)
    return x_tr, y_tr, x_te, y_te, 10


def _cifar(name: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    from torchvision import datasets
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = cls.base_folder
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as exc:  # torchvision: "Dataset not found or corrupted"; offline: URLError
        raise DatasetNotAvailable(
            f"data_root: {name} files were not found under {root / folder} and could not be downloaded "
            f"({exc}). Run once with download=True on a machine with internet access, or copy the extracted "
            f"'{folder}' folder (from the official {name.upper()} python release) into {root}."
        ) from None
    to_nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
    return (to_nchw(train.data), np.asarray(train.targets), to_nchw(test.data), np.asarray(test.targets),
            len(train.classes))


def _decode_folder(folder: Path, size: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision import datasets
    from tqdm.auto import tqdm
    tree = datasets.ImageFolder(str(folder))
    if not tree.samples:
        raise DatasetNotAvailable(f"data_root: no images found under {folder}")
    images, labels = [], []
    for path, label in tqdm(tree.samples, desc=f"decoding {folder.name}", leave=False):
        img = tree.loader(path).convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size))
        images.append(np.asarray(img).transpose(2, 0, 1))
        labels.append(label)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"data_root: images under {folder} differ in size ({sorted(shapes)[:3]}...); "
                         "set image_size so that they are resized on loading")
    return np.stack(images), np.asarray(labels), tree.classes


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "effrank"))


def _imagefolder(root: Path, size: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Decode ``root/train`` and ``root/test`` (or ``val``) once; the result is cached as ``.npz``."""
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        raise DatasetNotAvailable(f"data_root: {root} must hold train/ and test/ (or val/) class folders")
    key = hashlib.sha256(f"{root.resolve()}|{size}|{(root / 'train').stat().st_mtime_ns}|"
                         f"{test_dir.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    cache = _cache_dir() / f"imagefolder-{key}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return z["x_tr"], z["y_tr"], z["x_te"], z["y_te"], int(z["num_classes"])
    x_tr, y_tr, classes = _decode_folder(root / "train", size)
    x_te, y_te, test_classes = _decode_folder(test_dir, size)
    if classes != test_classes:
        raise ValueError(f"data_root: train and {test_dir.name} class folders differ under {root}")
    try:
        atomic_write(cache, lambda f: np.savez(f, x_tr=x_tr, y_tr=y_tr, x_te=x_te, y_te=y_te,
                                                num_classes=len(classes)))
    except OSError as exc:  # a read-only home is no reason to fail
        log.warning("could not cache decoded images at %s: %s", cache, exc)
    return x_tr, y_tr, x_te, y_te, len(classes)


def load_data(dataset: str, *, root: str | Path | None = None, download: bool = False,
              train_subset: int | None = None, seed: int = 0, image_size: int | None = None) -> ImageData:
    """Load a dataset by name into memory: ``digits`` (offline, bundled with scikit-learn), ``cifar10``,
    ``cifar100`` (torchvision; ``download`` for users with internet) or ``imagefolder`` (``root`` with
    ``train/`` and ``test/`` or ``val/``; images resized to ``image_size`` if they differ)."""
    if dataset == "digits":
        parts = _digits(seed)
    elif dataset in ("cifar10", "cifar100"):
        parts = _cifar(dataset, Path(root or _cache_dir() / "torchvision").expanduser(), download)
    elif dataset == "imagefolder":
        if root is None:
            raise ValueError("data_root: the imagefolder dataset needs a root folder")
        parts = _imagefolder(Path(root).expanduser(), image_size)
    else:
        raise ValueError(f"dataset: unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    x_tr, y_tr, x_te, y_te, num_classes = parts
    if train_subset is not None:
        keep = stratified_subset(np.asarray(y_tr), train_subset, seed)
        x_tr, y_tr = x_tr[keep], np.asarray(y_tr)[keep]
    as_long = lambda y: torch.as_tensor(np.asarray(y), dtype=torch.int64)  # noqa: E731
    return ImageData(dataset, torch.from_numpy(np.ascontiguousarray(x_tr)), as_long(y_tr),
                     torch.from_numpy(np.ascontiguousarray(x_te)), as_long(y_te), num_classes)


def load_data_for(config: StudyConfig) -> ImageData:
    """The dataset a config names (see :func:`load_data`)."""
    return load_data(config.dataset, root=config.data_root, download=config.download,
                     train_subset=config.train_subset, seed=config.seed,
                     image_size=config.image_size if config.image_size <= 64 else None)


# ------------------------------------------------------------------------------------------------ batches
@dataclass(frozen=True)
class Batch:
    """A training batch: inputs, labels, the samples' positions in the training split, and the epoch."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    epoch: int


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on ``(seed, epoch)``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2 ** 63))


@dataclass(frozen=True)
class BatchPipeline:
    """Turns an :class:`ImageData` into model-ready float batches on ``device``.

    Training batches: a per-epoch permutation, random crop with zero padding and horizontal flip, drawn once
    per epoch for all samples (deterministic per ``(seed, epoch, sample)``); then resize (to
    ``input_size / 0.875`` and a ``input_size`` center crop, as ImageNet evaluation) when the model's input
    size differs from the images', and per-channel normalization.
    """

    data: ImageData
    batch_size: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    hflip: bool = False
    eval_batch_size: int = 512

    def steps_per_epoch(self) -> int:
        return math.ceil(self.data.train_labels.numel() / self.batch_size)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalized float input of the model's size."""
        x = images.float().div_(255)
        if x.shape[-1] != self.input_size:
            resized = int(round(self.input_size / 0.875))
            x = F.interpolate(x, size=(resized, resized), mode="bilinear", antialias=True, align_corners=False)
            off = (resized - self.input_size) // 2
            x = x[..., off:off + self.input_size, off:off + self.input_size]
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def augment(self, images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop each image at its ``offsets`` (y, x) from a zero-padded copy, then flip where ``flips``."""
        p = self.crop_padding
        if p:
            n, c, h, w = images.shape
            padded = F.pad(images, (p, p, p, p))
            rows = (offsets[:, 0:1] + torch.arange(h, device=images.device))[:, None, :, None]
            cols = (offsets[:, 1:2] + torch.arange(w, device=images.device))[:, None, None, :]
            batch = torch.arange(n, device=images.device)[:, None, None, None]
            chan = torch.arange(c, device=images.device)[None, :, None, None]
            images = padded[batch, chan, rows, cols]
        if self.hflip:
            images = torch.where(flips[:, None, None, None], images.flip(-1), images)
        return images

    def epoch_plan(self, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Order, crop offsets and flips of one epoch, for every training sample."""
        n = self.data.train_labels.numel()
        g = epoch_generator(seed, epoch)
        order = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        return order, offsets, flips

    def train_batches(self, seed: int, epoch: int) -> Iterator[Batch]:
        """The epoch's training batches on the data's device; the last batch may be smaller."""
        device = self.data.train_images.device
        order, offsets, flips = (t.to(device) for t in self.epoch_plan(seed, epoch))
        for start in range(0, order.numel(), self.batch_size):
            idx = order[start:start + self.batch_size]
            images = self.augment(self.data.train_images[idx], offsets[idx], flips[idx])
            yield Batch(self.prepare(images), self.data.train_labels[idx], idx, epoch)

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test split in order, un-augmented."""
        for start in range(0, self.data.test_labels.numel(), self.eval_batch_size):
            end = start + self.eval_batch_size
            yield self.prepare(self.data.test_images[start:end]), self.data.test_labels[start:end]


def pipeline_for(config: StudyConfig, data: ImageData, batch_size: int) -> BatchPipeline:
    """The batch pipeline a config describes (normalization from the data or ImageNet's statistics)."""
    if config.normalization == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if data.channels == 1:
            mean, std = mean[:1], std[:1]
    else:
        mean, std = data.channel_stats()
    return BatchPipeline(data, batch_size, config.image_size, mean, std, config.crop_padding, config.hflip,
                         config.eval_batch_size)
