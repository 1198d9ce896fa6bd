"""normalization="model": a model's own statistics, interpolation and crop, from timm's data config or the
torchvision weights' transforms; the default with pretrained weights; recorded where the results are."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config

from effrank_utils.records.config import config_from_dict
from effrank_utils.training.data import ImageData, pipeline_for
from effrank_utils.training.preprocessing import IMAGENET_MEAN, IMAGENET_STD, preprocessing_for


def _timm_config(name):
    return resolve_model_data_config(timm.create_model(name, pretrained=False))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_model_normalization_is_timms_data_config(name):
    config = config_from_dict({"model": name, "image_size": 224, "normalization": "model"})
    expected = _timm_config(name)
    got = preprocessing_for(config)
    assert got.mean == pytest.approx(expected["mean"]) and got.std == pytest.approx(expected["std"])
    assert got.interpolation == expected["interpolation"] and got.crop_pct == pytest.approx(expected["crop_pct"])
    assert got.resize_size == math.floor(224 / expected["crop_pct"])  # as timm's transforms_factory


def test_the_two_timm_models_differ_as_their_weights_do():
    augreg = preprocessing_for(config_from_dict({"model": "vit_tiny_patch16_224", "normalization": "model",
                                                 "image_size": 224}))
    deit = preprocessing_for(config_from_dict({"model": "deit_tiny_patch16_224", "normalization": "model",
                                               "image_size": 224}))
    assert augreg.mean == (0.5, 0.5, 0.5) and deit.mean == pytest.approx(IMAGENET_MEAN)
    assert deit.std == pytest.approx(IMAGENET_STD)


def test_torchvision_vit_b_32_uses_its_weights_transforms():
    from torchvision.models import ViT_B_32_Weights
    transforms = ViT_B_32_Weights.IMAGENET1K_V1.transforms()
    got = preprocessing_for(config_from_dict({"model": "vit_b_32", "image_size": 224, "normalization": "model"}))
    assert got.mean == pytest.approx(tuple(transforms.mean)) and got.std == pytest.approx(tuple(transforms.std))
    assert got.interpolation == "bilinear" and got.resize_size == transforms.resize_size[0] == 256


def test_pretrained_weights_get_their_own_preprocessing_by_default():
    config = config_from_dict({"model": "vit_tiny_patch16_224", "image_size": 224, "pretrained": True})
    assert config.normalization == "model"
    assert config_from_dict({"model": "vit_tiny_patch16_224", "image_size": 224, "pretrained": True,
                             "normalization": "imagenet"}).normalization == "imagenet"  # asked for: kept
    with pytest.raises(ValueError, match="^normalization: pretrained weights expect the statistics"):
        config_from_dict({"model": "vit_tiny_patch16_224", "pretrained": True, "normalization": "dataset"})


def test_the_pipeline_resizes_with_the_models_interpolation_and_crop():
    config = config_from_dict({"model": "vit_tiny_patch16_224", "image_size": 224, "normalization": "model"})
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    data = ImageData("toy", images, torch.arange(2), images, torch.arange(2), 2)
    x = pipeline_for(config, data, 2).prepare(images)
    expected = F.interpolate(images.float() / 255, size=(248, 248), mode="bicubic", antialias=True,
                             align_corners=False)[..., 12:236, 12:236]
    assert torch.allclose(x, (expected - 0.5) / 0.5, atol=1e-6)


def test_a_timm_model_that_is_no_vit_is_refused_in_one_line():
    with pytest.raises(ValueError, match="^model: the timm model 'resnet18' takes no input size"):
        preprocessing_for(config_from_dict({"model": "resnet18", "image_size": 224, "normalization": "model"}))


def test_dataset_and_imagenet_keep_the_imagenet_evaluation_geometry():
    for normalization in ("dataset", "imagenet"):
        got = preprocessing_for(config_from_dict({"normalization": normalization, "image_size": 224,
                                                  "patch_size": 16}))
        assert (got.interpolation, got.crop_pct, got.resize_size) == ("bilinear", 0.875, 256)
