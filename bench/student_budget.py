"""Experiment (not a test): have the low-rank students that decide ``demo``'s region converged under its rule?

From one ``demo`` teacher, the ranks that decide the region (default 1, 2, 3, 4, 6) are trained fused (one batch
stream) under several stopping rules and budgets, the band stop off: ``demo``'s own rule (plateau schedule,
patience 4), the same rule with a longer patience, a constant rate for a fixed budget, and a cosine schedule.
Records per rule each rank's per-epoch test accuracy, its final accuracy, the region read from these ranks alone
(both crossings lie among them) and the project's convergence verdict on them.

    python bench/student_budget.py --out bench/student_budget.json
    python bench/student_budget.py --rules "plateau, patience 24, cap 300" --out bench/student_budget_long.json

``--set field=value`` (repeatable) overrides a field under every rule (the tests shrink the budgets with it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from effrank_utils.estimate.convergence import convergence
from effrank_utils.estimate.curves import effective_rank
from effrank_utils.records.run_folder import Task
from effrank_utils.run.entry import load_preset
from effrank_utils.run.presets import parse_assignment
from effrank_utils.run.students import train_students
from effrank_utils.run.teacher import train_teacher
from effrank_utils.training.loading import load_data_for

warnings.filterwarnings("ignore", message=".*break-even.*")

#: Rule name -> the student fields it sets (on top of the preset's).
RULES = {
    "plateau, patience 4 (demo)": dict(),
    "plateau, patience 8": dict(student_patience=8),
    "plateau, patience 12, cap 160": dict(student_patience=12, student_epochs=160),
    "constant, 80 epochs": dict(student_schedule="constant", student_patience=0, student_epochs=80),
    "cosine, 40 epochs": dict(student_schedule="cosine", student_patience=0, student_epochs=40),
    "plateau, patience 24, cap 300": dict(student_patience=24, student_epochs=300),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 3, 4, 6])
    parser.add_argument("--rules", nargs="+", default=list(RULES)[:-1], choices=list(RULES),
                        help="default: all but the longest (patience 24), which takes about 4 minutes on its own")
    parser.add_argument("--set", dest="sets", type=parse_assignment, action="append", default=[],
                        metavar="FIELD=VALUE", help="a field set under every rule, after the rule's own")
    parser.add_argument("--out", type=Path, default=Path("bench/student_budget.json"))
    args = parser.parse_args()
    base = load_preset(args.preset)
    data = load_data_for(base)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = train_teacher(base, Path(tmp), data)
    record: dict = {"preset": args.preset, "ranks": args.ranks, "teacher_accuracy": teacher.accuracy, "rules": {},
                    "command": shlex.join(["python", *sys.argv])}
    for name in args.rules:
        config = base.replace(**dict(band_stop=0.0, fuse=len(args.ranks)) | RULES[name] | dict(args.sets))
        tic = time.perf_counter()
        rows = train_students(config, teacher.model, data, [Task(r, 0) for r in args.ranks])
        seconds = time.perf_counter() - tic
        epochs = pd.DataFrame([{"rank": r["rank"], "seed": 0, "epoch": h["epoch"],
                                "test_accuracy": h["test_accuracy"]} for r in rows for h in r["history"]])
        finals = [r["final_accuracy"] for r in rows]
        result = effective_rank([r["rank"] for r in rows], finals, teacher.accuracy, n_bootstrap=0)
        found = convergence(epochs, teacher.accuracy, stop_reasons=[r["stop_reason"] for r in rows])
        record["rules"][name] = {
            "fields": RULES[name] | dict(args.sets), "seconds": seconds,
            "student_epochs": int(sum(len(r["history"]) for r in rows)),
            "region": [result.region_low, result.region_high], "verdict": found.verdict(),
            "rows": [{"rank": r["rank"], "epochs": len(r["history"]), "final": r["final_accuracy"],
                      "stop_reason": r["stop_reason"], "test": [h["test_accuracy"] for h in r["history"]]}
                     for r in rows]}
        print(f"{name}: " + ", ".join(f"rank {r['rank']} {r['final_accuracy']:.3f} ({len(r['history'])} ep)"
                                      for r in rows)
              + f"; region [{result.region_low:.2f}, {result.region_high:.2f}]; {found.verdict()}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
