"""Experiment (issue #25 item 3): does one nested any-rank student measure the curve independent students measure?

One teacher is trained (or loaded from ``--run-dir``). Then, on one batch stream per seed and with a constant
learning rate (so that the accuracy after epoch k is the accuracy of a k-epoch budget):

* independent SVD + KD students, one per grid rank, trained in lockstep (``fit``), for ``--epochs``;
* nested students (:mod:`effrank_utils.lowrank.nested`): one SVD-initialized student of the largest grid rank
  ``R``, trained with several ranks per step (the sandwich rule of slimmable networks: ``R``, the smallest
  grid rank and others), each rank's loss summed into one step, and evaluated at every grid rank by truncation
  (:func:`~effrank_utils.lowrank.nested.truncated_student`) at snapshot epochs.

Every curve is read with :func:`~effrank_utils.estimate.curves.effective_rank` (reference: the teacher's accuracy,
band 85-95%); the independent students' seeds give the 95% bootstrap intervals a nested curve must fall in.
Costs: student-epochs (one student forward + backward over the training split = 1; a nested step at k ranks
costs k) and wall time measured in the same process, one after the other (the machine may be shared: read
ratios, not seconds). Results are merged into ``--out`` (JSON) and printed as a table.

    nice -n 10 python bench/nested.py --seeds 0,1,2 --nested-seeds 0 --out bench/nested_results.json
    python bench/nested.py --table-only --out bench/nested_results.json   # reprint the table
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from effrank_utils.base.seeds import derive_seed
from effrank_utils.estimate.curves import effective_rank
from effrank_utils.lowrank.factorize import factorize
from effrank_utils.lowrank.nested import at_rank, nested_student, truncated_student
from effrank_utils.run.entry import load_preset
from effrank_utils.run.presets import parse_assignment
from effrank_utils.run.teacher import train_teacher
from effrank_utils.training.data import Batch, pipeline_for
from effrank_utils.training.distill import DistillationLoss, kd_loss
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.loop import evaluate, fit, recipe_for
from effrank_utils.training.models import resolve_device

warnings.filterwarnings("ignore", message=".*break-even.*")


# ------------------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """How a nested student is trained.

    ``extra``: grid ranks drawn per step besides the largest and the smallest (``-1``: every grid rank);
    ``inplace``: ranks below ``R`` are distilled from the rank-``R`` output of the same step (detached) instead
    of the teacher; ``weights``: ``"equal"`` or ``"log"`` (rank ``r`` weighted ``1 + log2(R / r)``);
    ``epochs``: training epochs; ``snapshots``: epochs at which every grid rank is evaluated.
    """

    extra: int = 2
    inplace: bool = False
    weights: str = "equal"
    epochs: int = 48
    snapshots: tuple[int, ...] = (24, 48)
    note: str = ""


#: The rules tried. ``sandwich`` is the outside calibration's rule; its run is long so that its later snapshots are
#: "more epochs at equal wall time" (a constant rate makes epoch k of a long run a k-epoch run).
RULES: dict[str, Rule] = {
    "sandwich": Rule(epochs=144, snapshots=(24, 48, 72, 96, 120, 144),
                     note="R, min + 2 grid ranks per step, KD from teacher (the calibration rule)"),
    "all_ranks": Rule(extra=-1, note="every grid rank each step, KD from teacher"),
    "inplace": Rule(inplace=True, note="R, min + 2; ranks < R distilled from the rank-R output"),
    "weighted": Rule(weights="log", note="R, min + 2; loss of rank r weighted 1 + log2(R/r)"),
    "all_weighted": Rule(extra=-1, weights="log", note="every grid rank, weighted 1 + log2(R/r)"),
}


class NestedObjective:
    """``fit`` objective for one nested student: the teacher once per batch, then the rule's ranks, each at
    ``at_rank``, their (weighted) KD losses summed into the one loss ``fit`` backpropagates and steps on."""

    def __init__(self, teacher: nn.Module, grid: Sequence[int], rule: Rule, temperature: float, alpha: float,
                 seed: int) -> None:
        self.teacher, self.rule, self.t, self.alpha = teacher.eval(), rule, temperature, alpha
        self.grid = sorted(grid)
        self.top, self.bottom = self.grid[-1], self.grid[0]
        self.middle = self.grid[1:-1]
        self.generator = torch.Generator().manual_seed(derive_seed(seed, 25))
        self.passes = 0  # student forward + backward passes over a batch, all ranks counted

    def ranks(self) -> list[int]:
        """This step's ranks, the largest first (the in-place rule needs its output before the others)."""
        if self.rule.extra < 0 or self.rule.extra >= len(self.middle):
            chosen = self.middle
        else:
            picks = torch.randperm(len(self.middle), generator=self.generator)[:self.rule.extra]
            chosen = [self.middle[i] for i in picks.tolist()]
        return [self.top, *sorted(chosen, reverse=True), self.bottom]

    def weight(self, rank: int) -> float:
        return 1.0 + math.log2(self.top / rank) if self.rule.weights == "log" else 1.0

    @torch.no_grad()
    def shared(self, batch: Batch) -> torch.Tensor:
        return self.teacher(batch.x)

    def loss(self, model: nn.Module, batch: Batch, teacher_logits: torch.Tensor) -> torch.Tensor:
        total, top_logits = torch.zeros((), device=batch.x.device), None
        for rank in self.ranks():
            with at_rank(model, rank):
                logits = model(batch.x)
            if rank == self.top:
                top_logits = logits.detach()
            target = top_logits if self.rule.inplace and rank != self.top else teacher_logits
            total = total + self.weight(rank) * kd_loss(logits, target, batch.y, self.t, self.alpha)
            self.passes += 1
        return total


