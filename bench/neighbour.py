"""Experiment (not a test): warm-starting each rank from the trained student one grid step above.

From one ``demo`` teacher, a chain down the grid (the top rank from the teacher by SVD, every lower rank
from the trained student above it by :func:`effrank_utils.lowrank.factorize.from_neighbour`) beside independent
SVD students of the same ranks, both under the same recipe (constant rate, a fixed number of epochs, so that
the two are compared epoch by epoch). Records per rank the accuracy before training and after each epoch, and
the region and knee of both curves.

    python bench/neighbour.py [--ranks 8,6,4,3,2,1] [--epochs 20] [--lr 3e-3] [--out bench/neighbour_results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

from effrank_utils.base.seeds import derive_seed
from effrank_utils.estimate.curves import effective_rank
from effrank_utils.lowrank.factorize import factorize, from_neighbour
from effrank_utils.run.entry import load_preset
from effrank_utils.run.teacher import train_teacher
from effrank_utils.training.data import pipeline_for
from effrank_utils.training.distill import DistillationLoss
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.loop import evaluate, fit, recipe_for

warnings.filterwarnings("ignore", message=".*break-even.*")


def train(student, loss, pipeline, recipe) -> dict:
    """Accuracy before training and the per-epoch test accuracies of one student (trained in place)."""
    before = evaluate(student, pipeline)
    (result,) = fit([student], loss, pipeline, recipe, seed=0)
    return {"before": before, "test": [h["test_accuracy"] for h in result.history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--ranks", default="8,6,4,3,2,1", help="descending: each warm-starts the next")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--out", type=Path, default=Path("bench/neighbour_results.json"))
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    if ranks != sorted(ranks, reverse=True) or len(set(ranks)) != len(ranks):
        parser.error(f"--ranks: must be distinct and descending, got {args.ranks}")
    teacher_fields = {} if args.teacher_epochs is None else {"teacher_epochs": args.teacher_epochs}
    config = load_preset(args.preset, **teacher_fields, student_lr=args.lr, student_schedule="constant",
                         student_patience=0, student_epochs=args.epochs, band_stop=0.0)
    data = load_data_for(config)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = train_teacher(config, Path(tmp), data)
    model = teacher.model.eval()
    pipeline = pipeline_for(config, data, config.student_batch_size)
    loss = DistillationLoss(model, config.loss, config.kd_temperature, config.kd_alpha)
    recipe = recipe_for(config, "student")
    runs: dict[str, dict] = {"independent": {}, "from_neighbour": {}}
    above = None
    for rank in ranks:
        runs["independent"][rank] = train(factorize(model, rank, seed=derive_seed(0, rank)), loss, pipeline, recipe)
        student = factorize(model, rank, seed=derive_seed(0, rank)) if above is None else from_neighbour(above, rank)
        runs["from_neighbour"][rank] = train(student, loss, pipeline, recipe)
        above = student
        print(f"rank {rank}: independent {runs['independent'][rank]['test'][-1]:.3f}, from the neighbour "
              f"{runs['from_neighbour'][rank]['test'][-1]:.3f} after {args.epochs} epochs", flush=True)
    record = {"preset": args.preset, "ranks": ranks, "epochs": args.epochs, "lr": args.lr,
              "teacher_accuracy": teacher.accuracy, "runs": runs, "curves": {}}
    for name, run in runs.items():
        result = effective_rank(list(run), [r["test"][-1] for r in run.values()], teacher.accuracy)
        record["curves"][name] = {"region": [result.region_low, result.region_high], "knee": result.knee}
        print(f"{name}: region {record['curves'][name]['region']}, knee {result.knee}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
