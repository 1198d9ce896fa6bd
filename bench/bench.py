"""Benchmark (not a test): measures side by side, on this machine, in one run, and prints a table.

1. Throughput of K students trained fused (one batch stream, one teacher pass per batch) vs one after another.
2. Wall time to a converged effective-rank region (students stop at a validation plateau): the fast path
   (SVD init, adaptive refinement, fused students) vs a dense grid (spaced at the refinement tolerance) of
   independent students, and the fast path's cost as a multiple of the teacher's training time (the teacher
   trained three times, interleaved with the two sweeps, and the best taken, so that both are timed under the
   same conditions on a shared machine). Beside it, the
   paper's protocol shape (random init, the dense grid, a fixed budget of 10x the teacher's epochs) projected
   from the per-epoch times measured in the dense run (an estimate, labelled as such).
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

from effrank_utils.estimate.convergence import convergence
from effrank_utils.estimate.curves import effective_rank
from effrank_utils.estimate.refine import tolerance
from effrank_utils.lowrank.factorize import factorize
from effrank_utils.records.run_folder import read_epochs
from effrank_utils.run.entry import load_preset
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
    opt = make_optimizer(model, Recipe(1, 1e-3, 0.05), device)
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


def time_to_region(student_epochs: int, coarse: list[int], max_rank: int, teacher_epochs: int) -> dict:
    """Adaptive + fused vs a dense grid of independent students, both from the same trained teacher and both
    trained to convergence (``demo``'s early stopping, ``student_epochs`` the cap)."""
    base = load_preset("demo", student_epochs=student_epochs, teacher_epochs=teacher_epochs, ranks=coarse)
    data = load_data_for(base)
    out: dict = {"student_epochs": student_epochs, "coarse": coarse}
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = Path(tmp) / "teacher"
        teacher_s, teacher = timed(lambda: train_teacher(base, teacher_dir, data))
        out["teacher_accuracy"] = teacher.accuracy
        teacher_times = [teacher_s]
        runs = {"dense": base.replace(ranks=dense_grid(1, max_rank), fuse=1),
                "adaptive": base.replace(sweep_mode="adaptive", refine_rounds=6, fuse=8)}
        for name, cfg in runs.items():
            run_dir = Path(tmp) / name
            run_dir.mkdir()
            for f in ("teacher.pt", "teacher.json"):  # the same teacher for both: its time is not counted
                (run_dir / f).write_bytes((teacher_dir / f).read_bytes())
            seconds, table = timed(functools.partial(run_sweep, cfg, run_dir, data=data))
            # the teacher again, right after: timed under the conditions the students just had
            again = Path(tmp) / f"teacher_after_{name}"
            teacher_times.append(timed(functools.partial(train_teacher, base, again, data))[0])
            result = effective_rank(table["rank"], table["final_accuracy"], teacher.accuracy)
            found = convergence(read_epochs(run_dir), teacher.accuracy, stop_reasons=table["stop_reason"].tolist())
            out[name] = {"seconds": seconds, "students": len(table), "student_epochs": int(table["epochs"].sum()),
                         "region": [result.region_low, result.region_high], "knee": result.knee,
                         "converged": found.converged, "verdict": found.verdict()}
            if name == "dense":  # per-epoch wall time of one independent student, by rank
                per_epoch = (table["seconds"] / table["epochs"]).to_numpy()
    teacher_s = min(teacher_times)  # best of the three interleaved trainings: the least disturbed
    out["teacher_s"], out["teacher_times_s"] = teacher_s, teacher_times
    out["speedup"] = out["dense"]["seconds"] / out["adaptive"]["seconds"]
    out["fast_path_over_teacher"] = out["adaptive"]["seconds"] / teacher_s
    paper_s = float(per_epoch.sum()) * PAPER_BUDGET * teacher_epochs
    out["paper_shape_estimate"] = {"seconds": paper_s, "over_teacher": paper_s / teacher_s,
                                   "students": len(per_epoch), "epochs_each": PAPER_BUDGET * teacher_epochs,
                                   "how": "estimate: the dense run's measured seconds per epoch of each rank x "
                                          f"{PAPER_BUDGET} x teacher epochs (random init costs the same per epoch)"}
    step = max(b - a for a, b in zip(coarse, coarse[1:]) if a <= (out["dense"]["region"][1] or max_rank) <= b)
    out["coarse_step_at_region"] = step
    out["regions_agree"] = all(a is not None and b is not None and abs(a - b) <= step
                               for a, b in zip(out["dense"]["region"], out["adaptive"]["region"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the numbers")
    args = parser.parse_args()
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
    results["time_to_region"] = time_to_region(2 if q else 64, [1, 2, 4, 8, 16, 32, 64], 16 if q else 64,
                                               2 if q else 60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    f, t, s = results["fused"], results["time_to_region"], results["teacher_step"]
    rows = [
        ("fused K students, images/s", f"{f['fused_images_per_s']:.0f}", f"{f['sequential_images_per_s']:.0f}",
         f"{f['speedup']:.2f}x", ">= 1.5x"),
        ("time to converged region (s), adaptive+fused vs dense", f"{t['adaptive']['seconds']:.1f}",
         f"{t['dense']['seconds']:.1f}", f"{t['speedup']:.2f}x", ">= 5x"),
        ("converged estimate (fast path) / teacher training", f"{t['adaptive']['seconds']:.1f}",
         f"{t['teacher_s']:.1f}", f"{t['fast_path_over_teacher']:.2f}x", "<= 2x (stretch 1x)"),
        ("paper protocol shape (ESTIMATE) / teacher training", f"{t['paper_shape_estimate']['seconds']:.0f}",
         f"{t['teacher_s']:.1f}", f"{t['paper_shape_estimate']['over_teacher']:.1f}x", "(reference)"),
        ("teacher step GFLOP/s vs matmul peak", f"{s['gflops']:.1f}", f"{results['matmul_peak_gflops']:.1f}",
         f"{s['fraction_of_peak']:.0%}", ">= 60%"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'ours':>9}  {'baseline':>9}  {'ratio':>7}  target")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>9}  {r[2]:>9}  {r[3]:>7}  {r[4]}")
    print(f"\nregions: adaptive {t['adaptive']['region']} ({t['adaptive']['students']} students) vs dense "
          f"{t['dense']['region']} ({t['dense']['students']} students); agree within one coarse step "
          f"({t['coarse_step_at_region']}): {t['regions_agree']}")
    print(f"budget: adaptive {t['adaptive']['verdict']}; dense {t['dense']['verdict']}")
    print(f"machine: {results['machine']}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
