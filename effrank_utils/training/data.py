"""Datasets as uint8 tensors (held in memory, or streamed from files by :mod:`.streaming`), and batch pipelines
that augment on tensors.

Images are decoded once (or per batch when streamed); every epoch's order, crops and flips are drawn from a
generator seeded by ``(seed, epoch)``, so a batch stream is reproducible and identical for every student that
shares it, however the images are read.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..base.seeds import derive_seed
from ..base.storage import atomic_write
from .preprocessing import Preprocessing, preprocessing_for

if TYPE_CHECKING:
    from ..records.config import StudyConfig

log = logging.getLogger(__name__)

CACHE_ENV = "EFFRANK_CACHE"
DIGITS_TEST_FRACTION = 0.2
MEMOS = ("_stats", "_fingerprint")  # per-object results that stay valid for a copy on another device
SPLITS = ("train", "val", "test")


STATS_BATCH = 256  # images per step of the channel statistics


def memo(obj: Any, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per object under ``key`` (a frozen dataclass: kept in ``__dict__``, not set); ``key``
    should be one of :data:`MEMOS` so that a copy on another device keeps it."""
    if key not in obj.__dict__:
        obj.__dict__[key] = compute()
    return obj.__dict__[key]


def channel_stats_of(batches: Iterable[torch.Tensor], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std, in [0, 1] units, of uint8 image batches, summed in float64: the same
    numbers whether the images are held in memory or streamed batch by batch."""
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for images in batches:
        x = images.detach().to("cpu", torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
        count += x.numel() // channels
    mean = total / count
    std = ((squares - count * mean.square()) / (count - 1)).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


class DatasetNotAvailable(FileNotFoundError):
    """The dataset's files are not where they are expected (and could not be downloaded)."""


class CorruptImage(ValueError):
    """An image file in the dataset's folder cannot be decoded."""


@dataclass(frozen=True)
class ImageData:
    """A dataset in memory: uint8 images ``N x C x H x W`` and int64 labels for each split.

    ``val_*`` is a validation split held out from the training data (for early stopping); empty when none was
    asked for. The test split is only ever reported, never used to decide anything."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.val_images is None:  # no validation split: empty tensors of the right shape and type
            object.__setattr__(self, "val_images", self.train_images[:0])
            object.__setattr__(self, "val_labels", self.train_labels[:0])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of ``train``, ``val`` or ``test``."""
        if name not in SPLITS:
            raise ValueError(f"split: unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    def labels(self, split: str) -> torch.Tensor:
        """The labels of ``train``, ``val`` or ``test``."""
        return self.split(split)[1]

    def image_batches(self, split: str, chunks: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 images of ``split`` at each chunk of indices (on the data's device), in turn."""
        images = self.split(split)[0]
        for idx in chunks:
            yield images[idx]

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    @property
    def has_validation(self) -> bool:
        return self.val_labels.numel() > 0

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def _memo(self, key: str, compute: Callable[[], Any]) -> Any:
        return memo(self, key, compute)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training split, in [0, 1] units (computed once)."""
        chunks = list(torch.arange(self.train_labels.numel()).split(STATS_BATCH))
        return self._memo("_stats", lambda: channel_stats_of(self.image_batches("train", chunks), self.channels))

    def fingerprint(self) -> str:
        """A hex digest of the content (every split's images and labels, and ``num_classes``), computed once.

        The name and the folder the data came from do not enter it: the same pixels and labels give the same
        fingerprint wherever they were loaded from."""
        def compute() -> str:
            h = hashlib.sha256(f"num_classes={self.num_classes}".encode())
            fields = ["train_images", "train_labels", "test_images", "test_labels"]
            if self.has_validation:  # a folder made without a validation split keeps its fingerprint
                fields += ["val_images", "val_labels"]
            for field in fields:
                array = np.ascontiguousarray(getattr(self, field).detach().cpu().numpy())
                h.update(f"|{field}:{array.dtype}:{array.shape}|".encode())
                h.update(array)
            return h.hexdigest()[:20]
        return self._memo("_fingerprint", compute)

    def to(self, device: torch.device | str) -> "ImageData":
        """A copy on ``device`` (through pinned memory when it is a GPU); the same object if already there."""
        device = torch.device(device)
        if self.train_images.device == device:
            return self

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)

        moved = ImageData(self.name, move(self.train_images), move(self.train_labels), move(self.test_images),
                          move(self.test_labels), self.num_classes, move(self.val_images), move(self.val_labels))
        moved.__dict__.update({k: v for k, v in self.__dict__.items() if k in MEMOS})
        return moved


# ------------------------------------------------------------------------------------------------ loading
class SplitArrays(NamedTuple):
    """What a loader returns: both splits as numpy arrays (uint8 images ``N x C x H x W``, integer labels)."""

    x_tr: np.ndarray
    y_tr: np.ndarray
    x_te: np.ndarray
    y_te: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class LoadRequest:
    """The options :func:`load_data` passes to every loader (each reads the ones it needs)."""

    root: Path | None
    download: bool = False
    seed: int = 0
    preprocessing: Preprocessing | None = None  # what the images are sized for (imagefolder)

    @classmethod
    def of(cls, root: str | Path | None, **options: Any) -> "LoadRequest":
        return cls(Path(root).expanduser() if root is not None else None, **options)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of ``size`` samples (sorted), reproducible for a seed."""
    if size >= labels.size:
        return np.arange(labels.size)
    from sklearn.model_selection import train_test_split
    keep, _ = train_test_split(np.arange(labels.size), train_size=size, stratify=labels, random_state=seed)
    return np.sort(keep)


def _digits(request: LoadRequest) -> SplitArrays:
    """scikit-learn's 8x8 digits (bundled, offline), split into train and test by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    bunch = load_digits()
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)[:, None]  # 0..16 -> 0..255, 1 channel
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target, test_size=DIGITS_TEST_FRACTION,
                                              stratify=bunch.target, random_state=request.seed)
    return SplitArrays(x_tr, y_tr, x_te, y_te, 10)


def _cifar_source(name: str, request: LoadRequest) -> tuple[Any, Path]:
    """torchvision's dataset class for ``name`` and the root folder its files are read from."""
    from torchvision import datasets
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    return cls, request.root or cache_dir() / "torchvision"


def _cifar_missing(name: str, root: Path, folder: str, reason: object) -> DatasetNotAvailable:
    return DatasetNotAvailable(
        f"data_root: {name} files were not found under {root / folder} and could not be downloaded "
        f"({reason}). Run once with download=True on a machine with internet access, or copy the extracted "
        f"'{folder}' folder (from the official {name.upper()} python release) into {root}.")


def _check_cifar(name: str, request: LoadRequest) -> None:
    """Without ``download``, the extracted files must be there (their checksums are left to loading)."""
    cls, root = _cifar_source(name, request)
    if not request.download and not (root / cls.base_folder).is_dir():
        raise _cifar_missing(name, root, cls.base_folder, "download is off")


def _cifar(name: str, request: LoadRequest) -> SplitArrays:
    """torchvision's CIFAR-10 or CIFAR-100 files under ``root`` (downloaded there if asked)."""
    cls, root = _cifar_source(name, request)
    try:
        train = cls(str(root), train=True, download=request.download)
        test = cls(str(root), train=False, download=request.download)
    except (RuntimeError, OSError) as exc:  # torchvision: "Dataset not found or corrupted"; offline: URLError
        raise _cifar_missing(name, root, cls.base_folder, exc) from None
    to_nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
    return SplitArrays(to_nchw(train.data), np.asarray(train.targets), to_nchw(test.data),
                       np.asarray(test.targets), len(train.classes))


def _hidden(name: str) -> bool:
    """Whether a file or folder is hidden (``.ipynb_checkpoints``, ``.DS_Store``): never a class or an image."""
    return name.startswith(".")


def _class_folders(split_dir: Path) -> list[str]:
    """The class folder names of one split, sorted (the order of torchvision's ImageFolder labels)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not _hidden(p.name))


def _few(names: list[str], shown: int = 5) -> str:
    """Up to ``shown`` of ``names``, quoted, then how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(map(repr, names[:shown])) + more


def _count_class_folders(root: Path) -> int | None:
    """The number of class folders under ``root/train``; None when there is no such folder."""
    return len(_class_folders(root / "train")) if (root / "train").is_dir() else None


def _folder_layout(request: LoadRequest) -> tuple[Path, Path, list[str]]:
    """``root/train``, ``root/test`` (or ``root/val``) and their class names, checked to be the same and
    at least two (with a single class every student would score 1.0)."""
    root = request.root
    if root is None:
        raise ValueError("data_root: the imagefolder dataset needs a folder holding train/ and test/ (or val/)")
    if not root.is_dir():
        raise DatasetNotAvailable(f"data_root: {root} does not exist")
    train_dir = root / "train"
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise DatasetNotAvailable(f"data_root: {root} must hold train/ and test/ (or val/) class folders")
    classes = _class_folders(train_dir)
    if len(classes) < 2:
        raise ValueError(f"data_root: {train_dir} holds {len(classes)} class folder(s) {classes}; at least 2 "
                         "class folders are needed (one folder of images per class)")
    test_classes = _class_folders(test_dir)
    if test_classes != classes:
        only = {"train": sorted(set(classes) - set(test_classes)),
                test_dir.name: sorted(set(test_classes) - set(classes))}
        differ = "; ".join(f"only in {split}: {_few(names)}" for split, names in only.items() if names)
        raise ValueError(f"data_root: train and {test_dir.name} class folders differ under {root} ({differ}); "
                         "give both splits the same class folders")
    return train_dir, test_dir, classes


class _FolderWalk:
    """Lists the images under a dataset's split folders, following folder links, but only into folders that no
    other path reaches: each image is read once, and a link loop is an error rather than copies of the images."""

    def __init__(self, split_dirs: tuple[Path, ...]) -> None:
        self.walked: set[Path] = set()  # real folders read (with everything under them)
        self.above: set[Path] = set()  # the folders holding one of them
        for split_dir in split_dirs:
            self._enter(split_dir)

    def _enter(self, folder: Path) -> None:
        """Note the real folder behind ``folder``; a link to a folder read already, inside one or holding one
        is refused."""
        real = folder.resolve()
        if folder.is_symlink() and (real in self.above or not self.walked.isdisjoint((real, *real.parents))):
            raise ValueError(f"data_root: the folder link {folder} leads to {real}, which is read already (a link "
                             "loop, or a second path to the same images); remove the link (links to folders that "
                             "nothing else reads are followed)")
        self.walked.add(real)
        self.above.update(real.parents)

    def images(self, folder: Path) -> list[Path]:
        """The image files under ``folder``, hidden files and folders left out, in torchvision's ImageFolder
        order (folders by path, the files of each sorted)."""
        from torchvision.datasets.folder import IMG_EXTENSIONS
        self._enter(folder)
        found = []
        for parent, subfolders, files in os.walk(folder, followlinks=True):
            subfolders[:] = sorted(name for name in subfolders if not _hidden(name))
            for name in subfolders:
                self._enter(Path(parent, name))
            found.append((parent, sorted(f for f in files if not _hidden(f) and f.lower().endswith(IMG_EXTENSIONS))))
        return [Path(parent, name) for parent, files in sorted(found) for name in files]


def _image_files(split_dirs: tuple[Path, ...], classes: list[str]) -> list[list[tuple[Path, int]]]:
    """``(path, label)`` of every image of each split, in torchvision's ImageFolder order."""
    walk = _FolderWalk(split_dirs)
    splits = []
    for split_dir in split_dirs:
        per_class = [walk.images(split_dir / name) for name in classes]
        empty = [name for name, files in zip(classes, per_class) if not files]
        if empty:
            raise DatasetNotAvailable(f"data_root: under {split_dir}, the class folder(s) {_few(empty)} hold no "
                                      "images; add images to them or remove them from both splits")
        splits.append([(path, label) for label, files in enumerate(per_class) for path in files])
    return splits


RESIZE_ON_LOADING_UP_TO = 64  # pixels
_PIL_FILTERS = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}


def stored_side(preprocessing: Preprocessing, sizes: Callable[[], set[tuple[int, int]]]) -> int | None:
    """The side (square) images are kept at for model input ``preprocessing``, or None to keep them as decoded;
    ``sizes()`` gives their distinct (width, height), read only when the rule needs them.

    * A small input (at most :data:`RESIZE_ON_LOADING_UP_TO` pixels) is what images are resized to on loading.
    * Images that are all one square size no larger than the preprocessing's resize size (CIFAR at 224 px) are
      kept as decoded, small in memory, and upscaled per batch on the device.
    * Any others (photos of different sizes and shapes) are resized on loading, shorter side to the resize size
      and a center square of it kept; the center crop of the input size is taken per batch.
    """
    if preprocessing.input_size <= RESIZE_ON_LOADING_UP_TO:
        return preprocessing.input_size
    found = sizes()
    if len(found) == 1:
        ((width, height),) = found
        if width == height <= preprocessing.resize_size:
            return None
    return preprocessing.resize_size


def _rgb(img: Any) -> Any:
    """A decoded PIL image as RGB: 16-bit and 32-bit grayscale scaled to 8 bits, palette, RGBA, CMYK, LA and L
    converted (alpha dropped, as torchvision's ImageFolder does)."""
    from PIL import Image
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(wide / (65535 if wide.max() > 255 else 255) * 255, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")  # a palette with transparency converts cleanly only through RGBA
    return img.convert("RGB")


def read_image(path: Path, side: int | None, interpolation: str = "bilinear") -> np.ndarray:
    """One image file as a ``3 x H x W`` uint8 array: its EXIF orientation applied, converted to RGB, and (when
    ``side`` is given) resized with ``interpolation``, shorter side to ``side``, with the center square kept."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as opened:
            img = _rgb(ImageOps.exif_transpose(opened))
    except Image.DecompressionBombError as exc:  # over twice PIL's limit: refused, not decoded
        raise CorruptImage(f"data_root: the image {path} is too large to decode ({str(exc).rstrip('.')}); PIL "
                           f"refuses images over twice Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels: "
                           "resize it below that or remove this file") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: unidentified, truncated or malformed data
        raise CorruptImage(f"data_root: cannot decode the image {path} ({type(exc).__name__}: {exc}); "
                           "remove or replace this file") from None
    if side is not None and img.size != (side, side):
        img = ImageOps.fit(img, (side, side), method=getattr(Image.Resampling, _PIL_FILTERS[interpolation]))
    return np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))  # C x H x W, writable


def image_sizes(paths: Sequence[Path]) -> set[tuple[int, int]]:
    """The distinct (width, height) of image files, read from their headers (nothing is decoded)."""
    from PIL import Image
    sizes = set()
    for path in paths:
        try:
            with Image.open(path) as opened:
                sizes.add(opened.size)
        except Image.DecompressionBombError as exc:
            raise CorruptImage(f"data_root: the image {path} is too large to decode ({str(exc).rstrip('.')}); "
                               "resize it below twice Image.MAX_IMAGE_PIXELS or remove this file") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImage(f"data_root: cannot read the image {path} ({type(exc).__name__}: {exc}); "
                               "remove or replace this file") from None
    return sizes


def folder_side(request: LoadRequest, paths: Sequence[Path]) -> int | None:
    """The side a folder's images are kept at (:func:`stored_side`); None also when nothing asks for a size."""
    if request.preprocessing is None:
        return None
    return stored_side(request.preprocessing, lambda: image_sizes(paths))


def _decode(split_dir: Path, samples: list[tuple[Path, int]], side: int | None,
            interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split's ``samples``, all of one size."""
    from tqdm.auto import tqdm
    images = [read_image(path, side, interpolation)
              for path, _ in tqdm(samples, desc=f"decoding {split_dir.name}", leave=False)]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"data_root: images under {split_dir} differ in size ({sorted(shapes)[:3]}...); "
                         "load them for a model input (a preprocessing), which resizes them, or resize them")
    return np.stack(images), np.asarray([label for _, label in samples], dtype=np.int64)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "effrank"))


def _tree_key(root: Path, sizing: str, files: list[Path]) -> str:
    """A key that changes when any image is added, removed, renamed or rewritten, or another sizing is asked."""
    h = hashlib.sha256(f"{root.resolve()}|{sizing}".encode())
    for path in files:
        st = path.stat()
        h.update(f"|{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _read_cache(cache: Path) -> SplitArrays | None:
    """The arrays cached in ``cache``; None when there is no cache or it is damaged (then with a warning)."""
    if not cache.exists():
        return None
    try:
        with np.load(cache) as z:
            arrays = SplitArrays(*(z[k] for k in SplitArrays._fields[:-1]), int(z["num_classes"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("image cache %s is damaged (%s: %s); decoding the images again", cache, type(exc).__name__, exc)
        return None
    if len(arrays.x_tr) != len(arrays.y_tr) or len(arrays.x_te) != len(arrays.y_te):
        log.warning("image cache %s is damaged (images and labels differ in number); decoding again", cache)
        return None
    return arrays


def _write_cache(cache: Path, arrays: SplitArrays) -> None:
    try:
        atomic_write(cache, lambda f: np.savez(f, **arrays._asdict()))
    except OSError as exc:  # a read-only home is no reason to fail
        log.warning("could not cache decoded images at %s: %s", cache, exc)


class FolderSamples(NamedTuple):
    """An image folder's split folders, class names and ``(path, label)`` of every image of each split."""

    train_dir: Path
    test_dir: Path
    classes: list[str]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]


def folder_samples(request: LoadRequest) -> FolderSamples:
    """The images of ``request.root`` (train/ and test/ or val/), checked and listed without decoding."""
    train_dir, test_dir, classes = _folder_layout(request)
    train, test = _image_files((train_dir, test_dir), classes)
    return FolderSamples(train_dir, test_dir, classes, train, test)


def _imagefolder(request: LoadRequest) -> SplitArrays:
    """Decode ``root/train`` and ``root/test`` (or ``val``) once; the result is cached as ``.npz``, keyed on
    every image's path, size and modification time."""
    folder = folder_samples(request)
    train_dir, test_dir, train, test = folder.train_dir, folder.test_dir, folder.train, folder.test
    paths = [path for path, _ in train + test]
    pre = request.preprocessing
    sizing = "as decoded" if pre is None else f"{pre.input_size}/{pre.resize_size}/{pre.interpolation}"
    cache = cache_dir() / f"imagefolder-{_tree_key(train_dir.parent, sizing, paths)}.npz"
    arrays = _read_cache(cache)
    if arrays is None:
        side, interpolation = folder_side(request, paths), pre.interpolation if pre else "bilinear"
        arrays = SplitArrays(*_decode(train_dir, train, side, interpolation),
                             *_decode(test_dir, test, side, interpolation), len(folder.classes))
        _write_cache(cache, arrays)
    return arrays


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's loader and what is known without loading it."""

    loader: Callable[[LoadRequest], SplitArrays]
    channels: int
    classes: int | Callable[[Path], int | None]  # a fixed number, or counted from the files under ``root``
    check: Callable[[LoadRequest], object] | None = None  # cheap check that the files can be had; raises if not
    image_files: bool = False  # read from image files, so it can be streamed (data_loading="stream")


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(_digits, channels=1, classes=10),
    "cifar10": DatasetSpec(functools.partial(_cifar, "cifar10"), channels=3, classes=10,
                           check=functools.partial(_check_cifar, "cifar10")),
    "cifar100": DatasetSpec(functools.partial(_cifar, "cifar100"), channels=3, classes=100,
                            check=functools.partial(_check_cifar, "cifar100")),
    "imagefolder": DatasetSpec(_imagefolder, channels=3, classes=_count_class_folders, check=_folder_layout,
                               image_files=True),
}


def dataset_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def dataset_classes(dataset: str, root: str | Path | None = None) -> int | None:
    """The number of classes of ``dataset``, without decoding anything (imagefolder: the class folders under
    ``root/train``); None when it cannot be told without loading."""
    classes = dataset_spec(dataset).classes
    if isinstance(classes, int):
        return classes
    return None if root is None else classes(Path(root).expanduser())


def dataset_channels(dataset: str) -> int:
    """The number of image channels ``dataset`` loads with (1: grayscale, 3: RGB)."""
    return dataset_spec(dataset).channels


def check_source(dataset: str, root: str | Path | None = None, download: bool = False) -> tuple[int | None, int]:
    """Check, before any compute and without decoding, that ``dataset``'s files can be had from ``root``;
    returns ``(classes, channels)`` (classes None when unknown until loading). Raises ``ValueError``
    (``data_root: ...``) when they cannot."""
    spec = dataset_spec(dataset)
    if spec.check is not None:
        try:
            spec.check(LoadRequest.of(root, download=download))
        except DatasetNotAvailable as exc:
            raise ValueError(str(exc)) from None
    return dataset_classes(dataset, root), spec.channels


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (sorted) of the training part and of a class-balanced validation part holding ``fraction`` of
    ``labels``, reproducible for a seed. Every class needs an image in the validation part."""
    size = round(fraction * labels.size)
    classes = np.unique(labels).size
    if size < classes or labels.size - size < classes:
        raise ValueError(f"validation_fraction: {fraction} of {labels.size} training images gives {size} for "
                         f"validation; a class-balanced split needs between {classes} (the number of classes) and "
                         f"{labels.size - classes}")
    from sklearn.model_selection import train_test_split
    train, val = train_test_split(np.arange(labels.size), test_size=size, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def training_selection(labels: np.ndarray, train_subset: int | None, validation_fraction: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the training split of the images trained on and of the validation split: a class-balanced
    subset of ``train_subset`` samples (all when None), of which ``validation_fraction`` is held out
    (class-balanced; none when 0)."""
    keep = stratified_subset(labels, train_subset, seed) if train_subset is not None else np.arange(labels.size)
    if validation_fraction == 0:
        return keep, keep[:0]
    train, val = validation_split(labels[keep], validation_fraction, seed)
    return keep[train], keep[val]


def test_selection(labels: np.ndarray, test_subset: int | None, seed: int) -> np.ndarray:
    """Indices into the test split of the images evaluated: a class-balanced subset of ``test_subset`` (all
    when None)."""
    return stratified_subset(labels, test_subset, seed) if test_subset is not None else np.arange(labels.size)


def load_data(dataset: str, *, root: str | Path | None = None, download: bool = False,
              train_subset: int | None = None, seed: int = 0, preprocessing: Preprocessing | None = None,
              validation_fraction: float = 0.0, test_subset: int | None = None) -> ImageData:
    """Load a dataset by name into memory: ``digits`` (offline, bundled with scikit-learn), ``cifar10``,
    ``cifar100`` (torchvision; ``download`` for users with internet) or ``imagefolder`` (``root`` with
    ``train/`` and ``test/`` or ``val/``; images sized for ``preprocessing`` by :func:`stored_side`).

    ``train_subset`` keeps a class-balanced subset of the training split; ``validation_fraction`` of what
    remains is then held out as the validation split (class-balanced); ``test_subset`` keeps a class-balanced
    subset of the test split."""
    request = LoadRequest.of(root, download=download, seed=seed, preprocessing=preprocessing)
    x_tr, y_tr, x_te, y_te, num_classes = dataset_spec(dataset).loader(request)
    y_tr = np.asarray(y_tr)
    train, val = training_selection(y_tr, train_subset, validation_fraction, seed)
    test = test_selection(np.asarray(y_te), test_subset, seed)
    x_te, y_te = x_te[test], np.asarray(y_te)[test]
    images = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    labels = lambda y: torch.as_tensor(np.asarray(y), dtype=torch.int64)  # noqa: E731
    return ImageData(dataset, images(x_tr[train]), labels(y_tr[train]), images(x_te), labels(y_te), num_classes,
                     images(x_tr[val]), labels(y_tr[val]))


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
    return torch.Generator().manual_seed(derive_seed(seed, epoch))


@dataclass(frozen=True)
class BatchPipeline:
    """Turns an :class:`ImageData` (or streamed data) into model-ready float batches on the data's device.

    Training batches: a per-epoch permutation, random crop with zero padding and horizontal flip, drawn once
    per epoch for all samples (deterministic per ``(seed, epoch, sample)``); then the ``preprocessing``: resize to
    its resize size (unless the images are stored at it) and a center crop of the input size, when the images'
    size differs from the model's input, and per-channel normalization.
    """

    data: Any  # ImageData or StreamedData: the same batch stream either way
    batch_size: int
    preprocessing: Preprocessing
    crop_padding: int = 0
    hflip: bool = False
    eval_batch_size: int = 512

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def steps_per_epoch(self) -> int:
        return math.ceil(self.data.train_labels.numel() / self.batch_size)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalized float input of the model's size."""
        pre = self.preprocessing
        x = images.float().div_(255)
        side = x.shape[-1]
        if side != pre.input_size:
            if side != pre.resize_size:
                antialias = pre.interpolation != "nearest"
                x = F.interpolate(x, size=(pre.resize_size, pre.resize_size), mode=pre.interpolation,
                                  antialias=antialias, **({"align_corners": False} if antialias else {}))
            off = (pre.resize_size - pre.input_size) // 2
            x = x[..., off:off + pre.input_size, off:off + pre.input_size]
        mean = torch.tensor(pre.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(pre.std, device=x.device).view(1, -1, 1, 1)
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
        order, offsets, flips = (t.to(self.data.device) for t in self.epoch_plan(seed, epoch))
        chunks = list(order.split(self.batch_size))
        for idx, images in zip(chunks, self.data.image_batches("train", chunks)):
            images = self.augment(images, offsets[idx], flips[idx])
            yield Batch(self.prepare(images), self.data.train_labels[idx], idx, epoch)

    def eval_batches(self, split: str = "test") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A split (``test`` or ``val``) in order, un-augmented."""
        labels = self.data.labels(split)
        chunks = list(torch.arange(labels.numel(), device=labels.device).split(self.eval_batch_size))
        for idx, images in zip(chunks, self.data.image_batches(split, chunks)):
            yield self.prepare(images), labels[idx]


def pipeline_for(config: StudyConfig, data: Any, batch_size: int) -> BatchPipeline:
    """The batch pipeline a config describes, with the preprocessing of
    :func:`~effrank_utils.training.preprocessing.preprocessing_for`."""
    return BatchPipeline(data, batch_size, preprocessing_for(config, data), config.crop_padding, config.hflip,
                         config.eval_batch_size)
