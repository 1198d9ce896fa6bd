"""Teacher models by name: a registry of architectures (small timm ViTs for CPU work, torchvision
``vit_b_32``), with any other name taken as a timm model; per-model facts are data in the registry."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..lowrank.factorize import max_rank, target_layers

if TYPE_CHECKING:
    from ..records.config import StudyConfig

log = logging.getLogger(__name__)


class WeightsNotAvailable(RuntimeError):
    """Pretrained weights were asked for but could not be fetched (typically: no internet)."""


def _offline_error(name: str, exc: Exception) -> WeightsNotAvailable:
    return WeightsNotAvailable(
        f"model: pretrained weights for {name!r} could not be loaded ({type(exc).__name__}: {exc}). "
        "They are downloaded on first use and need internet access (or a filled torch hub / Hugging Face "
        "cache). Run once online, or set pretrained=False.")


def small_vit(*, num_classes: int, in_chans: int, image_size: int, patch_size: int, embed_dim: int, depth: int,
              num_heads: int, mlp_ratio: float) -> nn.Module:
    """A small timm ``VisionTransformer`` (class token, no dropout) for CPU-sized studies."""
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_chans,
                             num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             mlp_ratio=mlp_ratio)


def torchvision_vit_b_32(*, num_classes: int, pretrained: bool) -> nn.Module:
    """torchvision ``vit_b_32`` (``IMAGENET1K_V1`` weights when ``pretrained``) with a fresh head of
    ``num_classes`` outputs."""
    from torchvision.models import ViT_B_32_Weights, vit_b_32
    if pretrained:
        try:
            model = vit_b_32(weights=ViT_B_32_Weights.IMAGENET1K_V1)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise _offline_error("vit_b_32", exc) from None
    else:
        model = vit_b_32(weights=None)
    model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)
    return model


HF_HUB_PREFIX = "hf-hub:"  # timm reads such a model's config (and weights) from the Hugging Face Hub


def _hub_unreachable(name: str, exc: Exception) -> ValueError:
    reason = " ".join(str(exc).split())[:160]
    return ValueError(f"model: {name!r} is read from the Hugging Face Hub (its config, and its weights when "
                      f"pretrained), which could not be reached ({type(exc).__name__}: {reason}); run once online "
                      "to fill the Hugging Face cache (then HF_HUB_OFFLINE=1 works), or use a timm model name")


def _not_a_vit(name: str, exc: Exception) -> ValueError:
    return ValueError(f"model: the timm model {name!r} takes no input size ({exc}); effrank factorizes Vision "
                      "Transformers: use a ViT-style timm model (timm.list_models('vit_*'), 'deit_*', ...)")


def timm_model(name: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool) -> nn.Module:
    """Any timm model by name (``hf-hub:`` names too), with a ``num_classes`` head, ``in_chans`` inputs and
    ``image_size`` inputs."""
    import timm
    _check_timm_name(name)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                                 img_size=image_size)
    except TypeError as exc:  # a convolutional network: no img_size argument
        raise _not_a_vit(name, exc) from None
    except (OSError, RuntimeError) as exc:
        if name.startswith(HF_HUB_PREFIX) and isinstance(exc, OSError):
            raise _hub_unreachable(name, exc) from None
        if pretrained:
            raise _offline_error(name, exc) from None
        raise


def timm_data_config(name: str, image_size: int) -> dict[str, Any]:
    """timm's data config of model ``name`` at ``image_size`` (``resolve_model_data_config`` of the model built on
    the meta device: no weights are read)."""
    import timm
    from timm.data import resolve_model_data_config
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, img_size=image_size)
    except OSError as exc:  # an hf-hub: name offline
        raise _hub_unreachable(name, exc) from None
    except TypeError as exc:
        raise _not_a_vit(name, exc) from None
    return resolve_model_data_config(model)


def torchvision_data_config(weights: Any) -> dict[str, Any]:
    """The data config of torchvision ``weights``: their ``transforms()`` (resize, crop, mean, std, interpolation)."""
    transforms = weights.transforms()
    return {"mean": tuple(transforms.mean), "std": tuple(transforms.std), "interpolation": transforms.interpolation,
            "crop_pct": transforms.crop_size[0] / transforms.resize_size[0], "resize_size": transforms.resize_size[0]}


def _vit_b_32_data_config() -> dict[str, Any]:
    from torchvision.models import ViT_B_32_Weights
    return torchvision_data_config(ViT_B_32_Weights.IMAGENET1K_V1)


def _check_timm_name(name: str) -> None:
    import timm
    if not name.startswith(HF_HUB_PREFIX) and not timm.is_model(name):
        raise ValueError(f"model: unknown model {name!r}; use {', '.join(map(repr, MODELS))} or a timm model name "
                         "(timm.list_models()) or an hf-hub: name")


def _check_small_vit(config: "StudyConfig") -> None:
    if config.image_size % config.patch_size:
        raise ValueError(f"patch_size: {config.patch_size} does not divide image_size {config.image_size}")
    if config.embed_dim % config.num_heads:
        raise ValueError(f"num_heads: {config.num_heads} does not divide embed_dim {config.embed_dim}")


@dataclass(frozen=True)
class ModelSpec:
    """An architecture by name: how to build it from a config, and its fixed facts."""

    build: Callable[["StudyConfig", int, int], nn.Module]  # (config, num_classes, in_chans) -> model
    input_size: int | None = None     # the only input size it takes (None: any, from image_size)
    channels: int | None = None       # the only number of input channels it takes (None: any)
    check: Callable[["StudyConfig"], None] | None = None  # field checks specific to it
    #: ``(name, image_size) -> (source in words, data config)`` for normalization="model"; None: it has none
    data_config: Callable[[str, int], tuple[str, dict[str, Any]]] | None = None


MODELS: dict[str, ModelSpec] = {
    "small_vit": ModelSpec(
        lambda c, classes, chans: small_vit(num_classes=classes, in_chans=chans, image_size=c.image_size,
                                            patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth,
                                            num_heads=c.num_heads, mlp_ratio=c.mlp_ratio),
        check=_check_small_vit),
    "vit_b_32": ModelSpec(lambda c, classes, chans: torchvision_vit_b_32(num_classes=classes,
                                                                          pretrained=c.pretrained),
                          input_size=224, channels=3,
                          data_config=lambda name, size: ("torchvision ViT_B_32_Weights.IMAGENET1K_V1.transforms()",
                                                          _vit_b_32_data_config())),
}
TIMM = ModelSpec(lambda c, classes, chans: timm_model(c.model, num_classes=classes, in_chans=chans,
                                                      image_size=c.image_size, pretrained=c.pretrained),
                 data_config=lambda name, size: (f"timm resolve_model_data_config({name})",
                                                 timm_data_config(name, size)))


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name`` (any other name is a timm model)."""
    return MODELS.get(name, TIMM)


