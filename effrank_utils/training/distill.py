"""Distillation losses (``geometric``, ``kd``, ``logits``) and the loss function that trains students from a
teacher whose forward pass is computed once per batch and shared by every student of a group."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..lowrank.factorize import block_attention, transformer_blocks
from .data import Batch
from .teacher_cache import TeacherLogitCache


@contextlib.contextmanager
def feature_taps(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Forward hooks on every block's attention and MLP; yields the list their outputs are appended to (in
    call order: block 0 attention, block 0 MLP, block 1 attention, ...). Cleared by the caller per batch."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handles = []
    for _, block in transformer_blocks(model):
        handles.append(block_attention(block).register_forward_hook(hook))
        handles.append(block.mlp.register_forward_hook(hook))
    if not handles:
        raise ValueError(f"loss: the geometric loss found no transformer blocks in {type(model).__name__}")
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def mse_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE + (1 - cosine similarity along the last (feature) dimension), both averaged, in at least float32.

    Equal vectors have cosine distance 0, all-zero ones included (e.g. the logits of a zero-initialized head), so
    identical inputs give exactly 0."""
    dtype = torch.promote_types(torch.result_type(student, teacher), torch.float32)
    s, t = student.to(dtype), teacher.to(dtype)
    distance = torch.where((s == t).all(dim=-1), 0.0, 1 - F.cosine_similarity(s, t, dim=-1))
    return F.mse_loss(s, t) + distance.mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """Hinton: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1), F.log_softmax(teacher_logits.float() / t, dim=-1),
                  reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)


def geometric_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
                   ) -> torch.Tensor:
    """The paper author's loss: mean over block outputs (attention, MLP) and logits of MSE + (1 - cosine)."""
    if len(student_features) != len(teacher_features):
        raise ValueError(f"loss: student has {len(student_features)} hooked sites, teacher "
                         f"{len(teacher_features)}; the geometric loss needs the same depth")
    terms = [mse_cosine(s, t) for s, t in zip(student_features, teacher_features)]
    terms.append(mse_cosine(student_logits, teacher_logits))
    return torch.stack(terms).mean()


def _kd(loss: "DistillationLoss", student: nn.Module, batch: Batch, teacher_logits: torch.Tensor,
        teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    return kd_loss(student(batch.x), teacher_logits, batch.y, loss.temperature, loss.alpha)


def _logits(loss: "DistillationLoss", student: nn.Module, batch: Batch, teacher_logits: torch.Tensor,
            teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    return mse_cosine(student(batch.x), teacher_logits)


def _geometric(loss: "DistillationLoss", student: nn.Module, batch: Batch, teacher_logits: torch.Tensor,
               teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    with feature_taps(student) as feats:
        logits = student(batch.x)
    return geometric_loss(logits, teacher_logits, feats, teacher_features)


@dataclass(frozen=True)
class LossSpec:
    """A distillation loss: how a student is scored against the teacher's outputs, and whether it needs the
    teacher's block outputs (not only its logits, so no logit cache)."""

    compute: Callable[..., torch.Tensor]  # (loss, student, batch, teacher_logits, teacher_features) -> scalar
    needs_block_outputs: bool = False


#: Distillation losses by name.
LOSSES: dict[str, LossSpec] = {
    "geometric": LossSpec(_geometric, needs_block_outputs=True),
    "kd": LossSpec(_kd),
    "logits": LossSpec(_logits),
}


class DistillationLoss:
    """Objective for :func:`~effrank_utils.training.fit`: the teacher runs once per batch (eval mode, no
    gradients) and every student of the group is scored against the same outputs by the loss ``loss`` (a
    name in :data:`LOSSES`; the config has validated it and its combination with the cache)."""

    def __init__(self, teacher: nn.Module, loss: str, temperature: float = 4.0, alpha: float = 0.5,
                 cache: TeacherLogitCache | None = None) -> None:
        self.teacher, self.spec, self.temperature, self.alpha = teacher.eval(), LOSSES[loss], temperature, alpha
        self.cache = cache

    @torch.no_grad()
    def teacher_outputs(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits and (for losses that need them) its hooked block outputs; from the cache when it
        has them."""
        if self.spec.needs_block_outputs:
            with feature_taps(self.teacher) as feats:
                logits = self.teacher(batch.x)
            return logits, list(feats)
        if self.cache is None:
            return self.teacher(batch.x), []
        cached = self.cache.lookup(batch.epoch, batch.index)
        if cached is None:
            cached = self.teacher(batch.x).half()
            self.cache.store(batch.epoch, batch.index, cached)
        return cached.float(), []

    def student_loss(self, student: nn.Module, batch: Batch, teacher_logits: torch.Tensor,
                     teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.spec.compute(self, student, batch, teacher_logits, teacher_features)

    def shared(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.teacher_outputs(batch)

    def loss(self, student: nn.Module, batch: Batch, shared: tuple[torch.Tensor, list[torch.Tensor]]
             ) -> torch.Tensor:
        return self.student_loss(student, batch, *shared)
