"""Experiment (not a test): the fast path with fewer students, read from one finished run folder.

Every student is a function of (config, rank, seed), fused or not, so the rows of a subset of a finished sweep's
ranks are the rows a sweep of those ranks alone would have trained. For each rank set: the region and knee at the
study's band and reference, the project's convergence verdict, the students and their student-epochs. The run
folder is only read.

    python bench/fewer_deciders.py RUN_DIR [--sets 1,2,4,8,16,32,64 1,2,4,6,8,16,32,64 ...] [--out FILE]

Without ``--sets``: the study's coarse grid (its ``ranks``) and every rank it trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from effrank_utils.report.analysis import analyze, study_convergence, study_settings
from effrank_utils.report.study import Study, load_study


def rank_set(text: str) -> tuple[int, ...]:
    """``1,2,4`` -> (1, 2, 4)."""
    try:
        return tuple(sorted({int(r) for r in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sets: expected comma-separated ranks like 1,2,4, got {text!r}")


def subset(study: Study, ranks: tuple[int, ...]) -> dict:
    """The study as if it had trained only ``ranks``: region, knee, verdict and what it trained."""
    missing = sorted(set(ranks) - set(study.table["rank"]))
    if missing:
        raise SystemExit(f"--sets: ranks {missing} have no finished student in {study.run_dir}")
    part = dataclasses.replace(study, table=study.table[study.table["rank"].isin(ranks)],
                               epochs=study.epochs[study.epochs["rank"].isin(ranks)],
                               missing=tuple(t for t in study.missing if t.rank in ranks))
    band, reference = study_settings(part)
    result, found = analyze(part, band, reference, n_bootstrap=0), study_convergence(part, band, reference)
    return {"ranks": list(ranks), "students": len(part.table), "student_epochs": int(part.table["epochs"].sum()),
            "region": [result.region_low, result.region_high], "knee": result.knee,
            "converged": found is not None and found.converged,
            "verdict": found.verdict() if found is not None else "not checked: the study has no per-epoch records"}


def shown(rank: float | None) -> str:
    """A rank to two decimals, or ``none`` where it is not defined."""
    return "none" if rank is None else f"{rank:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--sets", type=rank_set, nargs="+", help="rank sets, each comma-separated")
    parser.add_argument("--out", type=Path, help="write the record as JSON here")
    args = parser.parse_args()
    study = load_study(args.run_dir)
    sets = args.sets or [tuple(study.config.ranks), tuple(sorted(set(study.table["rank"])))]
    record = {"run_dir": str(args.run_dir), "teacher_accuracy": study.teacher_accuracy,
              "sets": [subset(study, ranks) for ranks in sets]}
    for row in record["sets"]:
        low, high, knee = (shown(v) for v in (*row["region"], row["knee"]))
        print(f"ranks {','.join(map(str, row['ranks']))}: region [{low}, {high}], knee {knee}, "
              f"{row['students']} students, {row['student_epochs']} student-epochs; {row['verdict']}")
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
