"""Does the band stop measure what independent converged students measure? (An experiment, not a test.)

Runs two studies of one preset with the same teacher and seeds: students stopped by the plateau rule alone
(``band_stop=0``, the reference) and students that also stop once clearly outside the band (``band_stop`` as
given). Records each study's region and knee with 95% bootstrap intervals over the seeds, its convergence verdict
and cost, and whether the band-stop study's r_lo, r_hi and knee lie within the reference study's intervals.

    python bench/band_stop_validation.py --preset demo --seeds 0 1 2 --out docs/band_stop_digits.json
    python bench/band_stop_validation.py --preset demo --set dataset=imagefolder \
        --set data_root=../shared/data/cifar10 ... --out docs/band_stop_cifar10.json

Run folders go to ``--results/{independent,band_stop}`` and resume like any sweep; the band-stop study loads the
reference study's teacher (``teacher_checkpoint``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from init_study import run_one  # bench/ is the script's folder, so its sibling imports

from effrank_utils.estimate.curves import QUANTITY_LABELS
from effrank_utils.records.run_folder import TEACHER_FILE
from effrank_utils.run.entry import load_preset
from effrank_utils.run.presets import parse_assignment


def within(value: float | None, interval: dict | None) -> bool | None:
    """Whether ``value`` lies in a bootstrap interval (``low``/``high``); None when either is missing."""
    if value is None or not interval or interval["low"] is None:
        return None
    return interval["low"] <= value <= interval["high"]


def point(entry: dict, name: str) -> float | None:
    """A study's r_lo, r_hi or knee as a number (None where missing)."""
    if name == "knee":
        return entry["knee"]
    return entry["convergence"]["at_budget"][-1][name]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--band-stop", type=float, default=0.03, help="the margin of the band-stop study")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_assignment, default=[],
                        metavar="FIELD=VALUE", help="override a config field of both studies (repeatable)")
    parser.add_argument("--results", type=Path, default=Path("results/band_stop_validation"))
    parser.add_argument("--out", type=Path, default=Path("docs/band_stop_digits.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    given = dict(args.overrides) | {"seeds": args.seeds}
    try:  # bad settings fail here, before any training
        studies = {"independent": load_preset(args.preset, given | {"band_stop": 0.0}),
                   "band_stop": load_preset(args.preset, given | {"band_stop": args.band_stop})}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = {"command": "python " + " ".join(sys.argv), "preset": args.preset, "seeds": args.seeds,
              "overrides": dict(args.overrides), "band_stop": args.band_stop, "studies": {}}
    reference = record["studies"]["independent"] = run_one(studies["independent"], args.results / "independent")
    teacher = Path(reference["run_dir"]) / TEACHER_FILE
    candidate = record["studies"]["band_stop"] = run_one(
        studies["band_stop"].replace(teacher_checkpoint=str(teacher)), args.results / "band_stop")
    record["within_independent_intervals"] = {
        name: within(point(candidate, name), reference["intervals"].get(name)) for name in QUANTITY_LABELS}
    record["cost_ratio"] = candidate["student_epochs"]["total"] / reference["student_epochs"]["total"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    for name, entry in record["studies"].items():
        print(f"{name}: region [{entry['region'][0]}, {entry['region'][1]}], knee {entry['knee']}; "
              f"{entry['student_epochs']['total']} student-epochs; {entry['verdict']}; intervals "
              + "; ".join(f"{k} {v['describe']}" for k, v in entry["intervals"].items()))
    print("band stop within the independent students' intervals:", record["within_independent_intervals"],
          f"at {record['cost_ratio']:.2f} of their student-epochs")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
