"""Benchmark (not a test): wall time of one sweep run locally and on a local Ray with 1 and 2 workers.

    python bench/scaling.py [--preset demo] [--student-epochs 5] [--out bench/scaling.json]

The teacher is trained once beforehand and shared, so only the students are timed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import ray
import torch

from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep
from effrank_utils.run.teacher import train_teacher
from effrank_utils.training.loading import load_data_for

warnings.filterwarnings("ignore", message=".*break-even.*")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--student-epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/scaling.json"))
    args = parser.parse_args()
    config = load_preset(args.preset, student_epochs=args.student_epochs)
    data = load_data_for(config)
    results = {"preset": args.preset, "student_epochs": args.student_epochs, "students": len(config.ranks),
               "cpus": torch.get_num_threads(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = Path(tmp) / "teacher"
        train_teacher(config, teacher_dir, data)
        runs = {"local (1 process, all threads)": config,
                "ray, 1 worker": config.replace(executor="ray", workers=1),
                "ray, 2 workers": config.replace(executor="ray", workers=2)}
        for name, cfg in runs.items():
            run_dir = Path(tmp) / name.replace(" ", "_").replace(",", "")
            shutil.copytree(teacher_dir, run_dir)
            ray.shutdown()
            tic = time.perf_counter()
            run_sweep(cfg, run_dir, data=data)
            results["runs"][name] = time.perf_counter() - tic
        ray.shutdown()
    base = results["runs"]["ray, 1 worker"]
    print(f"\n{'executor':<32} {'seconds':>8} {'speed-up vs 1 worker':>22}")
    for name, seconds in results["runs"].items():
        print(f"{name:<32} {seconds:>8.1f} {base / seconds:>21.2f}x")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
