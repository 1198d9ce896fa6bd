"""Experiment (not a test): do low-rank students converge faster with a higher learning rate?

From one ``demo`` teacher, every rank of the preset's grid trained fused (one batch stream; the same rows as one
by one) under a constant rate, with no stopping, for a fixed number of epochs, once per rate. Records per rate
and rank the accuracy before training and the per-epoch validation and test accuracies.

    python bench/student_rates.py --rates 3e-3 1e-2 --epochs 40 --out bench/student_rates.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from effrank_utils.records.run_folder import Task
from effrank_utils.run.entry import load_preset
from effrank_utils.run.students import train_students
from effrank_utils.run.teacher import train_teacher
from effrank_utils.training.loading import load_data_for

warnings.filterwarnings("ignore", message=".*break-even.*")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--rates", nargs="+", type=float, default=[3e-3, 1e-2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--out", type=Path, default=Path("bench/student_rates.json"))
    args = parser.parse_args()
    teacher_fields = {} if args.teacher_epochs is None else {"teacher_epochs": args.teacher_epochs}
    base = load_preset(args.preset, **teacher_fields)
    data = load_data_for(base)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = train_teacher(base, Path(tmp), data)
    record: dict = {"preset": args.preset, "epochs": args.epochs, "teacher_accuracy": teacher.accuracy, "rates": {}}
    for rate in args.rates:
        config = base.replace(student_lr=rate, student_schedule="constant", student_patience=0, band_stop=0.0,
                              student_epochs=args.epochs, fuse=len(base.ranks))
        tic = time.perf_counter()
        rows = train_students(config, teacher.model, data, [Task(r, 0) for r in base.ranks])
        record["rates"][str(rate)] = {"seconds": time.perf_counter() - tic, "rows": [
            {"rank": r["rank"], "zero_shot": r["zero_shot_accuracy"],
             "val": [h.get("val_accuracy") for h in r["history"]], "test": [h["test_accuracy"] for h in r["history"]]}
            for r in rows]}
        print(f"rate {rate:g}: " + ", ".join(f"rank {r['rank']} {r['final_accuracy']:.3f}" for r in rows), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
