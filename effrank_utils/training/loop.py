"""One training loop for a group of models that share a batch stream (a teacher alone, or fused students).

Per epoch: seed the RNG from ``(seed, epoch)``, run the pipeline's batches, step every model's AdamW with a
warmup + cosine, constant or plateau-cut learning rate, evaluate top-1 on the validation split (when there is
one) and the test split, and checkpoint the whole state atomically so that a killed run resumes at the last
finished epoch with the same numbers. Losses are summed on the device and read once per epoch (no per-step host
sync).

A model stops on its own when its validation accuracy has not improved for ``patience`` epochs (``plateau``),
when the caller's ``stop_rule`` names a reason (the sweep's band stop, say), else at the recipe's epochs
(``cap``). Under the ``plateau`` schedule, the first ``PLATEAU_CUTS`` plateaus cut that model's learning rate
by ``PLATEAU_FACTOR`` instead, and the next one stops it. A model whose loss turns NaN/inf is dropped with the
reason recorded. The others in the group go on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..base.seeds import derive_seed
from ..base.storage import CorruptFile, fault_point, load_checkpoint, quarantine, save_checkpoint
from .data import Batch, BatchPipeline

if TYPE_CHECKING:
    from ..records.config import StudyConfig

log = logging.getLogger(__name__)


class Objective(Protocol):
    """What :func:`fit` minimizes: ``shared(batch)`` is computed once per batch for the whole group (a
    teacher's forward pass, say) and ``loss(model, batch, shared)`` once per model."""

    def shared(self, batch: Batch) -> Any: ...

    def loss(self, model: nn.Module, batch: Batch, shared: Any) -> torch.Tensor: ...


def cosine(progress: float) -> float:
    """Cosine decay from 1 to 0 over training (``progress`` in [0, 1])."""
    return 0.5 * (1 + math.cos(math.pi * progress))


def constant(progress: float) -> float:
    """The base learning rate throughout."""
    return 1.0


#: Learning-rate schedules after warmup: name -> factor of the base rate as a function of progress. ``plateau`` is
#: the base rate, cut by ``PLATEAU_FACTOR`` at each validation plateau (``fit`` applies the cuts per model).
SCHEDULES: dict[str, Callable[[float], float]] = {"cosine": cosine, "constant": constant, "plateau": constant}
PLATEAU_FACTOR = 0.1  # the plateau schedule's learning-rate cut
PLATEAU_CUTS = 2      # cuts before a plateau stops the model (the rate ends at PLATEAU_FACTOR ** PLATEAU_CUTS)


@dataclass(frozen=True)
class Recipe:
    """Optimization settings of one training run."""

    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: int = 0
    schedule: str = "cosine"  # a name in SCHEDULES
    patience: int = 0         # epochs without a better validation accuracy before stopping (0: run all epochs)


def recipe_for(config: "StudyConfig", role: str) -> Recipe:
    """The recipe of the ``teacher`` or of the ``student`` s, from the config's ``<role>_*`` fields."""
    field = lambda name: getattr(config, f"{role}_{name}")  # noqa: E731
    return Recipe(field("epochs"), field("lr"), field("weight_decay"), field("warmup_epochs"), field("schedule"),
                  field("patience"))


PLATEAU = "plateau"  # validation accuracy stopped improving
CAP = "cap"          # ran the recipe's epochs


@dataclass
class FitResult:
    """Per-epoch metrics of one model; why it stopped (``stop_reason``: plateau or cap) or failed (``failure``)."""

    history: list[dict] = field(default_factory=list)
    failure: str | None = None
    stop_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.failure is None and self.stop_reason is None

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1]["test_accuracy"] if self.history and self.failure is None else None

    @property
    def best_accuracy(self) -> float | None:
        return max((h["test_accuracy"] for h in self.history), default=None)


