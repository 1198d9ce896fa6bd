"""How images become model input: per-channel statistics, interpolation and the resize-then-crop geometry.

``normalization`` chooses where they come from: ``dataset`` (the training split's statistics), ``imagenet``
(ImageNet's) or ``model`` (the model's own data config: timm's ``resolve_model_data_config``, or the
torchvision weights' transforms), which is what pretrained weights were trained with. The geometry is the
ImageNet evaluation one: resize to ``input_size / crop_pct`` (floored, as timm does, for a model's data config;
the weights' own size for torchvision), then a center crop of ``input_size``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .models import model_spec

if TYPE_CHECKING:
    from ..records.config import StudyConfig

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # ImageNet evaluation: resize 256, crop 224
DEFAULT_INTERPOLATION = "bilinear"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class StatisticsSource(Protocol):
    """Data whose training split gives per-channel statistics (in memory or streamed)."""

    channels: int

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]: ...


@dataclass(frozen=True)
class Preprocessing:
    """What turns a stored uint8 image into model input (see the module docstring); ``source`` says where the
    statistics and the geometry came from."""

    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    input_size: int
    resize_size: int  # the side images are resized to before the center crop of ``input_size``

    def describe(self) -> str:
        """``mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5), bicubic resize to 249, center crop 224 (timm ...)``."""
        numbers = lambda values: "(" + ", ".join(f"{v:.4g}" for v in values) + ")"  # noqa: E731
        return (f"mean {numbers(self.mean)}, std {numbers(self.std)}, {self.interpolation} resize to "
                f"{self.resize_size}, center crop {self.input_size} ({self.source})")

    def to_dict(self) -> dict[str, Any]:
        """For ``config.json`` and ``summary.json``."""
        return dataclasses.asdict(self)


def _interpolation(value: Any) -> str:
    """A data config's interpolation as one of :data:`INTERPOLATIONS` (timm gives a string, torchvision an enum)."""
    name = str(getattr(value, "value", value)).lower()
    if name not in INTERPOLATIONS:
        raise ValueError(f"normalization: the model's data config asks for {name!r} interpolation; effrank "
                         f"resizes with {', '.join(INTERPOLATIONS)}: use normalization 'imagenet' or 'dataset'")
    return name


@functools.lru_cache(maxsize=16)
def model_data_config(model: str, image_size: int) -> tuple[str, dict[str, Any]]:
    """Where the model's preprocessing comes from (in words) and its data config (mean, std, interpolation,
    crop_pct), from the model's registry entry. Raises ``ValueError`` (``normalization: ...``) for a model that
    has none."""
    spec = model_spec(model)
    if spec.data_config is None:
        raise ValueError(f"normalization: {model} has no data config of its own (it has no pretrained weights); "
                         "use 'dataset' or 'imagenet'")
    return spec.data_config(model, image_size)


def preprocessing_for(config: StudyConfig, data: StatisticsSource | None = None) -> Preprocessing:
    """The preprocessing a config describes. The statistics of ``normalization='dataset'`` need ``data``; without
    it only the geometry (interpolation, crop) is meaningful and the statistics are ImageNet's placeholder."""
    channels = data.channels if data is not None else 3
    if config.normalization == "model":
        source, cfg = model_data_config(config.model, config.image_size)
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
        interpolation, crop_pct = _interpolation(cfg["interpolation"]), float(cfg["crop_pct"])
        resize = int(cfg["resize_size"]) if "resize_size" in cfg else math.floor(config.image_size / crop_pct)
    else:
        source, interpolation, crop_pct = config.normalization, DEFAULT_INTERPOLATION, DEFAULT_CROP_PCT
        resize = int(round(config.image_size / crop_pct))
        if config.normalization == "dataset" and data is not None:
            mean, std = data.channel_stats()
        else:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    if len(mean) != channels:  # grayscale data through statistics of RGB: the first channel's
        mean, std = mean[:channels], std[:channels]
    return Preprocessing(source, tuple(map(float, mean)), tuple(map(float, std)), interpolation, crop_pct,
                         config.image_size, resize)