# --------------------------------------------------------------------------------------------- training
def independent(config, teacher, data, grid: Sequence[int], seed: int, epochs: int) -> dict:
    """One fused group of independent students (one per grid rank): per-rank test accuracy per epoch, and time."""
    device = resolve_device(config.device)
    pipeline = pipeline_for(config, data, config.student_batch_size)
    students = [factorize(teacher, r, init="svd", targets=config.targets, seed=derive_seed(seed, r)).to(device)
                for r in grid]
    recipe = recipe_for(config.replace(student_epochs=epochs), "student")
    tic = time.perf_counter()
    results = fit(students, DistillationLoss(teacher, config.loss, config.kd_temperature, config.kd_alpha),
                  pipeline, recipe, seed=seed, amp=config.amp, desc=f"independent seed {seed}")
    wall = time.perf_counter() - tic
    return {"seed": seed, "epochs": epochs, "wall_seconds": wall,
            "train_seconds": [h["seconds"] for h in results[0].history],  # the group's, per epoch
            "accuracy": {str(r): [h["test_accuracy"] for h in res.history] for r, res in zip(grid, results)},
            "student_epochs": epochs * len(grid)}


def nested(config, teacher, data, grid: Sequence[int], seed: int, rule: Rule) -> dict:
    """One nested student trained by ``rule``; accuracy at every grid rank (by truncation) at the snapshots."""
    device = resolve_device(config.device)
    pipeline = pipeline_for(config, data, config.student_batch_size)
    model = nested_student(teacher, max(grid), targets=config.targets, seed=seed).to(device)
    objective = NestedObjective(teacher, grid, rule, config.kd_temperature, config.kd_alpha, seed)
    recipe = recipe_for(config.replace(student_epochs=rule.epochs), "student")
    snapshots: dict[str, dict] = {}
    spent = {"eval": 0.0}
    tic = time.perf_counter()

    def on_epoch(epoch: int, results) -> None:
        if epoch not in rule.snapshots:
            return
        start = time.perf_counter()
        accuracy = {str(r): evaluate(truncated_student(model, r), pipeline, config.amp) for r in grid}
        # the same numbers through at_rank (no copy), as a check of the truncation on the trained student
        with at_rank(model, grid[0]):
            check = evaluate(model, pipeline, config.amp)
        spent["eval"] += time.perf_counter() - start
        history = results[0].history
        snapshots[str(epoch)] = {
            "accuracy": accuracy, "passes": objective.passes,
            "student_epochs": objective.passes / pipeline.steps_per_epoch(),
            "train_seconds": sum(h["seconds"] for h in history[:epoch]),
            "wall_seconds": time.perf_counter() - tic - spent["eval"],  # without these all-rank evaluations
            "all_rank_eval_seconds": time.perf_counter() - start,
            "at_rank_check": {"rank": grid[0], "accuracy": check, "equal": check == accuracy[str(grid[0])]}}

    results = fit([model], objective, pipeline, recipe, seed=seed, amp=config.amp, on_epoch=on_epoch,
                  desc=f"nested seed {seed}")
    return {"seed": seed, "rule": asdict(rule), "snapshots": snapshots,
            "epoch_seconds": [h["seconds"] for h in results[0].history]}


