"""Nested any-rank students: one rank-``R`` student whose every low-rank pair can run at any rank ``r <= R``.

A nested pair is a :class:`~effrank_utils.lowrank.factorize.LowRankLinear` with an *active rank*: at rank ``r``
it computes ``up.weight[:, :r] @ down.weight[:r]`` (the first ``r`` factor directions) plus the bias. Built by
:func:`nested_student` from a teacher with the SVD init, the directions start ordered by singular value, so that
truncating to the first ``r`` is the best rank-``r`` approximation of each teacher map (Eckart-Young) -- the very
init of an independent rank-``r`` SVD student. :func:`at_rank` runs a model at one rank; :func:`truncated_student`
builds the plain rank-``r`` student (real ``LowRankLinear`` pairs of rank ``r``) from the same factors, which
computes exactly what the nested student computes at rank ``r``.

Whether training one such student (several ranks per step, the sandwich rule of slimmable networks) measures
the accuracy-vs-rank curve that independent students measure is an experiment (``bench/nested.py``,
``docs/nested.md``); this module only provides the mechanism.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .factorize import LowRankLinear, factorize

__all__ = ["NestedLowRankLinear", "nested_student", "nested_layers", "full_rank_of", "check_rank", "at_rank",
           "truncated_student"]


class NestedLowRankLinear(LowRankLinear):
    """A rank-``rank`` pair that runs at ``active_rank`` (``None``: all ``rank`` directions).

    Parameters
    ----------
    in_features, out_features, rank, bias
        As :class:`~effrank_utils.lowrank.factorize.LowRankLinear`; the parameters (``down``, ``up``) and the
        state dict are the same, so a nested pair loads a plain pair's weights and back.

    Notes
    -----
    At active rank ``r`` the forward pass uses the first ``r`` rows of ``down.weight`` and the first ``r``
    columns of ``up.weight`` (views, so gradients reach only those directions; the bias is shared by all ranks).
    Set the rank with :func:`at_rank` rather than by hand.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, rank, bias)
        self.active_rank: int | None = None

    @classmethod
    def from_pair(cls, pair: LowRankLinear) -> "NestedLowRankLinear":
        """A nested pair holding ``pair``'s factors (the same parameter tensors, not copies)."""
        nested = cls.__new__(cls)
        nn.Module.__init__(nested)
        nested.in_features, nested.out_features, nested.rank = pair.in_features, pair.out_features, pair.rank
        nested.down, nested.up = pair.down, pair.up
        nested.active_rank = None
        return nested

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.active_rank
        if r is None or r == self.rank:
            return self.up(self.down(x))
        return F.linear(F.linear(x, self.down.weight[:r]), self.up.weight[:, :r], self.up.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", active_rank={self.active_rank if self.active_rank is not None else self.rank}"


def _replace(root: nn.Module, wanted: type, make) -> int:
    """Replace every sub-module of type ``wanted`` (exactly) by ``make(module)``; returns how many."""
    count = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is wanted:
                setattr(parent, name, make(child))
                count += 1
    return count


def nested_student(teacher: nn.Module, rank: int, *, targets: str | Iterable[str] = "all",
                   seed: int | None = None) -> nn.Module:
    """A rank-``rank`` SVD student of ``teacher`` whose pairs are :class:`NestedLowRankLinear`.

    Parameters
    ----------
    teacher
        The dense model (timm or torchvision ViT, as :func:`~effrank_utils.lowrank.factorize.factorize`
        understands); not modified.
    rank
        The largest rank ``R`` the student can run at (validated as ``factorize`` does).
    targets, seed
        As :func:`~effrank_utils.lowrank.factorize.factorize`.

    Notes
    -----
    The init is always ``svd``: only it orders the directions by singular value, which is what makes the first
    ``r`` directions a sensible rank-``r`` model. At any ``r`` the untrained student equals the rank-``r`` SVD
    student ``factorize(teacher, r)``.
    """
    student = factorize(teacher, rank, init="svd", targets=targets, seed=seed)
    _replace(student, LowRankLinear, NestedLowRankLinear.from_pair)
    return student


def nested_layers(model: nn.Module) -> list[NestedLowRankLinear]:
    """The model's nested pairs, in module order."""
    return [m for m in model.modules() if isinstance(m, NestedLowRankLinear)]


def full_rank_of(model: nn.Module) -> int:
    """The largest rank every nested pair of ``model`` can run at (the smallest ``rank`` among them).

    Raises ``ValueError`` when the model has no nested pair.
    """
    layers = nested_layers(model)
    if not layers:
        raise ValueError(f"model: {type(model).__name__} has no NestedLowRankLinear pairs; build it with "
                         "nested_student()")
    return min(layer.rank for layer in layers)


def check_rank(model: nn.Module, rank: object) -> int:
    """``rank`` if it is an integer in ``1..R`` (``R``: :func:`full_rank_of`), else a one-line ``ValueError``."""
    limit = full_rank_of(model)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"rank: must be an integer in 1..{limit} (the nested student's largest rank), got {rank!r}")
    return rank


@contextlib.contextmanager
def at_rank(model: nn.Module, rank: int) -> Iterator[nn.Module]:
    """Run every nested pair of ``model`` at ``rank`` inside the block; yields the model.

    Parameters
    ----------
    model
        A model with :class:`NestedLowRankLinear` pairs (from :func:`nested_student`).
    rank
        The active rank, an integer in ``1..R``; anything else is refused (``ValueError``, naming ``rank``).

    Notes
    -----
    The previous active ranks are restored on exit, so blocks nest. The model is changed in place: do not run
    the same model at two ranks from two threads.
    """
    check_rank(model, rank)
    layers = nested_layers(model)
    before = [layer.active_rank for layer in layers]
    for layer in layers:
        layer.active_rank = rank
    try:
        yield model
    finally:
        for layer, previous in zip(layers, before):
            layer.active_rank = previous


def truncated_student(model: nn.Module, rank: int) -> nn.Module:
    """A plain rank-``rank`` student built from the first ``rank`` directions of ``model``'s pairs.

    Parameters
    ----------
    model
        A nested student (or any model with :class:`NestedLowRankLinear` pairs); not modified.
    rank
        An integer in ``1..R``.

    Notes
    -----
    Every nested pair becomes a :class:`~effrank_utils.lowrank.factorize.LowRankLinear` of rank ``rank`` holding
    copies of ``down.weight[:rank]``, ``up.weight[:, :rank]`` and the bias; everything else is copied as is.
    Its outputs equal ``model``'s under ``at_rank(model, rank)``; it is an ordinary student (saved, counted and
    trained as any other).
    """
    check_rank(model, rank)
    copied = copy.deepcopy(model)

    def plain(pair: NestedLowRankLinear) -> LowRankLinear:
        w = pair.down.weight
        out = LowRankLinear(pair.in_features, pair.out_features, rank, bias=pair.up.bias is not None)
        out.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.down.weight.copy_(pair.down.weight[:rank])
            out.up.weight.copy_(pair.up.weight[:, :rank])
            if pair.up.bias is not None:
                out.up.bias.copy_(pair.up.bias)
        out.train(pair.training)
        out.requires_grad_(pair.down.weight.requires_grad)
        return out

    with torch.random.fork_rng(devices=[]):  # the pairs' default init must not move the caller's RNG
        _replace(copied, NestedLowRankLinear, plain)
    return copied
