"""Named presets: a preset is a set of :class:`~effrank_utils.records.config.StudyConfig` field values.

* ``smoke``  -- seconds; what the tests run.
* ``demo``   -- the embedded default of ``make reproduce``: offline ``digits``, a small ViT, SVD + KD students
  trained to convergence (the rate cut twice at validation plateaus, stopped at the third, at most 100 epochs;
  students clearly outside the band stopped early: ``band_stop``).
* ``cifar10-cpu`` -- CIFAR-10 (torchvision download, or an ImageFolder root) and a small ViT, students trained
  to convergence as in ``demo``.
* ``paper``  -- the author's protocol for a GPU: torchvision ViT-B/32 (ImageNet weights) on CIFAR-100.
"""

from __future__ import annotations

import argparse
import ast
import os
from typing import Any

from ..records.config import nearest

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        dataset="digits", train_subset=300, image_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2,
        mlp_ratio=2.0, teacher_epochs=3, teacher_lr=3e-3, teacher_warmup_epochs=0, teacher_batch_size=64,
        ranks=(1, 2, 4, 8), init="svd", loss="kd", student_epochs=1, student_lr=3e-3, student_batch_size=64,
        eval_batch_size=512,
    ),
    "demo": dict(
        dataset="digits", crop_padding=1, validation_fraction=0.1, image_size=8, patch_size=2, embed_dim=64,
        depth=4, num_heads=4,
        mlp_ratio=2.0, teacher_epochs=60, teacher_lr=2e-3, teacher_weight_decay=0.05, teacher_batch_size=64,
        teacher_warmup_epochs=3, ranks=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), init="svd", loss="kd",
        kd_temperature=4.0, kd_alpha=0.5, student_epochs=100, student_patience=4, student_schedule="plateau",
        student_lr=2e-3, student_batch_size=64, band_stop=0.03,
    ),
    "cifar10-cpu": dict(
        dataset="cifar10", train_subset=10000, crop_padding=4, hflip=True, validation_fraction=0.1, image_size=32,
        patch_size=4,
        embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, teacher_epochs=20, teacher_lr=1e-3,
        teacher_weight_decay=0.05, teacher_batch_size=128, teacher_warmup_epochs=2,
        ranks=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128), init="svd", loss="kd", student_epochs=32,
        student_patience=3, student_schedule="constant", student_lr=5e-4, student_batch_size=128, fuse=4,
    ),
    "paper": dict(
        dataset="cifar100", download=True, crop_padding=4, hflip=True, normalization="model", model="vit_b_32",
        pretrained=True, image_size=224, teacher_epochs=20, teacher_lr=1e-4, teacher_weight_decay=0.01,
        teacher_batch_size=32, teacher_warmup_epochs=0, teacher_schedule="constant",
        ranks=(2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256), init="paper", loss="geometric",
        student_epochs=200, student_lr=1e-4, student_weight_decay=0.01, student_batch_size=24,
        student_schedule="constant", eval_batch_size=256, amp=True,
    ),
}

DEFAULT_PRESET = "demo"  # what `effrank reproduce` and `make reproduce` run without --preset

#: Environment variable that points presets at a local CIFAR-10 ImageFolder tree (train/ and test/).
CIFAR10_FOLDER_ENV = "EFFRANK_CIFAR10_FOLDER"


def preset_values(name: str) -> dict[str, Any]:
    """The field values of a preset (environment-aware for ``cifar10-cpu``)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}"
                         + "".join(f"; did you mean {near!r}?" for near in nearest(name, list(PRESETS)))
                         + f"; allowed: {', '.join(PRESETS)}")
    values = dict(PRESETS[name], preset=name)
    if name == "cifar10-cpu" and os.environ.get(CIFAR10_FOLDER_ENV):
        values.update(dataset="imagefolder", data_root=os.environ[CIFAR10_FOLDER_ENV])
    return values


def parse_assignment(text: str) -> tuple[str, Any]:
    """``field=value`` with ``value`` as a Python literal (``[1, 2]``, ``0.9``, ``True``) or a bare string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--set expects field=value, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.strip(), value