def timing(config, teacher, data, grid: Sequence[int], rules: Sequence[str], rounds: int) -> dict:
    """Side-by-side cost: one epoch (``fit``, evaluation included) of the independent group, then of each nested
    rule, in turn, ``rounds`` times; the medians per epoch and their ratios to the independent group's.

    Interleaving keeps the ratios fair on a machine whose load changes (other jobs): each round sees about the
    same load for every estimator."""
    device = resolve_device(config.device)
    pipeline = pipeline_for(config, data, config.student_batch_size)
    recipe = recipe_for(config.replace(student_epochs=1), "student")
    ind = [factorize(teacher, r, init="svd", targets=config.targets).to(device) for r in grid]
    kd = DistillationLoss(teacher, config.loss, config.kd_temperature, config.kd_alpha)
    models = {name: nested_student(teacher, max(grid), targets=config.targets).to(device) for name in rules}
    seconds: dict[str, list[float]] = {"independent": [], **{name: [] for name in rules}}
    for round_ in range(rounds):
        for name in seconds:
            tic = time.perf_counter()
            if name == "independent":
                fit(ind, kd, pipeline, recipe, seed=round_, amp=config.amp, desc="timing independent")
            else:
                objective = NestedObjective(teacher, grid, RULES[name], config.kd_temperature, config.kd_alpha, 0)
                fit([models[name]], objective, pipeline, recipe, seed=round_, amp=config.amp, desc=f"timing {name}")
            seconds[name].append(time.perf_counter() - tic)
    median = {name: float(np.median(v)) for name, v in seconds.items()}
    return {"rounds": rounds, "epoch_seconds": seconds, "median_epoch_seconds": median,
            "epoch_ratio": {name: median[name] / median["independent"] for name in median}}


# --------------------------------------------------------------------------------------------- analysis
def estimate(grid: Sequence[int], per_seed: Sequence[dict[str, float]], reference: float) -> dict:
    """Region and knee (with 95% bootstrap intervals when there are several seeds) of per-seed accuracies."""
    ranks = [r for _ in per_seed for r in grid]
    acc = [seed_acc[str(r)] for seed_acc in per_seed for r in grid]
    res = effective_rank(ranks, acc, reference, n_bootstrap=1000, seed=0)
    out = {"region_low": res.region_low, "region_high": res.region_high, "knee": res.knee,
           "region_low_describe": res.low.describe(), "region_high_describe": res.high.describe(),
           "mean_accuracy": {str(r): float(a) for r, a in zip(res.ranks.astype(int), res.mean_accuracy)}}
    if res.intervals:
        out["intervals"] = {k: v.to_dict() for k, v in res.intervals.items()}
    return out


def inside(value: float | None, interval: dict | None) -> bool | None:
    if value is None or interval is None or interval.get("low") is None:
        return None
    return interval["low"] <= value <= interval["high"]


