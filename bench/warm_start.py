"""Experiment: how many distillation epochs do SVD-initialized students need to match random-initialized ones?

For each rank, a `random`-init student is distilled for the longest budget we afford and an `svd`-init student
for a shorter one, with a constant learning rate so that the accuracy after epoch k is the accuracy of a k-epoch
budget. Reported: the epochs SVD students need to reach the random students' final accuracy, and the region and
knee each estimator gives. Writes a JSON record and a figure.

    python bench/warm_start.py --preset cifar10-cpu --random-epochs 20 --svd-epochs 8 \
        --out docs/warm_start.json --figure docs/warm_start.png [--set train_subset=20000 ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from effrank_utils.estimate.curves import effective_rank
from effrank_utils.lowrank.factorize import factorize
from effrank_utils.run.entry import load_preset
from effrank_utils.run.presets import parse_assignment
from effrank_utils.run.teacher import train_teacher
from effrank_utils.training.data import pipeline_for
from effrank_utils.training.distill import DistillationLoss
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.loop import fit, recipe_for
from effrank_utils.training.models import resolve_device

warnings.filterwarnings("ignore", message=".*break-even.*")


def distill_histories(config, teacher, data, ranks, init, epochs) -> dict[int, list[float]]:
    """Per-epoch test accuracy of one fused group of students (one per rank) with the given init."""
    device = resolve_device(config.device)
    pipeline = pipeline_for(config, data.to(device), config.student_batch_size)
    students = [factorize(teacher, r, init=init, targets=config.targets, seed=r).to(device) for r in ranks]
    recipe = recipe_for(config.replace(student_epochs=epochs), "student")
    results = fit(students, DistillationLoss(teacher, config.loss, config.kd_temperature, config.kd_alpha),
                  pipeline, recipe, seed=0, amp=config.amp, desc=f"{init} students")
    return {r: [h["test_accuracy"] for h in res.history] for r, res in zip(ranks, results)}


def epochs_to_reach(history: list[float], target: float) -> int | None:
    """First epoch (1-based) whose accuracy reaches ``target``."""
    return next((i + 1 for i, acc in enumerate(history) if acc >= target), None)


def plot(record: dict) -> plt.Figure:
    """Left: accuracy per epoch for both inits; right: accuracy vs rank for each estimator."""
    ranks, teacher = record["ranks"], record["teacher_accuracy"]
    fig, (ax_epochs, ax_rank) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(ranks):
        for init, style in (("random", "--"), ("svd", "-")):
            history = record["histories"][init][str(r)]
            ax_epochs.plot(np.arange(1, len(history) + 1), history, ls=style, color=f"C{i}",
                           label=f"r={r}" if init == "svd" else None)
    ax_epochs.axhline(teacher, color="k", lw=0.8, ls=":")
    ax_epochs.set(xlabel="distillation epochs", ylabel="test top-1",
                  title="SVD init (solid) vs random init (dashed); teacher dotted")
    ax_epochs.legend(fontsize=7, ncol=2)
    for name in record["estimates"]:
        init, epochs = name.split("@")
        acc = [record["histories"][init][str(r)][int(epochs) - 1] for r in ranks]
        ax_rank.plot(ranks, np.array(acc) / teacher, "o-", label=name)
    ax_rank.axhspan(0.85, 0.95, color="C2", alpha=0.15, label="85-95% band")
    ax_rank.set_xscale("log")
    ax_rank.set_xticks(ranks, labels=[str(r) for r in ranks])
    ax_rank.minorticks_off()
    ax_rank.set(xlabel="rank r", ylabel="accuracy / teacher", title="Accuracy vs rank per estimator (init@epochs)")
    ax_rank.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar10-cpu")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_assignment, default=[])
    parser.add_argument("--ranks", default="2,4,8,16,32,64")
    parser.add_argument("--random-epochs", type=int, default=20)
    parser.add_argument("--svd-epochs", type=int, default=8)
    parser.add_argument("--run-dir", type=Path, default=Path("results/warm_start"))
    parser.add_argument("--out", type=Path, default=Path("docs/warm_start.json"))
    parser.add_argument("--figure", type=Path, default=Path("docs/warm_start.png"))
    parser.add_argument("--replot", action="store_true", help="only redraw --figure from the --out record")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text())).savefig(args.figure, dpi=130)
        return
    ranks = [int(r) for r in args.ranks.split(",")]
    config = load_preset(args.preset, dict(args.overrides) | {"student_schedule": "constant",
                                                               "student_warmup_epochs": 0, "ranks": ranks})
    data = load_data_for(config)
    tic = time.perf_counter()
    teacher = train_teacher(config, args.run_dir, data)
    device = resolve_device(config.device)
    model = teacher.model.to(device)
    record = {"config": config.to_dict(), "teacher_accuracy": teacher.accuracy, "ranks": ranks,
              "machine": {"platform": platform.platform(),
                          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}}
    budgets = {"random": args.random_epochs, "svd": args.svd_epochs}
    hist: dict[str, dict[int, list[float]]] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for init, epochs in budgets.items():  # saved after each phase: an interrupted run keeps what finished
        hist[init] = distill_histories(config, model, data, ranks, init, epochs)
        record["histories"] = {i: {str(r): h for r, h in v.items()} for i, v in hist.items()}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    targets = {r: hist["random"][r][-1] for r in ranks}
    needed = {r: epochs_to_reach(hist["svd"][r], targets[r]) for r in ranks}
    record["random_final"] = {str(r): targets[r] for r in ranks}
    record["svd_epochs_to_match_random"] = {str(r): needed[r] for r in ranks}
    estimates = {f"random@{args.random_epochs}": [hist["random"][r][-1] for r in ranks],
                 f"svd@{args.svd_epochs}": [hist["svd"][r][-1] for r in ranks],
                 "svd@1": [hist["svd"][r][0] for r in ranks]}
    record["estimates"] = {}
    for name, acc in estimates.items():
        res = effective_rank(ranks, acc, teacher.accuracy)
        record["estimates"][name] = {"region": [res.low.describe(), res.high.describe()], "knee": res.knee}
    record["seconds"] = time.perf_counter() - tic
    args.out.write_text(json.dumps(record, indent=2) + "\n")

    plot(record).savefig(args.figure, dpi=130)
    print(json.dumps({k: record[k] for k in ("teacher_accuracy", "random_final", "svd_epochs_to_match_random",
                                             "estimates", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
