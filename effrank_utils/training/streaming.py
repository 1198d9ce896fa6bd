"""Image folders larger than memory: images read and decoded per batch in worker processes.

:class:`StreamedData` answers the batch pipeline as :class:`~effrank_utils.training.data.ImageData` does, with
the same images (decoded and sized by the same :func:`~effrank_utils.training.data.read_image`), so the batch
plan of a ``(seed, epoch)``, the per-sample augmentation, fused students, the teacher-logit cache, resume and
determinism are those of a folder held in memory. Only labels and file names are held.

Its fingerprint is computed without decoding the folder: every file's path (relative to the folder), size and
label, and the pixels of a sample of images (:data:`FINGERPRINT_SAMPLE` per split). It detects added, removed,
renamed or relabelled files, any change of a file's size and any change of a sampled image; an edit that keeps
an unsampled file's size is not detected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..base.storage import write_json
from ..records.run_folder import FILE_FINGERPRINT_PREFIX
from .data import MEMOS, SPLITS, STATS_BATCH, cache_dir, channel_stats_of, memo, read_image

log = logging.getLogger(__name__)

FINGERPRINT_SAMPLE = 16  # decoded images per split that enter the fingerprint
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Decoding processes when ``data_workers`` is not set: the CPU cores, at most :data:`MAX_DEFAULT_WORKERS`."""
    return min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)


class _ImageFiles(Dataset):
    """Image files decoded on access (in a DataLoader worker)."""

    def __init__(self, paths: Sequence[Path], side: int | None, interpolation: str) -> None:
        self.paths, self.side, self.interpolation = list(paths), side, interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(read_image(self.paths[index], self.side, self.interpolation))


@dataclass(frozen=True)
class StreamedData:
    """An image folder's splits as file lists and labels; images are decoded per batch.

    ``files`` and ``targets`` hold each split's paths and int64 labels (``val`` empty when there is no
    validation split); ``side`` is the square side images are resized to on decoding (None: as decoded, all of
    size ``image_size``)."""

    name: str
    root: Path
    files: dict[str, tuple[Path, ...]]
    targets: dict[str, torch.Tensor]
    num_classes: int
    side: int | None
    image_size: int
    interpolation: str = "bilinear"
    workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels: int = 3

    def labels(self, split: str) -> torch.Tensor:
        """The labels of ``train``, ``val`` or ``test``."""
        if split not in SPLITS:
            raise ValueError(f"split: unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        return self.targets[split]

    @property
    def train_labels(self) -> torch.Tensor:
        return self.targets["train"]

    @property
    def val_labels(self) -> torch.Tensor:
        return self.targets["val"]

    @property
    def test_labels(self) -> torch.Tensor:
        return self.targets["test"]

    @property
    def has_validation(self) -> bool:
        return self.targets["val"].numel() > 0

    def image_batches(self, split: str, chunks: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 images of ``split`` at each chunk of indices, decoded by ``workers`` processes (prefetching,
        into pinned memory for a GPU), on the data's device."""
        gpu = self.device.type == "cuda"
        plan = torch.cat(list(chunks)).cpu().split([len(chunk) for chunk in chunks]) if chunks else ()
        loader = DataLoader(_ImageFiles(self.files[split], self.side, self.interpolation),
                            batch_sampler=[chunk.tolist() for chunk in plan], num_workers=self.workers,
                            pin_memory=gpu, prefetch_factor=4 if self.workers else None,
                            persistent_workers=False)
        for images in loader:
            yield images.to(self.device, non_blocking=gpu)

    def to(self, device: torch.device | str) -> "StreamedData":
        """The same files with batches (and labels) on ``device``; the same object if already there."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = replace(self, targets={k: v.to(device) for k, v in self.targets.items()}, device=device)
        moved.__dict__.update({k: v for k, v in self.__dict__.items() if k in MEMOS})
        return moved

    def fingerprint(self) -> str:
        """A digest of the file list (relative paths, sizes, labels, per split), the sizing and a sample of
        decoded images (see the module docstring), prefixed with :data:`FILE_FINGERPRINT_PREFIX`."""
        def compute() -> str:
            h = hashlib.sha256(f"num_classes={self.num_classes}|side={self.side}|{self.interpolation}".encode())
            for split in SPLITS:
                paths, labels = self.files[split], self.targets[split].tolist()
                h.update(f"|{split}:{len(paths)}".encode())
                for path, label in zip(paths, labels):
                    h.update(f"|{path.relative_to(self.root)}:{path.stat().st_size}:{label}".encode())
                for i in np.linspace(0, len(paths) - 1, min(FINGERPRINT_SAMPLE, len(paths))).round().astype(int):
                    h.update(read_image(paths[i], self.side, self.interpolation).tobytes())
            return FILE_FINGERPRINT_PREFIX + h.hexdigest()[:20]
        return memo(self, "_fingerprint", compute)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training split in [0, 1] units: one streamed pass, then kept in the
        effrank cache (keyed by the fingerprint) so that other processes and later runs read it."""
        def compute() -> tuple[tuple[float, ...], tuple[float, ...]]:
            cache = cache_dir() / f"stream-stats-{self.fingerprint()}.json"
            try:
                saved = json.loads(cache.read_text())
                return tuple(saved["mean"]), tuple(saved["std"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            chunks = list(torch.arange(self.train_labels.numel()).split(STATS_BATCH))
            mean, std = channel_stats_of(self.to("cpu").image_batches("train", chunks), self.channels)
            try:
                write_json(cache, {"mean": mean, "std": std})
            except OSError as exc:  # a read-only home is no reason to fail
                log.warning("could not cache the channel statistics at %s: %s", cache, exc)
            return mean, std
        return memo(self, "_stats", compute)
