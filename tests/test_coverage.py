"""Factorization coverage: attention variants (ConViT GPSA, CaiT/XCiT class attention) are factorized, what stays
dense is reported per block, gaps warn, hierarchical models are refused; identical inputs give zero loss."""

import json
import warnings

import pytest
import timm
import torch
import torchvision
from timm.layers import ConvMlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from effrank_utils.lowrank.factorize import (
    LowRankLinear,
    compression_table,
    coverage,
    factorize,
    max_rank,
    parameter_report,
    target_layers,
)
from effrank_utils.training.distill import feature_taps, geometric_loss, mse_cosine


def timm_model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, img_size=32, **kwargs).eval()


def factorize_recording(*args, **kwargs) -> tuple[nn.Module, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = factorize(*args, **kwargs)
    return student, [str(w.message) for w in caught]


def test_convit_tiny_gpsa_blocks_are_factorized():
    with torch.device("meta"):  # the shapes only: no weights, no memory
        convit = timm.create_model("convit_tiny", pretrained=False, img_size=32)
    # 10 GPSA blocks (qk, v, proj, fc1, fc2) + 2 MHSA blocks (qkv, proj, fc1, fc2); before: 38 and 2
    assert len(target_layers(convit)) == 10 * 5 + 2 * 4
    assert len(target_layers(convit, ["qkv"])) == 10 * 2 + 2
    first = coverage(convit)[0]
    assert first["factorized"] == ["blocks.0.attn.qk", "blocks.0.attn.v", "blocks.0.attn.proj",
                                   "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert first["dense"] == ["blocks.0.attn.pos_proj"] and first["missing"] == []


# model, the class-attention / GPSA block whose q, k, v used to stay dense, its maps, linears that stay dense
VARIANTS = [
    ("convit_tiny", {"depth": 3, "local_up_to_layer": 2}, "blocks.0", ("qk", "v"), {"pos_proj"}),
    ("cait_xxs24_224", {"depth": 2}, "blocks_token_only.0", ("q", "k", "v"), {"proj_l", "proj_w"}),
    ("xcit_nano_12_p16_224", {"depth": 2}, "cls_attn_blocks.0", ("q", "k", "v"), set()),
]


@pytest.mark.parametrize("name, kwargs, block, maps, dense", VARIANTS)
def test_attention_variants_are_fully_factorized(name, kwargs, block, maps, dense):
    teacher = timm_model(name, **kwargs)
    student, messages = factorize_recording(teacher, 4)
    assert not any(m.startswith("coverage") for m in messages)
    attn = student.get_submodule(f"{block}.attn")
    assert all(isinstance(getattr(attn, part), LowRankLinear) for part in maps)
    report = coverage(teacher)
    assert all(entry["missing"] == [] for entry in report)
    assert {path.rpartition(".")[2] for entry in report for path in entry["dense"]} == dense
    assert coverage(student) == report  # the student's pairs count as factorized, at the same paths
    json.dumps(report)
    with torch.no_grad():
        assert student(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("name, kwargs", [(v[0], v[1]) for v in VARIANTS if v[0] != "cait_xxs24_224"])
def test_attention_variants_full_rank_student_matches_teacher(name, kwargs):
    teacher = timm_model(name, **kwargs)  # (CaiT's layer scale 1e-5 makes its logits blind to its blocks)
    student, _ = factorize_recording(teacher, max_rank(target_layers(teacher)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (student.eval()(x) - teacher(x)).abs().max() < 1e-4


def test_block_without_factorizable_map_warns_and_is_reported():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                            num_heads=4)
    vit.blocks[1].mlp = ConvMlp(32, 128)  # conv-style fc1/fc2: not plain linears
    with pytest.warns(UserWarning, match=r"coverage: 1 of 2 blocks .* blocks\.1 \(fc1, fc2\)"):
        factorize(vit, 4)
    second = coverage(vit)[1]
    assert second["missing"] == ["fc1", "fc2"]
    assert second["dense"] == ["blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    assert second["factorized"] == ["blocks.1.attn.qkv", "blocks.1.attn.proj"]


def test_unselected_targets_are_reported_dense_without_warning():
    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                              hidden_dim=16, mlp_dim=32)
    student, messages = factorize_recording(tv, 4, targets="mlp")
    assert not any(m.startswith("coverage") for m in messages)
    report = coverage(tv, "mlp")
    assert report[0] == {
        "block": "encoder.layers.encoder_layer_0",
        "factorized": ["encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_0.mlp.3"],
        "dense": [f"encoder.layers.encoder_layer_0.self_attention.{p}" for p in
                  ("q_proj", "k_proj", "v_proj", "out_proj")],
        "missing": [],
    }
    assert coverage(student, "mlp") == report


def test_compression_table_counts_factorized_and_dense_layers():
    convit = timm_model("convit_tiny", depth=3, local_up_to_layer=2)
    rows = compression_table(convit, [4, 8])
    assert [(r["factorized_layers"], r["dense_layers"]) for r in rows] == [(2 * 5 + 4, 2)] * 2
    assert rows[0]["student_params"] == parameter_report(convit, 4)["student_params"]


def test_hierarchical_swin_is_refused():
    with torch.device("meta"):
        swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2)
    message = r"model: SwinTransformer is hierarchical: its qkv layers differ .* \(96, 192, 384, 768\)"
    for refuse in (lambda: factorize(swin, 8), lambda: target_layers(swin), lambda: parameter_report(swin, 8)):
        with pytest.raises(ValueError, match=message):
            refuse()
    assert len(coverage(swin)) == 12  # what it has can still be reported


def test_mse_cosine_of_identical_inputs_is_zero():
    x = torch.randn(4, 3, 10)
    x[0, 1] = 0
    x[2] = 0
    x.requires_grad_(True)
    loss = mse_cosine(x, x.detach())
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # a zero vector against a non-zero one is still at cosine distance 1
    assert float(mse_cosine(torch.zeros(1, 2), torch.tensor([[0.0, 2.0]]))) == pytest.approx(2.0 + 1.0)


def test_geometric_loss_of_a_full_rank_copy_of_a_fresh_torchvision_teacher_is_zero():
    torch.manual_seed(0)
    teacher = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                   hidden_dim=16, mlp_dim=32).eval()  # zero-initialized head
    student, _ = factorize_recording(teacher, 16)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), feature_taps(teacher) as teacher_features, feature_taps(student.eval()) as features:
        loss = geometric_loss(student(x), teacher(x), features, teacher_features)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)  # was 0.2: zero logits counted as cosine 0
