"""A disk cache of the teacher's logits per (epoch, training sample), for the logit-based losses.

Augmentation is a pure function of ``(seed, epoch, sample)``, so the teacher's logits for a sample in an epoch
are too: the first student of a seed computes them, every later one (in this process, another process or
another machine sharing the run directory) reads them. Logits are stored as fp16, one file per epoch, under a
key that changes with the teacher's weights, the training data and the batch pipeline. A student always sees
fp16-rounded logits when the cache is on, whether they came from disk or not, so results do not depend on
which student filled the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..base.storage import CorruptFile, load_checkpoint, quarantine, save_checkpoint
from .data import BatchPipeline

log = logging.getLogger(__name__)


def cache_key(teacher: nn.Module, pipeline: BatchPipeline, seed: int) -> str:
    """A digest of everything that determines the teacher's logits for a (epoch, sample)."""
    h = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(pipeline.data.fingerprint().encode())  # every split's images (or files) and labels
    h.update(json.dumps({"seed": seed, "preprocessing": pipeline.preprocessing.to_dict(),
                         "crop_padding": pipeline.crop_padding, "hflip": pipeline.hflip}).encode())
    return h.hexdigest()[:20]


class TeacherLogitCache:
    """fp16 teacher logits of one (teacher, data, pipeline, seed), one file per epoch under ``directory``.

    State is real here: the epoch being read or filled is held in memory and written once it is complete.
    """

    def __init__(self, directory: str | Path, key: str, num_samples: int) -> None:
        self.directory = Path(directory) / key
        self.num_samples = num_samples
        self._epoch: int | None = None
        self._logits: torch.Tensor | None = None  # the current epoch's [N, C] fp16 logits
        self._filled = 0  # samples filled so far this epoch (an epoch visits each sample once)
        self._complete = False

    def _path(self, epoch: int) -> Path:
        return self.directory / f"epoch_{epoch:05d}.pt"

    def _enter(self, epoch: int, device: torch.device) -> None:
        if self._epoch == epoch:
            return
        self._epoch, self._logits, self._filled, self._complete = epoch, None, 0, False
        path = self._path(epoch)
        if path.exists():
            try:
                self._logits = load_checkpoint(path, map_location=device)["logits"]
                self._complete = True
            except (CorruptFile, KeyError) as exc:  # recomputed by this epoch's students
                log.warning("%s: damaged teacher-logit cache (%s); moved aside to %s, it is computed again", path,
                            exc, quarantine(path).name)

    def lookup(self, epoch: int, index: torch.Tensor) -> torch.Tensor | None:
        """The cached fp16 logits of these samples in this epoch, or None if the epoch is not cached."""
        self._enter(epoch, index.device)
        return self._logits[index] if self._complete else None

    def store(self, epoch: int, index: torch.Tensor, logits: torch.Tensor) -> None:
        """Record logits computed for these samples; the epoch's file is written when every sample is in."""
        self._enter(epoch, index.device)
        if self._complete:
            return
        if self._logits is None:
            self._logits = torch.zeros(self.num_samples, logits.shape[-1], dtype=torch.float16, device=logits.device)
        self._logits[index] = logits.detach().half()
        self._filled += index.numel()
        if self._filled == self.num_samples:
            save_checkpoint(self._path(epoch), {"logits": self._logits.cpu()})
            self._complete = True
