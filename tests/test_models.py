"""Teachers by name, heads sized to the dataset, clear errors for unknown names and offline weights."""

import dataclasses
import urllib.error

import pytest
import torch

from effrank_utils.run.entry import load_preset
from effrank_utils.training import models


def test_small_vit_head_matches_classes():
    cfg = load_preset("smoke")
    model = models.build_model(cfg, num_classes=7, in_chans=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_timm_model_by_name():
    cfg = load_preset("smoke", model="vit_tiny_patch16_224", image_size=32, ranks=[2, 4])
    model = models.build_model(cfg, num_classes=5, in_chans=3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_torchvision_vit_b_32_head():
    cfg = dataclasses.replace(load_preset("smoke"), model="vit_b_32", image_size=224)  # digits: 1 channel
    model = models.build_model(cfg, num_classes=100, in_chans=3)
    assert model.heads.head.out_features == 100


def test_model_facts_are_checked_before_anything_is_built():
    with pytest.raises(ValueError, match="dataset: vit_b_32 takes 3-channel images, digits has 1"):
        load_preset("smoke", model="vit_b_32", image_size=224)
    with pytest.raises(ValueError, match="image_size: vit_b_32 takes 224-pixel input, got 32"):
        load_preset("smoke", model="vit_b_32", image_size=32)


def test_unknown_model_name_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match="model: unknown model 'vit_imaginary_patch3'"):
        load_preset("smoke", model="vit_imaginary_patch3")


def test_pretrained_offline_gives_a_clear_error(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    import torchvision.models._api as weights_api

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", no_network)
    with pytest.raises(models.WeightsNotAvailable, match="pretrained weights for 'vit_b_32'.*internet"):
        models.torchvision_vit_b_32(num_classes=100, pretrained=True)


def test_timm_pretrained_offline_gives_a_clear_error(monkeypatch):
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise OSError("We couldn't connect to the Hub")

    monkeypatch.setattr(builder, "load_pretrained", no_network)
    with pytest.raises(models.WeightsNotAvailable, match="vit_tiny_patch16_224"):
        models.timm_model("vit_tiny_patch16_224", num_classes=10, in_chans=3, image_size=224, pretrained=True)


def test_hf_hub_names_are_accepted_and_fail_offline_in_one_line(monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # what a machine without internet sees, without waiting
    models._check_timm_name("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k")  # accepted as a name
    with pytest.raises(ValueError, match=r"^model: 'hf-hub:timm/vit_tiny_patch16_224\.augreg_in21k' is read from "
                                         r"the Hugging Face Hub .*could not be reached") as caught:
        load_preset("smoke", model="hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", image_size=32)
    assert "\n" not in str(caught.value)