def analyse(record: dict) -> dict:
    """Every estimate (independent at each budget, each nested rule at each snapshot) against the independent
    students' intervals at the reference budget; cost ratios against the independent students."""
    grid, teacher = record["grid"], record["teacher_accuracy"]
    ind = record["independent"]
    epochs = record["epochs"]
    summary: dict = {"reference_budget_epochs": epochs, "rows": []}
    budgets = sorted({epochs // 2, epochs})
    ind_seeds = [str(s) for s in sorted(int(s) for s in ind)]
    reference_interval = None
    ind_wall = ind_train = None
    for budget in budgets:
        per_seed = [{r: ind[s]["accuracy"][r][budget - 1] for r in ind[s]["accuracy"]} for s in ind_seeds]
        est = estimate(grid, per_seed, teacher)
        wall = float(np.mean([ind[s]["wall_seconds"] * budget / ind[s]["epochs"] for s in ind_seeds]))
        train = float(np.mean([sum(ind[s]["train_seconds"][:budget]) for s in ind_seeds]))
        if budget == epochs:
            reference_interval, ind_wall, ind_train, ind_mean = est.get("intervals"), wall, train, est["mean_accuracy"]
        summary["rows"].append({"name": f"independent@{budget}", "rule": "independent", "epochs": budget,
                                "seeds": len(ind_seeds), "estimate": est,
                                "student_epochs": budget * len(grid), "wall_seconds": wall, "train_seconds": train})
    for name, runs in record.get("nested", {}).items():
        seeds = sorted(runs)
        for snap in sorted({e for s in seeds for e in runs[s]["snapshots"]}, key=int):
            have = [s for s in seeds if snap in runs[s]["snapshots"]]
            snaps = [runs[s]["snapshots"][snap] for s in have]
            est = estimate(grid, [x["accuracy"] for x in snaps], teacher)
            summary["rows"].append({
                "name": f"{name}@{snap}", "rule": name, "epochs": int(snap), "seeds": len(have), "estimate": est,
                "student_epochs": float(np.mean([x["student_epochs"] for x in snaps])),
                "wall_seconds": float(np.mean([x["wall_seconds"] for x in snaps])),
                "train_seconds": float(np.mean([x["train_seconds"] for x in snaps]))})
    for row in summary["rows"]:
        est = row["estimate"]
        row["inside"] = {k: inside(est[k], (reference_interval or {}).get(k)) for k in ("region_low", "region_high",
                                                                                         "knee")}
        row["all_inside"] = all(v is True for v in row["inside"].values())
        row["wall_ratio"] = row["wall_seconds"] / ind_wall if ind_wall else None
        row["train_ratio"] = row["train_seconds"] / ind_train if ind_train else None
        timed = record.get("timing", {}).get("median_epoch_seconds", {})
        row["timed_ratio"] = (row["epochs"] * timed[row["rule"]] / (epochs * timed["independent"])
                              if row["rule"] in timed and "independent" in timed else None)
        gaps = {r: est["mean_accuracy"][r] - ind_mean[r] for r in ind_mean}
        row["accuracy_gap_vs_independent"] = gaps
        row["worst_gap"] = min(gaps.values())
    return summary


def table(summary: dict) -> str:
    def interval(est: dict, key: str) -> str:
        iv = (est.get("intervals") or {}).get(key)
        return f" [{iv['low']:.2f},{iv['high']:.2f}]" if iv and iv.get("low") is not None else ""

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def num(v: float | None) -> str:
        return "  -  " if v is None else f"{v:5.2f}"

    lines = [f"{'estimator':<18} {'seeds':>5} {'r_lo':>18} {'r_hi':>18} {'knee':>18} {'in?':>5} "
             f"{'worst gap':>9} {'st-ep':>6} {'timed x':>7} {'train x':>7} {'wall x':>7}"]
    for row in summary["rows"]:
        est = row["estimate"]
        cells = [f"{num(est[k])}{interval(est, k)}" for k in ("region_low", "region_high", "knee")]
        flags = "".join({True: "y", False: "n", None: "?"}[row["inside"][k]] for k in ("region_low", "region_high",
                                                                                      "knee"))
        lines.append(f"{row['name']:<18} {row['seeds']:>5} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18} {flags:>5} "
                     f"{row['worst_gap']:>+9.3f} {row['student_epochs']:>6.0f} {ratio(row['timed_ratio']):>7} "
                     f"{row['train_ratio']:>7.2f} "
                     f"{row['wall_ratio']:>7.2f}")
    return "\n".join(lines)


def per_rank_table(record: dict, summary: dict, names: Sequence[str]) -> str:
    grid = record["grid"]
    rows = {row["name"]: row for row in summary["rows"]}
    lines = [f"{'rank':>5} " + " ".join(f"{n:>16}" for n in names)]
    for r in grid:
        lines.append(f"{r:>5} " + " ".join(f"{rows[n]['estimate']['mean_accuracy'][str(r)]:>16.4f}"
                                            for n in names if n in rows))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_assignment, default=[])
    parser.add_argument("--epochs", type=int, default=48, help="independent students' budget (the reference)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the independent students ('' for none)")
    parser.add_argument("--nested-seeds", default="0")
    parser.add_argument("--rules", default=",".join(RULES), help=f"nested rules, of {', '.join(RULES)}")
    parser.add_argument("--run-dir", type=Path, default=Path("results/nested_demo"))
    parser.add_argument("--out", type=Path, default=Path("bench/nested_results.json"))
    parser.add_argument("--rule-epochs", type=int, default=None,
                        help="override every rule's epochs (one snapshot at the end); for a smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--timing-rounds", type=int, default=0,
                        help="rounds of the interleaved side-by-side timing (0: skip)")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="records of other runs of the same study to merge into --out")
    parser.add_argument("--table-only", action="store_true", help="only reprint the table from --out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    for path in args.merge:
        other = json.loads(path.read_text())
        if record and (record.get("grid") != other.get("grid")
                       or record.get("teacher_accuracy") != other.get("teacher_accuracy")):
            raise SystemExit(f"--merge: {path} holds another study")
        for key, value in other.items():
            if key in ("independent", "nested"):
                for name, runs in value.items():
                    if key == "nested":
                        record.setdefault(key, {}).setdefault(name, {}).update(runs)
                    else:
                        record.setdefault(key, {})[name] = runs
            elif key == "timing" or key not in record:
                record[key] = value
    if not args.table_only:
        run(args, record)
    if not record.get("independent"):
        print(f"{args.out}: no independent students yet (run with --seeds, or --merge a record that has them)")
        return
    summary = analyse(record)
    record["summary"] = summary
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(table(summary))
    names = [row["name"] for row in summary["rows"]]
    print(per_rank_table(record, summary, [n for n in names if n.startswith("independent")]
                         + [n for n in names if not n.startswith("independent")]))


def run(args: argparse.Namespace, record: dict) -> None:
    config = load_preset(args.preset, dict(args.overrides) | {
        "student_schedule": "constant", "student_patience": 0, "student_warmup_epochs": 0})
    grid = sorted(config.ranks)
    data = load_data_for(config)
    tic = time.perf_counter()
    teacher = train_teacher(config, args.run_dir, data)
    device = resolve_device(config.device)
    model = teacher.model.to(device).eval()
    data = data.to(device)
    if record and (record.get("grid") != grid or record.get("teacher_accuracy") != teacher.accuracy):
        raise SystemExit(f"--out: {args.out} holds another study (grid or teacher differ); use another --out")
    record.update({"preset": args.preset, "config": config.to_dict(), "grid": grid, "epochs": args.epochs,
                   "teacher_accuracy": teacher.accuracy, "teacher_seconds": time.perf_counter() - tic,
                   "machine": {"platform": platform.platform(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(),
                               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                               "note": "shared machine (2 cores, other jobs beside, nice 10): compare ratios "
                                       "measured in one run"},
                   "rules": {k: asdict(v) for k, v in RULES.items()}})
    record.setdefault("independent", {})
    record.setdefault("nested", {})
    save = lambda: args.out.write_text(json.dumps(record, indent=1) + "\n")  # noqa: E731
    rules = [n for n in args.rules.split(",") if n.strip()]
    if args.timing_rounds:
        record["timing"] = timing(config, model, data, grid, rules, args.timing_rounds)
        print("timing, epoch seconds / independent group's:", json.dumps(record["timing"]["epoch_ratio"]), flush=True)
        save()
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        record["independent"][str(seed)] = independent(config, model, data, grid, seed, args.epochs)
        print(f"independent seed {seed}: {record['independent'][str(seed)]['wall_seconds']:.1f} s", flush=True)
        save()
    for name in rules:
        for seed in [int(s) for s in args.nested_seeds.split(",") if s.strip()]:
            rule = RULES[name]
            if args.rule_epochs:
                rule = replace(rule, epochs=args.rule_epochs, snapshots=(args.rule_epochs,))
            out = nested(config, model, data, grid, seed, rule)
            record["nested"].setdefault(name, {})[str(seed)] = out
            last = out["snapshots"][max(out["snapshots"], key=int)]
            print(f"nested {name} seed {seed}: {last['wall_seconds']:.1f} s", flush=True)
            save()


if __name__ == "__main__":
    main()
