"""Do SVD and random initialization agree once both have converged? (An experiment, not a test.)

Runs one study per initialization (same preset, same teacher settings, several seeds, students trained until
their validation accuracy plateaus), then records for each the region and knee with 95% bootstrap intervals over
seeds, the region and knee against the budget and the convergence verdict, and whether the inits' intervals
overlap. Writes a JSON record and one figure (region and knee against the budget for every init).

    python bench/init_study.py --preset demo --seeds 0 1 2 --out docs/init_study.json --figure docs/init_study.png
    python bench/init_study.py --replot --out docs/init_study.json --figure docs/init_study.png

Run folders go to ``--results/<preset>-<init>`` and resume like any sweep. The inits share one teacher: the first
init's run trains it and the others load its ``teacher.pt`` (``teacher_checkpoint``), unless one is given.
``--init-set random:student_epochs=16`` changes a field for one init only (to take an expensive init only as far
as the machine allows).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt

from effrank_utils.estimate.curves import QUANTITY_LABELS
from effrank_utils.records.config import StudyConfig
from effrank_utils.records.run_folder import SWEEP_CSV, TEACHER_FILE
from effrank_utils.report.analysis import analyze, save_results, study_convergence
from effrank_utils.report.plotting import plot_convergence
from effrank_utils.report.study import load_study
from effrank_utils.run.entry import load_preset
from effrank_utils.run.presets import parse_assignment
from effrank_utils.run.sweep import run_sweep


def overlap(a: dict, b: dict) -> bool | None:
    """Whether two bootstrap intervals (``low``/``high``) overlap; None when either is missing."""
    if not a or not b or a["low"] is None or b["low"] is None:
        return None
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def parse_init_assignment(text: str) -> tuple[str, tuple[str, object]]:
    """``init:field=value``, as ``(init, (field, value))``."""
    init, sep, assignment = text.partition(":")
    if not sep or not init.strip():
        raise argparse.ArgumentTypeError(f"--init-set expects init:field=value, got {text!r}")
    return init.strip(), parse_assignment(assignment)


def init_fields(inits: list[str], seeds: list[int], overrides: dict, per_init: dict) -> dict[str, dict]:
    """The config fields of each init's study (on top of the preset)."""
    unknown = set(per_init) - set(inits)
    if unknown:
        raise ValueError(f"--init-set: {', '.join(sorted(unknown))} is not among --inits ({', '.join(inits)})")
    return {init: overrides | {"init": init, "seeds": seeds} | per_init.get(init, {}) for init in inits}


def run_one(config: StudyConfig, results: Path, sweep: bool = True) -> dict:
    """Sweep (or resume) one init's study and summarize it; with ``sweep=False``, summarize the students that
    have finished so far (a study still running, or stopped for time)."""
    run_dir = results / f"{config.preset}-{config.init}"
    tic = time.perf_counter()
    if sweep:
        run_sweep(config, run_dir)
    study = load_study(run_dir)
    result = analyze(study, config.band, config.reference, n_bootstrap=1000)
    found = study_convergence(study, config.band, config.reference)
    save_results(study, result, config.reference, found)
    return {"run_dir": str(run_dir), "config": config.to_dict(),
            "seconds_this_call": round(time.perf_counter() - tic, 1),
            "teacher_accuracy": study.teacher_accuracy, "students": len(study.table),
            "students_planned": len(config.ranks) * len(config.seeds),
            "student_epochs": {"total": int(study.table["epochs"].sum()), "max": int(study.table["epochs"].max()),
                               "stop_reasons": study.table["stop_reason"].value_counts().to_dict()},
            "region": [result.low.describe(), result.high.describe()], "knee": result.knee,
            "intervals": {k: v.to_dict() for k, v in (result.intervals or {}).items()},
            "converged": found.converged, "verdict": found.verdict(), "convergence": found.to_dict()}


def figure(record: dict, path: Path) -> None:
    """Region and knee against the budget, every init on one figure (rebuilt from the run folders)."""
    found = {init: study_convergence(load_study(entry["run_dir"])) for init, entry in record["inits"].items()}
    fig = plot_convergence(found)
    fig.axes[0].set_title(f"{record['preset']}: region and knee against the student budget, "
                          f"{len(record['seeds'])} seeds per init")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--inits", nargs="+", default=["svd", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", type=parse_assignment, default=[],
                        metavar="FIELD=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--init-set", dest="per_init", action="append", type=parse_init_assignment, default=[],
                        metavar="INIT:FIELD=VALUE", help="override a config field for one init only (repeatable)")
    parser.add_argument("--results", type=Path, default=Path("results/init_study"))
    parser.add_argument("--out", type=Path, default=Path("docs/init_study.json"))
    parser.add_argument("--figure", type=Path, default=Path("docs/init_study.png"))
    parser.add_argument("--replot", action="store_true", help="redraw the figure from --out's run folders")
    parser.add_argument("--no-train", action="store_true",
                        help="record the students that have finished so far, training nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.replot:
        figure(json.loads(args.out.read_text()), args.figure)
        return 0
    per_init: dict[str, dict] = {}
    for init, (name, value) in args.per_init:
        per_init.setdefault(init, {})[name] = value
    try:  # bad settings fail here, before any training
        fields = init_fields(args.inits, args.seeds, dict(args.overrides), per_init)
        for given in fields.values():
            load_preset(args.preset, given)
        if args.no_train:
            for init in args.inits:
                if not (args.results / f"{args.preset}-{init}" / SWEEP_CSV).exists():
                    raise ValueError(f"--no-train: {args.results / f'{args.preset}-{init}'} has no finished "
                                     "students; leave the init out of --inits or train it")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = {"command": "python " + " ".join(sys.argv), "preset": args.preset, "seeds": args.seeds,
              "overrides": dict(args.overrides), "per_init": per_init, "complete": not args.no_train, "inits": {}}
    for init, given in fields.items():
        if record["inits"] and "teacher_checkpoint" not in given:  # the first init's teacher, trained once
            first = Path(record["inits"][args.inits[0]]["run_dir"])
            given = given | {"teacher_checkpoint": str(first / TEACHER_FILE)}
        record["inits"][init] = run_one(load_preset(args.preset, given), args.results, sweep=not args.no_train)
    if len(args.inits) == 2:
        a, b = (record["inits"][i] for i in args.inits)
        record["intervals_overlap"] = {name: overlap(a["intervals"].get(name), b["intervals"].get(name))
                                       for name in QUANTITY_LABELS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    figure(record, args.figure)
    for init, entry in record["inits"].items():
        print(f"{init}: region [{entry['region'][0]}, {entry['region'][1]}], knee {entry['knee']}; "
              f"{entry['verdict']}; intervals " + "; ".join(f"{k} {v['describe']}" for k, v in
                                                             entry["intervals"].items()))
    if "intervals_overlap" in record:
        print("bootstrap intervals overlap:", record["intervals_overlap"])
    print(f"written: {args.out}, {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