def learning_rate(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Linear warmup over ``warmup_epochs``, then the recipe's schedule until the last step."""
    warmup = recipe.warmup_epochs * steps_per_epoch
    total = recipe.epochs * steps_per_epoch
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    return recipe.lr * SCHEDULES[recipe.schedule]((step - warmup) / max(total - warmup, 1))


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW with its fused kernel (one pass over all parameters: on the CPU, a small model's step costs a
    fifth of the per-tensor loop's)."""
    return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def share(flags: torch.Tensor) -> float:
    """The share of true values in a bool tensor, exactly (a count over a count, not a float32 mean)."""
    return flags.sum().item() / flags.numel()


@torch.no_grad()
def correct_predictions(model: nn.Module, pipeline: BatchPipeline, amp: bool = False, split: str = "test"
                        ) -> torch.Tensor:
    """Per image of the pipeline's ``test`` (or ``val``) split, in order: whether the top-1 prediction is right (a
    bool tensor on the data's device)."""
    was_training = model.training
    model.eval()
    with autocast(pipeline.data.device, amp):
        right = [model(x).argmax(dim=-1) == y for x, y in pipeline.eval_batches(split)]
    model.train(was_training)
    return torch.cat(right)


def evaluate(model: nn.Module, pipeline: BatchPipeline, amp: bool = False, split: str = "test") -> float:
    """Top-1 accuracy on the pipeline's ``test`` (or ``val``) split (one host sync at the end)."""
    return share(correct_predictions(model, pipeline, amp, split))


def discordance(right: torch.Tensor, reference: torch.Tensor) -> float:
    """The share of images that one model gets right and the other wrong (either way): with the accuracy
    difference, it gives the standard error of a paired comparison on those images."""
    return share(right != reference)


def plateaus(history: Sequence[dict], patience: int) -> int:
    """How many validation plateaus the history holds: runs of ``patience`` epochs without a validation accuracy
    above the best so far (the count of epochs restarts after each plateau)."""
    if patience <= 0:
        return 0
    count, best, since = 0, -math.inf, 0
    for record in history:
        if record["val_accuracy"] > best:
            best, since = record["val_accuracy"], 0
        else:
            since += 1
        if since == patience:
            count, since = count + 1, 0
    return count


def cuts_allowed(recipe: Recipe) -> int:
    """Plateaus that cut the learning rate before one stops the model (only the plateau schedule cuts)."""
    return PLATEAU_CUTS if recipe.schedule == "plateau" else 0


def plateaued(history: Sequence[dict], recipe: Recipe) -> bool:
    """True when the history holds more validation plateaus than the recipe's schedule cuts the rate at."""
    return plateaus(history, recipe.patience) > cuts_allowed(recipe)


def rate_factor(history: Sequence[dict], recipe: Recipe) -> float:
    """The factor on the scheduled learning rate for the next epoch: ``PLATEAU_FACTOR`` per cut so far."""
    return PLATEAU_FACTOR ** min(plateaus(history, recipe.patience), cuts_allowed(recipe))


def _restore(state_path: Path | None, models: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
             device: torch.device, tag: str | None) -> tuple[int, list[FitResult]]:
    results = [FitResult() for _ in models]
    if state_path is None or not state_path.exists():
        return 0, results
    try:
        state = load_checkpoint(state_path, map_location=device)
        if state.get("tag") != tag or len(state["models"]) != len(models):
            raise CorruptFile(f"{state_path}: a checkpoint of other settings or data (tag {state.get('tag')}, "
                              f"now {tag})")
    except (CorruptFile, KeyError) as exc:  # only progress is lost: start over
        log.warning("%s; moved aside to %s, training starts over", exc, quarantine(state_path).name)
        return 0, results
    for model, opt, m_state, o_state in zip(models, optimizers, state["models"], state["optimizers"]):
        model.load_state_dict(m_state)
        opt.load_state_dict(o_state)
    for result, saved in zip(results, json.loads(state["results"])):
        result.history, result.failure = saved["history"], saved["failure"]
        result.stop_reason = saved.get("stop_reason")  # absent in checkpoints of earlier versions
    log.info("resuming %s at epoch %d", state_path.name, state["epoch"])
    return int(state["epoch"]), results


def _checkpoint(state_path: Path, tag: str | None, epoch: int, models: Sequence[nn.Module],
                optimizers: Sequence[torch.optim.Optimizer], results: Sequence[FitResult]) -> None:
    save_checkpoint(state_path, {
        "tag": tag,
        "epoch": epoch,
        "models": [m.state_dict() for m in models],
        "optimizers": [o.state_dict() for o in optimizers],
        "results": json.dumps([{"history": r.history, "failure": r.failure, "stop_reason": r.stop_reason}
                               for r in results]),
    })


def compile_models(models: Sequence[nn.Module], device: torch.device) -> None:
    """Compile each model in place with ``nn.Module.compile`` on CUDA (its ``state_dict`` keys stay the same, so
    checkpoints and resuming are unaffected); on the CPU, say why not and leave the models as they are."""
    if device.type != "cuda":
        log.info("compile: skipped on the CPU: for models this small, compiling costs more time than it saves; "
                 "training runs uncompiled, with the same results")
        return
    for model in models:
        model.compile()


def fit(models: Sequence[nn.Module], objective: Objective, pipeline: BatchPipeline, recipe: Recipe, *, seed: int,
        amp: bool = False, compile: bool = False, state_path: str | Path | None = None, state_tag: str | None = None,
        checkpoint_every: int = 1, desc: str = "training",
        on_epoch: Callable[[int, list[FitResult]], None] | None = None,
        stop_rule: Callable[[Sequence[dict]], str | None] | None = None,
        val_reference: torch.Tensor | None = None) -> list[FitResult]:
    """Train ``models`` in lockstep on one batch stream; returns one :class:`FitResult` per model.

    Per batch, ``objective.shared`` runs once; then each active model in turn computes its loss, backpropagates
    and steps (so only one model's graph is alive at a time). With ``recipe.patience``, a model leaves the group
    once its validation accuracy has plateaued (the pipeline's data needs a validation split); the others go on,
    on the same batch stream as before. With ``state_path``, the state is saved every
    ``checkpoint_every`` epochs and at the end, and training resumes from it when it exists and carries the same
    ``state_tag`` (the identity of what is trained); a damaged checkpoint, or one of another tag, is moved aside
    and training starts over. With ``compile``, the models run through ``torch.compile`` on CUDA
    (:func:`compile_models`). ``stop_rule(history)``, asked after each epoch of each model that did not plateau,
    returns the reason to stop that model now (recorded as its ``stop_reason``) or ``None``; it must be a
    function of the history alone, so that a resumed run stops where an uninterrupted one would. With
    ``val_reference`` (another model's :func:`correct_predictions` on the validation split), each epoch also records
    ``val_discordant``: the model's :func:`discordance` with it.
    """
    # ---- setup: compiled models (CUDA), optimizers, and the state of an interrupted run of the same models (same tag)
    device = pipeline.data.device
    if recipe.patience and not pipeline.data.has_validation:
        raise ValueError("patience: early stopping needs a validation split (validation_fraction > 0)")
    if compile:
        compile_models(models, device)
    state_path = Path(state_path) if state_path is not None else None
    optimizers = [make_optimizer(m, recipe) for m in models]
    start, results = _restore(state_path, models, optimizers, device, state_tag)
    steps = pipeline.steps_per_epoch()
    bar = tqdm(range(start, recipe.epochs), desc=desc, leave=False, initial=start, total=recipe.epochs)
    for epoch in bar:
        # ---- who trains this epoch, at which rate
        active = [i for i, r in enumerate(results) if r.active]
        if not active:
            break
        torch.manual_seed(derive_seed(seed, epoch + 1))  # dropout / drop-path: a function of the epoch, so resumable
        for i in active:
            models[i].train()
        factors = [rate_factor(results[i].history, recipe) for i in active]  # each model's plateau cuts so far
        loss_sum = torch.zeros(len(active), device=device)  # summed on the device: no host sync per step
        tic = time.perf_counter()

        # ---- one pass over the shared batch stream: the shared part once, then each model in turn
        for step, batch in enumerate(pipeline.train_batches(seed, epoch)):
            lr = learning_rate(recipe, epoch * steps + step, steps)
            with autocast(device, amp):
                shared = objective.shared(batch)
            for slot, i in enumerate(active):
                with autocast(device, amp):
                    loss = objective.loss(models[i], batch, shared).float()
                optimizers[i].zero_grad(set_to_none=True)
                loss.backward()  # one model's graph at a time: the group costs one model's activation memory
                for group in optimizers[i].param_groups:
                    group["lr"] = lr * factors[slot]
                optimizers[i].step()
                loss_sum[slot] += loss.detach()
        mean_loss = (loss_sum / steps).tolist()
        seconds = time.perf_counter() - tic

        # ---- evaluate, record, and decide who stops (a non-finite loss fails only that model)
        for i, loss, factor in zip(active, mean_loss, factors):
            if not math.isfinite(loss):
                results[i].failure = f"non-finite loss ({loss}) in epoch {epoch + 1}"
                log.warning("model %d of %s stopped: %s", i, desc, results[i].failure)
                continue
            record = {"epoch": epoch + 1, "loss": loss, "lr": lr * factor, "seconds": seconds}
            if pipeline.data.has_validation:
                right = correct_predictions(models[i], pipeline, amp, split="val")
                record["val_accuracy"] = share(right)
                if val_reference is not None:
                    record["val_discordant"] = discordance(right, val_reference)
            results[i].history.append(record | {"test_accuracy": evaluate(models[i], pipeline, amp)})
            if plateaued(results[i].history, recipe):
                results[i].stop_reason = PLATEAU
            elif stop_rule is not None and (reason := stop_rule(results[i].history)) is not None:
                results[i].stop_reason = reason
            elif epoch + 1 == recipe.epochs:
                results[i].stop_reason = CAP

        # ---- checkpoint (atomically), then tell the caller
        last = epoch + 1 == recipe.epochs or not any(r.active for r in results)
        if state_path is not None and (last or (checkpoint_every and (epoch + 1) % checkpoint_every == 0)):
            _checkpoint(state_path, state_tag, epoch + 1, models, optimizers, results)
        fault_point(f"epoch_done:{desc}:{epoch + 1}")
        if on_epoch is not None:
            on_epoch(epoch + 1, results)
        accs = [r.history[-1]["test_accuracy"] for r in results if r.active and r.history]
        if accs:
            bar.set_postfix(acc=f"{max(accs):.3f}")
    return results
