"""Nested any-rank students: truncation equals a rank-r student from the same factors, gradients stay in the
first r directions, bad ranks are refused."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from effrank_utils.lowrank.factorize import LowRankLinear, factorize
from effrank_utils.lowrank.nested import (
    NestedLowRankLinear,
    at_rank,
    full_rank_of,
    nested_layers,
    nested_student,
    truncated_student,
)

R = 16  # the nested student's largest rank (embed_dim of the teacher)


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=R, depth=2,
                             num_heads=2, mlp_ratio=2.0).eval()


@pytest.fixture()
def student(teacher) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nested_student(teacher, R).eval()
    # move away from the SVD init so that the test is not about the teacher's factors only
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch() -> torch.Tensor:
    return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def test_every_pair_is_nested(student):
    assert len(nested_layers(student)) == 2 * 4
    assert not any(type(m) is LowRankLinear for m in student.modules())
    assert full_rank_of(student) == R


@pytest.mark.parametrize("rank", [1, 3, 8, 15])
def test_truncation_equals_rank_r_student_from_same_factors(student, rank):
    plain = truncated_student(student, rank).eval()
    pairs = [m for m in plain.modules() if isinstance(m, LowRankLinear)]
    assert len(pairs) == 8 and all(type(m) is LowRankLinear and m.rank == rank for m in pairs)
    assert all(m.down.weight.shape[0] == rank and m.up.weight.shape[1] == rank for m in pairs)
    x = batch()
    with torch.no_grad():
        with at_rank(student, rank):
            nested_out = student(x)
        assert torch.allclose(nested_out, plain(x), atol=1e-6, rtol=1e-5)
        # and it is a different function at another rank
        assert not torch.allclose(student(x), plain(x), atol=1e-4)


def test_untrained_truncation_is_the_rank_r_svd_student(teacher):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nested_student(teacher, R).eval()
        reference = factorize(teacher, 4, init="svd").eval()
    x = batch()
    with torch.no_grad(), at_rank(model, 4):
        assert torch.allclose(model(x), reference(x), atol=1e-6, rtol=1e-5)


def test_full_rank_equals_untruncated_student(student):
    x = batch()
    with torch.no_grad():
        free = student(x)
        with at_rank(student, R):
            at_full = student(x)
        plain = truncated_student(student, R).eval()(x)
    assert torch.equal(free, at_full)
    assert torch.allclose(free, plain, atol=1e-6, rtol=1e-5)


def test_rank_is_restored_and_blocks_nest(student):
    with at_rank(student, 4):
        with at_rank(student, 2):
            assert {m.active_rank for m in nested_layers(student)} == {2}
        assert {m.active_rank for m in nested_layers(student)} == {4}
    assert {m.active_rank for m in nested_layers(student)} == {None}


def test_gradients_at_rank_r_touch_only_first_r_directions(student):
    rank = 5
    student.train()
    student.zero_grad(set_to_none=True)
    with at_rank(student, rank):
        student(batch()).square().sum().backward()
    for pair in nested_layers(student):
        down, up = pair.down.weight.grad, pair.up.weight.grad
        assert down.abs()[:rank].sum() > 0 and up.abs()[:, :rank].sum() > 0
        assert torch.count_nonzero(down[rank:]) == 0
        assert torch.count_nonzero(up[:, rank:]) == 0


def test_truncated_student_leaves_the_nested_one_alone(student):
    before = {k: v.clone() for k, v in student.state_dict().items()}
    rng = torch.get_rng_state()
    truncated_student(student, 3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert isinstance(nested_layers(student)[0], NestedLowRankLinear)


@pytest.mark.parametrize("rank", [0, R + 1, -2, 2.0, True])
def test_bad_rank_is_refused_with_one_line(student, rank):
    for call in (lambda: at_rank(student, rank).__enter__(), lambda: truncated_student(student, rank)):
        with pytest.raises(ValueError, match=r"^rank: ") as info:
            call()
        assert "\n" not in str(info.value) and f"1..{R}" in str(info.value)


def test_model_without_nested_pairs_is_refused(teacher):
    with pytest.raises(ValueError, match=r"^model: .*nested_student"):
        with at_rank(teacher, 2):
            pass


def test_bench_runs_on_smoke(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "nested.json"
    subprocess.run([sys.executable, "bench/nested.py", "--preset", "smoke", "--epochs", "2", "--seeds", "0,1",
                    "--rules", "sandwich,weighted", "--rule-epochs", "2", "--timing-rounds", "1",
                    "--run-dir", str(tmp_path / "run"), "--out", str(out)], cwd=root, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(root)})
    record = json.loads(out.read_text())
    rows = {row["name"]: row for row in record["summary"]["rows"]}
    assert {"independent@1", "independent@2", "sandwich@2", "weighted@2"} <= set(rows)
    assert rows["independent@2"]["estimate"]["intervals"]  # two seeds: bootstrap intervals
    snapshot = record["nested"]["sandwich"]["0"]["snapshots"]["2"]
    assert snapshot["at_rank_check"]["equal"]
    assert snapshot["student_epochs"] == 2 * 4  # largest, smallest and both middle ranks of 1, 2, 4, 8
