"""Factorization: exactness at full rank, Eckart-Young, parameter accounting, teacher untouched, bad input."""

import copy
import math
import warnings

import pytest
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from effrank_utils.lowrank.factorize import (
    LowRankLinear,
    SplitMultiheadAttention,
    break_even_rank,
    count_parameters,
    factorize,
    from_neighbour,
    low_rank_parameters,
    parameter_report,
    target_layers,
)


@pytest.fixture(scope="module")
def small_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                             num_heads=4).eval()


@pytest.fixture(scope="module")
def tv_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vit_b_32(weights=None, num_classes=10).eval()


def quiet_factorize(*args, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factorize(*args, **kwargs)


def test_full_rank_svd_student_matches_timm_teacher(small_vit):
    student = quiet_factorize(small_vit, 32).eval()
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert (student(x) - small_vit(x)).abs().max() < 1e-4
    assert sum(isinstance(m, LowRankLinear) for m in student.modules()) == 2 * 4


def test_full_rank_svd_student_matches_torchvision_teacher(tv_vit):
    student = quiet_factorize(tv_vit, 768).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (student(x) - tv_vit(x)).abs().max() < 1e-4
    block = student.encoder.layers[0]
    assert isinstance(block.self_attention, SplitMultiheadAttention)
    # q, k, v are three separate low-rank maps, plus out_proj and both MLP linears
    assert [isinstance(getattr(block.self_attention, n), LowRankLinear)
            for n in ("q_proj", "k_proj", "v_proj", "out_proj")] == [True] * 4
    assert isinstance(block.mlp[0], LowRankLinear) and isinstance(block.mlp[3], LowRankLinear)


def test_torchvision_student_trains_and_keeps_embeddings(tv_vit):
    student = factorize(tv_vit, 8)
    for name in ("conv_proj.weight", "class_token", "encoder.pos_embedding", "heads.head.weight"):
        assert torch.equal(student.state_dict()[name], tv_vit.state_dict()[name])
    out = student(torch.randn(1, 3, 224, 224))
    out.sum().backward()
    assert out.shape == (1, 10)


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_svd_factor_error_is_eckart_young(small_vit, rank):
    student = factorize(small_vit, rank, targets="fc1")
    dense = small_vit.blocks[0].mlp.fc1.weight.detach().double()
    pair = student.blocks[0].mlp.fc1
    approx = (pair.up.weight.double() @ pair.down.weight.double()).detach()
    sigma = torch.linalg.svdvals(dense)
    expected = math.sqrt(float((sigma[rank:] ** 2).sum()))
    assert float(torch.linalg.norm(dense - approx)) == pytest.approx(expected, rel=1e-4)


def test_parameter_counts_match_formula(small_vit):
    rank = 4
    student = factorize(small_vit, rank)
    report = parameter_report(small_vit, rank)
    dim, hidden, depth = 32, 128, 2
    saved_per_block = (
        (dim * 3 * dim - rank * (dim + 3 * dim))
        + (dim * dim - rank * 2 * dim)
        + (dim * hidden - rank * (dim + hidden)) * 2
    )
    assert report["student_params"] == count_parameters(student)
    assert count_parameters(small_vit) - count_parameters(student) == depth * saved_per_block
    assert report["compression"] == pytest.approx(count_parameters(small_vit) / count_parameters(student))
    assert low_rank_parameters(32, 96, 4, bias=True) == 4 * 128 + 96
    assert break_even_rank(32, 96) == pytest.approx(24.0)
    layer = next(r for r in report["layers"] if r["target"] == "qkv")
    assert layer["break_even_rank"] == pytest.approx(24.0)


def test_torchvision_parameter_report_counts_split_qkv(tv_vit):
    report = parameter_report(tv_vit, 16, targets="qkv")
    assert len(report["layers"]) == 12 * 3
    assert report["student_params"] == count_parameters(factorize(tv_vit, 16, targets="qkv"))


def test_teacher_is_unchanged(small_vit):
    before = copy.deepcopy(small_vit.state_dict())
    for init in ("svd", "random", "paper"):
        factorize(small_vit, 2, init=init, seed=1)
    after = small_vit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, LowRankLinear) for m in small_vit.modules())


def test_targets_select_layers(small_vit):
    student = factorize(small_vit, 4, targets=["mlp"])
    assert isinstance(student.blocks[0].mlp.fc1, LowRankLinear)
    assert isinstance(student.blocks[0].attn.qkv, nn.Linear)
    assert {layer.target for layer in target_layers(small_vit, "attn")} == {"qkv", "proj"}


