"""The dataset a config names, held in memory or streamed from its files (``data_loading``)."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data import (
    ImageData,
    LoadRequest,
    dataset_spec,
    folder_samples,
    image_sizes,
    load_data,
    stored_side,
    test_selection,
    training_selection,
)
from .preprocessing import Preprocessing, preprocessing_for
from .streaming import StreamedData, default_workers

if TYPE_CHECKING:
    from ..records.config import StudyConfig

log = logging.getLogger(__name__)

GIB = 2 ** 30


def decoded_bytes(images: int, channels: int, side: int) -> int:
    """What ``images`` decoded uint8 images of ``channels`` x ``side`` x ``side`` take in memory."""
    return images * channels * side * side


def load_data_for(config: StudyConfig) -> ImageData | StreamedData:
    """The dataset a config names (see :func:`~effrank_utils.training.data.load_data`), sized for its model's
    preprocessing; an image folder is streamed with ``data_loading='stream'``, or with ``'auto'`` when its decoded
    folder (both splits, as loading into memory decodes them) would take more than ``memory_budget`` GiB."""
    geometry = preprocessing_for(config)  # the statistics come later, from the data: only the sizing is used here
    if config.data_loading == "memory" or not dataset_spec(config.dataset).image_files:
        return _in_memory(config, geometry)
    request = LoadRequest.of(config.data_root, seed=config.seed, preprocessing=geometry)
    folder = folder_samples(request)
    sizes = functools.cache(lambda: image_sizes([path for path, _ in folder.train + folder.test]))
    side = stored_side(geometry, sizes)
    labels = np.asarray([label for _, label in folder.train], dtype=np.int64)
    train, val = training_selection(labels, config.train_subset, config.validation_fraction, config.seed)
    held = side or max(max(size) for size in sizes())
    need = decoded_bytes(len(folder.train) + len(folder.test), 3, held)  # memory decodes both splits whole
    if config.data_loading == "auto":
        if need <= config.memory_budget * GIB:
            return _in_memory(config, geometry)
        log.info("data_loading auto: the decoded images would take %.1f GiB (memory_budget %.1f GiB); "
                 "streaming them from %s", need / GIB, config.memory_budget, request.root)
    paths = [path for path, _ in folder.train]

    def split(indices: np.ndarray) -> tuple[tuple, torch.Tensor]:
        return tuple(paths[i] for i in indices), torch.as_tensor(labels[indices])

    (train_files, train_labels), (val_files, val_labels) = split(train), split(val)
    test_labels_all = np.asarray([label for _, label in folder.test], dtype=np.int64)
    test = test_selection(test_labels_all, config.test_subset, config.seed)
    test_files = tuple(folder.test[i][0] for i in test)
    test_labels = torch.as_tensor(test_labels_all[test])
    return StreamedData(config.dataset, request.root, {"train": train_files, "val": val_files, "test": test_files},
                        {"train": train_labels, "val": val_labels, "test": test_labels}, len(folder.classes), side,
                        held, geometry.interpolation,
                        default_workers() if config.data_workers is None else config.data_workers)


def _in_memory(config: StudyConfig, geometry: Preprocessing) -> ImageData:
    return load_data(config.dataset, root=config.data_root, download=config.download,
                     train_subset=config.train_subset, seed=config.seed, preprocessing=geometry,
                     validation_fraction=config.validation_fraction, test_subset=config.test_subset)
