"""Teacher models by name: small timm ViTs for CPU work, torchvision ``vit_b_32`` and any timm model."""

from __future__ import annotations

import logging

import torch
from torch import nn

from .config import SMALL_VIT, TORCHVISION_VIT, StudyConfig

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
            raise _offline_error(TORCHVISION_VIT, exc) from None
    else:
        model = vit_b_32(weights=None)
    model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)
    return model


def timm_model(name: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool) -> nn.Module:
    """Any timm model by name, with a ``num_classes`` head, ``in_chans`` inputs and ``image_size`` inputs."""
    import timm
    if not timm.is_model(name):
        raise ValueError(f"model: unknown model {name!r}; use {SMALL_VIT!r}, {TORCHVISION_VIT!r} or a timm model "
                         "name (timm.list_models())")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                                 img_size=image_size)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise _offline_error(name, exc) from None
        raise


def build_model(config: StudyConfig, num_classes: int, in_chans: int) -> nn.Module:
    """The teacher architecture a config names, with a head of ``num_classes`` outputs."""
    if config.model == SMALL_VIT:
        return small_vit(num_classes=num_classes, in_chans=in_chans, image_size=config.image_size,
                         patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
                         num_heads=config.num_heads, mlp_ratio=config.mlp_ratio)
    if config.model == TORCHVISION_VIT:
        if in_chans != 3:
            raise ValueError(f"dataset: vit_b_32 takes 3-channel images, {config.dataset} has {in_chans}")
        return torchvision_vit_b_32(num_classes=num_classes, pretrained=config.pretrained)
    return timm_model(config.model, num_classes=num_classes, in_chans=in_chans, image_size=config.image_size,
                      pretrained=config.pretrained)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
