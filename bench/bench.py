"""Benchmark (not a test): measures side by side, on this machine, in one run, and prints a table.

1. Throughput of K students trained fused (one batch stream, one teacher pass per batch) vs one after another.
2. Wall time to the project's own verdict "converged" on ``demo``: a dense grid (every rank at the refinement
   tolerance, students stopped by ``demo``'s own rule: the plateau rule and the band stop) beside each candidate
   of the fast path (:data:`CANDIDATES`: adaptive ranks and fused students, then the band stop, then the
   teacher-logit cache), all from one trained teacher, in one run: per run the verdict, region, knee, students,
   student-epochs, seconds and seconds / the teacher's training (the teacher trained three times, first, between
   and last, the best taken, so that students and teacher are timed under the same conditions on a shared
   machine), and whether its region and its knee agree with the dense grid's. Beside it, the paper's
   protocol shape (random init, the dense grid, a fixed budget of 10x the teacher's epochs) projected from the
   per-epoch times measured in the dense run (an estimate, labelled as such).
3. Achieved GFLOP/s of a teacher training step vs the measured fp32 matmul peak.

    python bench/bench.py [--out bench/results.json] [--quick]

``--quick`` shrinks every measurement (for checking that the script runs, not for numbers).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from effrank_utils.estimate.convergence import ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE, convergence
from effrank_utils.estimate.curves import effective_rank
from effrank_utils.estimate.refine import tolerance
from effrank_utils.lowrank.factorize import factorize
from effrank_utils.records.run_folder import read_epochs
from effrank_utils.run.entry import load_preset
from effrank_utils.run.presets import PRESETS
from effrank_utils.run.sweep import run_sweep
from effrank_utils.run.teacher import CrossEntropy, train_teacher
from effrank_utils.training.data import ImageData, pipeline_for
from effrank_utils.training.distill import DistillationLoss
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.loop import Recipe, fit, make_optimizer, recipe_for
from effrank_utils.training.models import build_model, resolve_device

warnings.filterwarnings("ignore", message=".*break-even.*")


def best_of(n: int, fn) -> float:
    """The shortest of ``n`` timed calls: the least disturbed by other work on a shared machine."""
    return min(timed(fn)[0] for _ in range(n))


def timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    tic = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - tic, out


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 20) -> float:
    """fp32 GFLOP/s of a square matmul (the machine's practical peak; best of 3)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    seconds = best_of(3, lambda: [a @ b for _ in range(repeats)])
    return 2 * size ** 3 * repeats / seconds / 1e9


def synthetic_pipeline(device: torch.device, images: int, batch: int):
    """A config for a dim-192, 6-block timm ViT on 32x32 inputs and a pipeline over random images."""
    cfg = load_preset("smoke", image_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0,
                      ranks=[4, 8], student_batch_size=batch, student_epochs=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    data = ImageData("synthetic", x, y, x[:batch], y[:batch], 10).to(device)
    return cfg, pipeline_for(cfg, data, batch)


def teacher_step_gflops(device: torch.device, batch: int, steps: int) -> dict:
    """GFLOP/s of teacher training through the real loop (:func:`fit`: batches, forward, backward, AdamW, and
    the end-of-epoch evaluation of one batch); best of 3."""
    cfg, pipeline = synthetic_pipeline(device, batch * steps, batch)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=10, in_chans=3).to(device)
    opt = make_optimizer(model, Recipe(1, 1e-3, 0.05))
    x, y = next(pipeline.train_batches(0, 0)).x, torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:  # one step's FLOPs, counted by PyTorch
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    recipe = Recipe(1, 1e-3, 0.05)
    fit([model], CrossEntropy(), pipeline, recipe, seed=0)  # warm-up
    seconds = best_of(3, lambda: fit([model], CrossEntropy(), pipeline, recipe, seed=0))
    flops = counter.get_total_flops() * steps
    return {"batch": batch, "steps": steps, "gflop_per_step": counter.get_total_flops() / 1e9,
            "gflops": flops / seconds / 1e9, "images_per_s": batch * steps / seconds}


def fused_vs_sequential(device: torch.device, k: int, batches: int, batch: int) -> dict:
    """Images/s summed over K students: fused group vs the same K trained one after another."""
    cfg, pipeline = synthetic_pipeline(device, batches * batch, batch)
    torch.manual_seed(0)
    teacher = build_model(cfg, num_classes=10, in_chans=3).to(device).eval()
    ranks = [2, 4, 8, 12, 16, 24, 32, 48][:k]
    loss = DistillationLoss(teacher, "kd")
    recipe = recipe_for(cfg, "student")
    fit([factorize(teacher, ranks[0])], loss, pipeline, recipe, seed=0)  # warm-up
    fused_s, _ = timed(lambda: fit([factorize(teacher, r) for r in ranks], loss, pipeline, recipe, seed=0))
    seq_s, _ = timed(lambda: [fit([factorize(teacher, r)], loss, pipeline, recipe, seed=0) for r in ranks])
    n = len(ranks) * batches * batch
    return {"k": len(ranks), "ranks": ranks, "images": n, "fused_s": fused_s, "sequential_s": seq_s,
            "fused_images_per_s": n / fused_s, "sequential_images_per_s": n / seq_s, "speedup": seq_s / fused_s}


def dense_grid(low: int, high: int) -> list[int]:
    """Ranks spaced at the refinement tolerance: every rank where it is 1, 5% apart above."""
    ranks, r = [], low
    while r <= high:
        ranks.append(r)
        r += max(1, int(tolerance(r)))
    return ranks


PAPER_BUDGET = 10  # the paper trains students for 10x the teacher's epochs (200 vs 20)

#: The fast path and its candidate savings, each a sweep from the same teacher beside the dense grid. Every run
#: sets each field, so a preset default cannot leak into a candidate that should not have it.
BAND_STOP = PRESETS["demo"]["band_stop"]
FAST_PATH = dict(sweep_mode="adaptive", refine_rounds=6, fuse=8)
CANDIDATES = {
    "adaptive + fused": FAST_PATH | dict(band_stop=0.0, cache_teacher=False),
    "+ band stop": FAST_PATH | dict(band_stop=BAND_STOP, cache_teacher=False),
    "+ band stop + teacher cache": FAST_PATH | dict(band_stop=BAND_STOP, cache_teacher=True),
}
#: The reference: every rank of the dense grid (set below), trained under ``demo``'s own rule, so that it differs
#: from the fast path only in the ranks it trains.
DENSE = dict(sweep_mode="grid", fuse=8, band_stop=BAND_STOP, cache_teacher=False)


def _sweep(cfg, run_dir: Path, teacher_dir: Path, data, teacher_accuracy: float) -> dict:
    """One sweep from the trained teacher (copied in: its time is not counted): what a user gets and its cost."""
    run_dir.mkdir()
    for f in ("teacher.pt", "teacher.json"):
        (run_dir / f).write_bytes((teacher_dir / f).read_bytes())
    seconds, table = timed(functools.partial(run_sweep, cfg, run_dir, data=data))
    result = effective_rank(table["rank"], table["final_accuracy"], teacher_accuracy)
    found = convergence(read_epochs(run_dir), teacher_accuracy, stop_reasons=table["stop_reason"].tolist())
    return {"seconds": seconds, "students": len(table), "student_epochs": int(table["epochs"].sum()),
            "region": [result.region_low, result.region_high], "knee": result.knee,
            "converged": found.converged, "verdict": found.verdict(),
            "stop_reasons": table["stop_reason"].value_counts().to_dict(),
            "per_epoch_s": (table["seconds"] / table["epochs"]).tolist()}


def agree(values: list, reference: list) -> bool:
    """Each value within the convergence tolerance of the reference's (both present)."""
    return all(x is not None and y is not None and abs(x - y) < tolerance(y, ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE)
               for x, y in zip(values, reference))


def time_to_region(coarse: list[int], max_rank: int, **overrides) -> dict:
    """The dense grid and each fast-path candidate, all from one trained teacher and trained to ``demo``'s own
    stopping rule; the teacher trained three times (first, between, last) and the best taken as its cost."""
    base = load_preset("demo", ranks=coarse, **overrides)
    data = load_data_for(base)
    out: dict = {"coarse": coarse, "dense_ranks": dense_grid(1, max_rank), "candidates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = Path(tmp) / "teacher"
        teacher_s, teacher = timed(lambda: train_teacher(base, teacher_dir, data))
        out["teacher_accuracy"] = teacher.accuracy
        teacher_times = [teacher_s]
        def again(name: str) -> float:  # the teacher retrained: timed under the conditions the students just had
            return timed(functools.partial(train_teacher, base, Path(tmp) / f"teacher_{name}", data))[0]
        out["dense"] = _sweep(base.replace(ranks=out["dense_ranks"], **DENSE), Path(tmp) / "dense", teacher_dir,
                              data, teacher.accuracy)
        teacher_times.append(again("after_dense"))
        for i, (name, fields) in enumerate(CANDIDATES.items()):
            out["candidates"][name] = _sweep(base.replace(**fields), Path(tmp) / f"candidate{i}", teacher_dir,
                                             data, teacher.accuracy)
        teacher_times.append(again("last"))
    out["teacher_s"], out["teacher_times_s"] = min(teacher_times), teacher_times  # the least disturbed of three
    for run in [out["dense"], *out["candidates"].values()]:
        run["over_teacher"] = run["seconds"] / out["teacher_s"]
        run["speedup_vs_dense"] = out["dense"]["seconds"] / run["seconds"]
        run["region_agrees"] = agree(run["region"], out["dense"]["region"])
        run["knee_agrees"] = agree([run["knee"]], [out["dense"]["knee"]])
    paper_s = float(sum(out["dense"]["per_epoch_s"])) * PAPER_BUDGET * base.teacher_epochs
    out["paper_shape_estimate"] = {"seconds": paper_s, "over_teacher": paper_s / out["teacher_s"],
                                   "students": len(out["dense_ranks"]),
                                   "epochs_each": PAPER_BUDGET * base.teacher_epochs,
                                   "how": "estimate: the dense run's measured seconds per epoch of each rank x "
                                          f"{PAPER_BUDGET} x teacher epochs (random init costs the same per epoch)"}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the numbers")
    args = parser.parse_args()
    started = time.perf_counter()
    device = resolve_device("auto")
    q = args.quick
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                           "threads": torch.get_num_threads(), "torch": torch.__version__},
               "quick": q}
    results["matmul_peak_gflops"] = matmul_peak(device, 512 if q else 2048, 3 if q else 20)
    results["teacher_step"] = teacher_step_gflops(device, 16 if q else 128, 1 if q else 8)
    results["teacher_step"]["fraction_of_peak"] = results["teacher_step"]["gflops"] / results["matmul_peak_gflops"]
    results["fused"] = fused_vs_sequential(device, 2 if q else 8, 1 if q else 4, 16 if q else 128)
    quick = dict(student_epochs=2, teacher_epochs=2) if q else {}
    results["time_to_region"] = time_to_region([1, 2, 4, 8, 16, 32, 64], 16 if q else 64, **quick)
    results["bench_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    f, t, s = results["fused"], results["time_to_region"], results["teacher_step"]
    print(f"\n{'measure':<52}  {'ours':>9}  {'baseline':>9}  {'ratio':>7}  target")
    print(f"{'fused K students, images/s':<52}  {f['fused_images_per_s']:>9.0f}  {f['sequential_images_per_s']:>9.0f}  "
          f"{f['speedup']:>6.2f}x  >= 1.5x")
    print(f"{'teacher step GFLOP/s vs matmul peak':<52}  {s['gflops']:>9.1f}  {results['matmul_peak_gflops']:>9.1f}  "
          f"{s['fraction_of_peak']:>7.0%}  >= 60%")
    print(f"\nteacher: {t['teacher_s']:.1f} s (best of {', '.join(f'{x:.1f}' for x in t['teacher_times_s'])}), "
          f"accuracy {t['teacher_accuracy']:.4f}")
    print(f"{'run':<30} {'verdict':<14} {'region':<15} {'knee':>5} {'students':>8} {'st-epochs':>9} {'seconds':>8} "
          f"{'/teacher':>8} {'vs dense':>8} {'region':>6} {'knee':>6}")
    for name, run in [("dense grid", t["dense"]), *t["candidates"].items()]:
        lo, hi = run["region"]
        region = f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else str(run["region"])
        knee = f"{run['knee']:.2f}" if run["knee"] is not None else "-"
        print(f"{name:<30} {'converged' if run['converged'] else 'NOT converged':<14} {region:<15} {knee:>5} "
              f"{run['students']:>8} {run['student_epochs']:>9} {run['seconds']:>8.1f} {run['over_teacher']:>7.2f}x "
              f"{run['speedup_vs_dense']:>7.2f}x {'agrees' if run['region_agrees'] else 'DIFFERS':>6} "
              f"{'agrees' if run['knee_agrees'] else 'DIFFERS':>6}")
    print("target: the fast path <= 2x the teacher's training (stretch 1x); agrees: within the convergence "
          "tolerance (max(0.5, 5%)) of the dense grid's")
    print(f"paper protocol shape (ESTIMATE): {t['paper_shape_estimate']['seconds']:.0f} s = "
          f"{t['paper_shape_estimate']['over_teacher']:.1f}x the teacher")
    print(f"make bench: {results['bench_seconds'] / 60:.1f} min (budget 20)")
    print(f"machine: {results['machine']}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
