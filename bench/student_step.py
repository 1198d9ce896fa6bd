"""Experiment (not a test): can a fused group's student steps be made cheaper on the CPU without changing them?

A fused group (``fuse=K``) runs the teacher's forward pass once per batch and then each student's forward,
backward and AdamW step in turn. On ``demo``'s model a low-rank student's step costs about what the teacher's
does (attention, norms and activations are not factorized), so three ways to run the same steps for less are
timed side by side, on one batch of the preset's size and shape, in ``--rounds`` interleaved rounds (the best and
the median are recorded):

* ``one after another``: the fit loop's way (the project's ``kd_loss``), the reference;
* ``stacked``: all K students in one ``torch.func.vmap`` over their parameters, each student's factors zero-padded to
  the group's largest rank (padded directions get zero gradients and stay zero under AdamW, so each student's step
  is its own; timm's fused attention and ``kl_div`` have no batching rule, so attention is computed unfused and the
  KL written out); its gradients are checked against one after another;
* ``compiled``: each student through ``torch.compile(dynamic=True)`` (compile time reported apart; ``--compile``);

and, for one student, the cost of an epoch at batch sizes 1x, 2x and 4x the preset's (fewer, larger steps: this
would change the estimator, so it is only timed).

    python bench/student_step.py --compile --out bench/student_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from effrank_utils.lowrank.factorize import factorize
from effrank_utils.run.entry import load_preset
from effrank_utils.training.distill import kd_loss
from effrank_utils.training.models import build_model

warnings.filterwarnings("ignore", message=".*break-even.*")


def best_ms(step: Callable[[], None], rounds: int, steps: int) -> list[float]:
    """Milliseconds per call of ``step``, once per round (after two warm-up calls)."""
    step(), step()
    times = []
    for _ in range(rounds):
        tic = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - tic) / steps * 1000)
    return times


def explicit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, t: float,
                alpha: float) -> torch.Tensor:
    """``kd_loss`` with the KL written out (``F.kl_div`` has no batching rule under vmap)."""
    target = F.log_softmax(teacher_logits / t, dim=-1)
    kl = (target.exp() * (target - F.log_softmax(student_logits / t, dim=-1))).sum(-1).mean()
    return alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student_logits, labels)


def padded(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``tensor`` zero-padded at the end of each dimension to ``shape``."""
    pads = [p for have, want in zip(reversed(tensor.shape), reversed(shape)) for p in (0, want - have)]
    return F.pad(tensor, pads) if any(pads) else tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 3, 4, 6, 8, 12, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd students")
    parser.add_argument("--out", type=Path, default=Path("bench/student_step.json"))
    args = parser.parse_args()
    config = load_preset(args.preset)
    torch.manual_seed(0)
    channels, size, classes, batch = 1, config.image_size, 10, config.student_batch_size
    teacher = build_model(config, classes, channels).eval()
    x, y = torch.randn(batch, channels, size, size), torch.randint(0, classes, (batch,))
    t, alpha = config.kd_temperature, config.kd_alpha
    students = [factorize(teacher, r) for r in args.ranks]
    optimizers = [torch.optim.AdamW(s.parameters(), fused=True) for s in students]

    # ---- one after another: the teacher once, then each student's step (the fit loop)
    def group_step(models: list[torch.nn.Module]) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                logits = teacher(x)
            for model, opt in zip(models, optimizers):
                opt.zero_grad(set_to_none=True)
                kd_loss(model(x), logits, y, t, alpha).backward()
                opt.step()
        return step

    one_after_another = group_step(students)

    # ---- stacked: one vmap over the students' parameters, padded to the largest rank
    template = factorize(teacher, max(args.ranks))
    for block in getattr(template, "blocks", []):
        block.attn.fused_attn = False
    shapes = {name: p.shape for name, p in template.named_parameters()}

    def stacked_losses() -> torch.Tensor:
        with torch.no_grad():
            logits = teacher(x)
        params = [dict(s.named_parameters()) for s in students]
        stacked = {name: torch.stack([padded(p[name], shape) for p in params]) for name, shape in shapes.items()}
        one = lambda theta: explicit_kd(functional_call(template, theta, (x,)), logits, y, t, alpha)  # noqa: E731
        return vmap(one)(stacked)

    def stacked() -> None:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        stacked_losses().sum().backward()
        for opt in optimizers:
            opt.step()

    # ---- the candidates' gradients equal one after another's (the same steps)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits = teacher(x)
    for student in students:
        kd_loss(student(x), logits, y, t, alpha).backward()
    reference = [[p.grad.clone() for p in s.parameters()] for s in students]
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    stacked_losses().sum().backward()
    gradient_gap = max((g - p.grad).abs().max().item() for s, ref in zip(students, reference)
                       for g, p in zip(ref, s.parameters()))

    # ---- timings, interleaved round by round
    timings: dict[str, list[float]] = {"one after another": [], "stacked": []}
    for _ in range(args.rounds):
        timings["one after another"] += best_ms(one_after_another, 1, args.steps)
        timings["stacked"] += best_ms(stacked, 1, args.steps)
    record: dict = {"preset": args.preset, "ranks": args.ranks, "batch": batch, "threads": torch.get_num_threads(),
                    "gradient_gap": gradient_gap, "ms_per_group_step": {k: min(v) for k, v in timings.items()},
                    "median_ms_per_group_step": {k: statistics.median(v) for k, v in timings.items()},
                    "all_ms": timings}
    if args.compile:
        tic = time.perf_counter()
        compiled = [torch.compile(s, dynamic=True) for s in students]
        with torch.no_grad():
            logits = teacher(x)
        for model in compiled:
            kd_loss(model(x), logits, y, t, alpha).backward()
        record["compile_seconds"] = time.perf_counter() - tic
        record["ms_per_group_step"]["compiled"] = min(best_ms(group_step(compiled), args.rounds, args.steps))
    base = record["ms_per_group_step"]["one after another"]
    record["vs_one_after_another"] = {k: base / v for k, v in record["ms_per_group_step"].items()}

    # ---- one student's epoch at larger batches (fewer steps; another estimator, timed only)
    student, opt = students[len(students) // 2], optimizers[len(students) // 2]
    epoch = {}
    for factor in (1, 2, 4):
        xb, yb = x.repeat(factor, 1, 1, 1), y.repeat(factor)

        def step(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> None:
            with torch.no_grad():
                logits = teacher(xb)
            opt.zero_grad(set_to_none=True)
            kd_loss(student(xb), logits, yb, t, alpha).backward()
            opt.step()

        epoch[str(batch * factor)] = min(best_ms(step, args.rounds, args.steps)) / factor  # ms per preset batch
    record["epoch_cost_by_batch"] = {"rank": args.ranks[len(students) // 2], "relative": {
        b: ms / epoch[str(batch)] for b, ms in epoch.items()}}
    print(json.dumps({k: record[k] for k in ("ms_per_group_step", "median_ms_per_group_step", "vs_one_after_another",
                                             "gradient_gap",
                                             "epoch_cost_by_batch")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