def test_inits_copy_what_they_should(small_vit):
    rnd = factorize(small_vit, 4, init="random", seed=0)
    paper = factorize(small_vit, 4, init="paper", seed=0)
    t = small_vit.state_dict()
    assert torch.equal(rnd.state_dict()["blocks.0.norm1.weight"], t["blocks.0.norm1.weight"])
    assert torch.equal(rnd.state_dict()["head.weight"], t["head.weight"])
    # paper: embeddings copied, blocks and head fresh
    assert torch.equal(paper.state_dict()["pos_embed"], t["pos_embed"])
    assert torch.equal(paper.state_dict()["patch_embed.proj.weight"], t["patch_embed.proj.weight"])
    assert not torch.equal(paper.state_dict()["head.weight"], t["head.weight"])
    assert not torch.equal(paper.state_dict()["blocks.0.attn.qkv.up.bias"], t["blocks.0.attn.qkv.bias"])
    # seeded random parts are reproducible
    again = factorize(small_vit, 4, init="random", seed=0)
    assert torch.equal(again.state_dict()["blocks.0.mlp.fc1.down.weight"],
                       rnd.state_dict()["blocks.0.mlp.fc1.down.weight"])


def test_break_even_rank_warns(small_vit):
    with pytest.warns(UserWarning, match="break-even"):
        factorize(small_vit, 20, targets="proj")


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 0}, "rank"), ({"rank": -2}, "rank"), ({"rank": 2.5}, "rank"), ({"rank": True}, "rank"),
    ({"rank": 33}, r"rank: 33 exceeds .* 1\.\.32"),
    ({"rank": 2, "init": "xavier"}, "init: unknown .*svd, random, paper"),
    ({"rank": 2, "targets": "fc3"}, "targets: unknown target 'fc3'"),
    ({"rank": 2, "targets": []}, "targets: empty"),
])
def test_bad_input_is_refused(small_vit, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factorize(small_vit, **kwargs)


def test_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match="model: no targeted linear layers"):
        factorize(nn.Sequential(nn.Linear(4, 4)), 2)


def test_student_of_a_frozen_teacher_is_trainable(small_vit):
    frozen = copy.deepcopy(small_vit).requires_grad_(False)
    student = factorize(frozen, 4)
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in frozen.parameters())


def small_tv_vit(dtype: torch.dtype = torch.float32) -> nn.Module:
    """A small torchvision ViT (width 16) with a random, not zero, head so that logits tell students apart."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32)
    nn.init.normal_(model.heads.head.weight)
    return model.to(dtype).eval()


def test_float64_timm_full_rank_student_is_exact(small_vit):
    teacher = copy.deepcopy(small_vit).double()
    student = quiet_factorize(teacher, 32).eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().max() < 1e-10  # the SVD is computed in float64


def test_float64_torchvision_full_rank_student_is_exact():
    teacher = small_tv_vit(torch.float64)
    student = quiet_factorize(teacher, 16).eval()
    assert {p.dtype for p in student.parameters()} == {torch.float64}
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().max() < 1e-10


def test_bf16_torchvision_teacher_gives_a_bf16_student():
    teacher = small_tv_vit(torch.bfloat16)
    student = factorize(teacher, 4)
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = student(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_teacher_gives_a_cuda_student():
    teacher = small_tv_vit().cuda()
    student = quiet_factorize(teacher, 16).eval()
    assert {p.device.type for p in student.parameters()} == {"cuda"}
    x = torch.randn(3, 3, 32, 32, device="cuda")
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().max() < 1e-4


def _trained_like(student: nn.Module) -> nn.Module:
    """The student with every parameter moved off its init (as training would), so copies can be told apart."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return student


def test_warm_start_from_the_neighbour_truncates_each_trained_product(small_vit):
    neighbour = _trained_like(quiet_factorize(small_vit, 6))
    before = copy.deepcopy(neighbour.state_dict())
    warm = from_neighbour(neighbour, 3)
    for name, pair in neighbour.named_modules():
        if isinstance(pair, LowRankLinear):
            new = warm.get_submodule(name)
            product = (pair.up.weight @ pair.down.weight).detach().double()
            sigma = torch.linalg.svdvals(product)
            error = torch.linalg.matrix_norm(product - new.weight.detach().double())
            assert new.rank == 3 and math.isclose(error.item(), sigma[3:].square().sum().sqrt().item(), rel_tol=1e-4)
            assert torch.equal(new.up.bias, pair.up.bias)  # the trained bias, not the teacher's
    kept = {k: v for k, v in warm.state_dict().items() if ".down." not in k and ".up.weight" not in k}
    assert kept and all(torch.equal(v, neighbour.state_dict()[k]) for k, v in kept.items())  # norms, head, ...
    assert all(torch.equal(v, neighbour.state_dict()[k]) for k, v in before.items())  # the neighbour untouched
    assert all(p.requires_grad for p in warm.parameters())


def test_warm_start_at_the_neighbours_own_rank_computes_what_it_computes(small_vit):
    neighbour = _trained_like(quiet_factorize(small_vit, 4)).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert (from_neighbour(neighbour, 4)(x) - neighbour(x)).abs().max() < 1e-4


@pytest.mark.parametrize("rank, match", [(7, r"rank: must be an integer in 1\.\.6"), (0, "rank:"), (2.0, "rank:")])
def test_warm_start_refuses_ranks_the_neighbour_cannot_give(small_vit, rank, match):
    with pytest.raises(ValueError, match=match):
        from_neighbour(quiet_factorize(small_vit, 6), rank)


def test_warm_start_needs_a_student(small_vit):
    with pytest.raises(ValueError, match="student: VisionTransformer has no low-rank pairs"):
        from_neighbour(small_vit, 2)