def check_model(config: "StudyConfig", channels: int) -> None:
    """Refuse a model the config cannot build: an unknown name, a wrong input size or channel count."""
    spec = model_spec(config.model)
    if spec is TIMM:
        _check_timm_name(config.model)
    if spec.check is not None:
        spec.check(config)
    if spec.input_size is not None and config.image_size != spec.input_size:
        raise ValueError(f"image_size: {config.model} takes {spec.input_size}-pixel input, got {config.image_size}")
    if spec.channels is not None and channels != spec.channels:
        raise ValueError(f"dataset: {config.model} takes {spec.channels}-channel images, {config.dataset} has "
                         f"{channels}")


def build_model(config: "StudyConfig", num_classes: int, in_chans: int) -> nn.Module:
    """The teacher architecture a config names, with a head of ``num_classes`` outputs."""
    return model_spec(config.model).build(config, num_classes, in_chans)


def check_teacher_checkpoint(config: "StudyConfig", num_classes: int | None, in_chans: int) -> None:
    """Refuse a ``teacher_checkpoint`` that cannot be read or does not fit the config's architecture (checked
    against the model built on the meta device; the head only when ``num_classes`` is known)."""
    from .checkpoints import check_fits, read_checkpoint
    state = read_checkpoint(config.teacher_checkpoint)
    with torch.device("meta"):
        model = build_model(dataclasses.replace(config, pretrained=False), num_classes or 2, in_chans)
    check_fits(model, state, f"the {config.model} model", check_head=num_classes is not None)


def rank_limit(config: "StudyConfig", in_chans: int) -> int:
    """The largest rank every targeted layer of the config's architecture admits, from the architecture alone
    (built on the meta device: no weights, no memory)."""
    with torch.device("meta"):
        model = build_model(dataclasses.replace(config, pretrained=False), 2, in_chans)
    layers = target_layers(model, config.targets)
    if not layers:
        raise ValueError(f"targets: no {list(config.targets)} layers in the {config.model} model")
    return max_rank(layers)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
