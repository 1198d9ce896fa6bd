"""The paper's protocol at full speed on one GPU: a benchmark (not a test), measured side by side in one run.

Synthetic data of CIFAR's shape (32 px, 100 classes) upscaled on the device to the model's 224 px, random
weights (no downloads). For the teacher (torchvision ViT-B/32) and KD students at ranks 8, 32 and 128, each in
eager and ``torch.compile`` form, at the author's batch of 24 and at a larger batch (learning rate scaled
linearly): images/s, achieved TFLOP/s (FLOPs counted by PyTorch), the fraction of the *measured* bf16 matmul
peak and the peak memory. Then several small same-shape students (seeds of one rank) in flight at once --
CUDA streams, and ``torch.func.vmap`` over stacked parameters -- against the same students one after another.
Finally the projected wall time of the whole paper protocol (16 ranks x 200 epochs x 50,000 images, plus the
teacher's 20 epochs) and of the fast path (SVD init, adaptive ranks, convergence stopping; its student count
and epochs are inputs, printed with the result).

    python bench/paper_gpu.py [--out bench/results_paper_gpu.json]
    python bench/paper_gpu.py --tiny      # a small ViT at 32 px on the CPU: checks the script, not the numbers

Targets (issue 16): teacher step >= 40% of the bf16 peak; rank-32 student step >= 25%; several small students
in flight >= 1.5x the throughput of one at a time.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.flop_counter import FlopCounterMode

from effrank_utils.lowrank.factorize import factorize
from effrank_utils.run.preflight import make_config
from effrank_utils.run.presets import preset_values
from effrank_utils.training.data import ImageData, pipeline_for
from effrank_utils.training.distill import kd_loss
from effrank_utils.training.loop import autocast, make_optimizer, recipe_for
from effrank_utils.training.models import build_model, resolve_device

warnings.filterwarnings("ignore", message=".*break-even.*")

PAPER = {"ranks": 16, "student_epochs": 200, "teacher_epochs": 20, "images": 50_000}
TARGETS = {"teacher": 0.40, "rank_32": 0.25, "in_flight": 1.5}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], device: torch.device, calls: int, warmup: int = 3) -> float:
    """Mean seconds per call of ``fn`` after ``warmup`` calls (compilation, autotuning, allocator)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    tic = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - tic) / calls


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, calls: int) -> float:
    """Measured matmul TFLOP/s at ``dtype`` (the practical peak this run is compared with)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    return 2 * size ** 3 / seconds_per_call(lambda: a @ b, device, calls) / 1e12


def config_for(tiny: bool, batch: int):
    """The ``paper`` preset's model and optimizer (random weights), or a small ViT for ``--tiny``."""
    values = preset_values("paper") | {"pretrained": False, "download": False, "student_batch_size": batch,
                                       "teacher_batch_size": batch}
    if tiny:
        values |= {"model": "small_vit", "image_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2,
                   "num_heads": 2, "normalization": "dataset", "ranks": [2, 4], "amp": False}
    return make_config(values, check_environment=False)


def synthetic_pipeline(config, device: torch.device, batch: int):
    """Random uint8 images of CIFAR's shape on the device; the pipeline resizes them to the model's input."""
    g = torch.Generator().manual_seed(0)
    n = batch * 4
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 100, (n,), generator=g)
    return pipeline_for(config, ImageData("synthetic", x, y, x[:batch], y[:batch], 100).to(device), batch)


def step_flops(step: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def measure(step: Callable[[], object], flops: float, batch: int, device: torch.device, calls: int,
            peak_tflops: float) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = seconds_per_call(step, device, calls)
    tflops = flops / seconds / 1e12
    return {"images_per_s": batch / seconds, "tflops": tflops, "fraction_of_peak": tflops / peak_tflops,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None,
            "ms_per_step": seconds * 1e3}


def teacher_step(config, device: torch.device, batch: int, compiled: bool, lr_scale: float):
    """A cross-entropy training step of the teacher on one fixed batch."""
    torch.manual_seed(0)
    model = build_model(config, 100, 3).to(device)
    recipe = recipe_for(config, "teacher")
    opt = make_optimizer(model, recipe)
    for group in opt.param_groups:
        group["lr"] = recipe.lr * lr_scale
    run = torch.compile(model) if compiled else model
    x = next(synthetic_pipeline(config, device, batch).train_batches(0, 0))

    def step() -> None:
        with autocast(device, config.amp):
            loss = F.cross_entropy(run(x.x), x.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, model


def student_step(config, teacher: torch.nn.Module, device: torch.device, rank: int, batch: int, compiled: bool):
    """A KD step of a rank-``rank`` SVD student: the teacher's forward (no grad) and the student's training step."""
    student = factorize(teacher, rank, init="svd").to(device)
    opt = make_optimizer(student, recipe_for(config, "student"))
    run_student = torch.compile(student) if compiled else student
    run_teacher = torch.compile(teacher) if compiled else teacher
    x = next(synthetic_pipeline(config, device, batch).train_batches(0, 0))

    def step() -> None:
        with autocast(device, config.amp):
            with torch.no_grad():
                target = run_teacher(x.x)
            loss = kd_loss(run_student(x.x), target, x.y, config.kd_temperature, config.kd_alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def in_flight(config, teacher: torch.nn.Module, device: torch.device, rank: int, k: int, batch: int,
              calls: int) -> dict:
    """Images/s summed over ``k`` same-shape students (seeds of one rank): one after another, on CUDA streams
    (CUDA only), and as one ``vmap`` over their stacked parameters; the teacher's forward runs once per batch."""
    students = [factorize(teacher, rank, init="random", seed=s).to(device) for s in range(k)]
    x = next(synthetic_pipeline(config, device, batch).train_batches(0, 0))
    with torch.no_grad(), autocast(device, config.amp):
        target = teacher(x.x)
    recipe = recipe_for(config, "student")
    optimizers = [make_optimizer(s, recipe) for s in students]

    def one(student, opt) -> None:
        with autocast(device, config.amp):
            loss = kd_loss(student(x.x), target, x.y, config.kd_temperature, config.kd_alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sequential() -> None:
        for student, opt in zip(students, optimizers):
            one(student, opt)

    streams = [torch.cuda.Stream() for _ in students] if device.type == "cuda" else []

    def on_streams() -> None:
        for stream, student, opt in zip(streams, students, optimizers):
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                one(student, opt)
        for stream in streams:
            torch.cuda.current_stream().wait_stream(stream)

    params, buffers = stack_module_state(students)
    base = copy.deepcopy(students[0]).to("meta")
    stacked_opt = torch.optim.AdamW(params.values(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                    fused=device.type == "cuda")

    def vmapped() -> None:
        forward = vmap(lambda p, b: functional_call(base, (p, b), (x.x,)), in_dims=(0, 0))
        with autocast(device, config.amp):
            logits = forward(params, buffers)  # k x batch x classes
            loss = sum(kd_loss(logits[i], target, x.y, config.kd_temperature, config.kd_alpha) for i in range(k))
        stacked_opt.zero_grad(set_to_none=True)
        loss.backward()
        stacked_opt.step()

    out = {"rank": rank, "k": k, "batch": batch}
    ways = {"sequential": sequential, "vmap": vmapped} | ({"streams": on_streams} if streams else {})
    for name, fn in ways.items():
        out[f"{name}_images_per_s"] = k * batch / seconds_per_call(fn, device, calls)
    for name in ways:
        if name != "sequential":
            out[f"{name}_speedup"] = out[f"{name}_images_per_s"] / out["sequential_images_per_s"]
    return out


def projections(teacher_ips: float, student_ips: dict[int, float], fast_students: int, fast_epochs: float) -> dict:
    """Wall time of the paper protocol (16 ranks x 200 epochs) and of the fast path, from measured images/s
    (a student's: the mean over the measured ranks, which span the paper's 2..256)."""
    ranks = sorted(student_ips)
    mean_ips = sum(student_ips.values()) / len(ranks)  # the paper's ranks span the measured ones
    teacher_h = PAPER["teacher_epochs"] * PAPER["images"] / teacher_ips / 3600
    paper_h = PAPER["ranks"] * PAPER["student_epochs"] * PAPER["images"] / mean_ips / 3600
    fast_h = fast_students * fast_epochs * PAPER["images"] / mean_ips / 3600
    return {"teacher_hours": teacher_h, "paper_protocol_student_hours": paper_h,
            "paper_protocol_hours": teacher_h + paper_h, "fast_path_student_hours": fast_h,
            "fast_path_hours": teacher_h + fast_h,
            "fast_path_assumptions": {"students": fast_students, "epochs_each": fast_epochs,
                                      "source": "inputs (--fast-students, --fast-epochs)"},
            "student_images_per_s_used": mean_ips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results_paper_gpu.json"))
    parser.add_argument("--tiny", action="store_true", help="a small ViT on 32 px: checks the script on a CPU")
    parser.add_argument("--batches", type=int, nargs="+", default=[24, 256], help="author's batch, a larger one")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--calls", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--in-flight", type=int, default=4, help="students in flight at once")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--fast-students", type=int, default=10, help="fast path: students (adaptive grid)")
    parser.add_argument("--fast-epochs", type=float, default=20, help="fast path: mean epochs to a plateau")
    args = parser.parse_args()
    device = resolve_device("auto")
    if args.tiny:
        args.batches, args.ranks, args.calls, args.in_flight = [8, 16], [2, 4], 2, 2
    compile_modes = [False] if args.no_compile or args.tiny else [False, True]
    config = config_for(args.tiny, args.batches[0])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype, 256 if args.tiny else 8192, 3 if args.tiny else 50)
    results: dict = {"machine": {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                                 "platform": platform.platform(), "torch": torch.__version__},
                     "tiny": args.tiny, "matmul_peak_tflops": peak, "peak_dtype": str(dtype), "runs": []}
    for batch in args.batches:
        lr_scale = batch / args.batches[0]
        cfg = config_for(args.tiny, batch)
        for compiled in compile_modes:
            step, teacher = teacher_step(cfg, device, batch, compiled, lr_scale)
            flops = step_flops(teacher_step(cfg, device, batch, False, lr_scale)[0])
            run = {"what": "teacher", "batch": batch, "lr_scale": lr_scale, "compiled": compiled}
            results["runs"].append(run | measure(step, flops, batch, device, args.calls, peak))
            teacher.eval()
            for rank in args.ranks:
                step = student_step(cfg, teacher, device, rank, batch, compiled)
                flops = step_flops(student_step(cfg, teacher, device, rank, batch, False))
                run = {"what": f"student rank {rank}", "rank": rank, "batch": batch, "compiled": compiled}
                results["runs"].append(run | measure(step, flops, batch, device, args.calls, peak))
    small = min(args.ranks)
    results["in_flight"] = in_flight(config, teacher, device, small, args.in_flight, args.batches[0], args.calls)
    best = {}
    for run in results["runs"]:
        key = run["what"]
        if key not in best or run["images_per_s"] > best[key]["images_per_s"]:
            best[key] = run
    student_ips = {r["rank"]: r["images_per_s"] for k, r in best.items() if k.startswith("student")}
    results["projection"] = projections(best["teacher"]["images_per_s"], student_ips, args.fast_students,
                                        args.fast_epochs)
    flight = max(v for k, v in results["in_flight"].items() if k.endswith("_speedup"))
    mid = f"student rank {sorted(args.ranks)[len(args.ranks) // 2]}"
    results["targets"] = {
        "teacher_fraction_of_peak": {"reached": best["teacher"]["fraction_of_peak"], "target": TARGETS["teacher"]},
        f"{mid}_fraction_of_peak": {"reached": best[mid]["fraction_of_peak"], "target": TARGETS["rank_32"]},
        "students_in_flight_speedup": {"reached": flight, "target": TARGETS["in_flight"]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'run':<22} {'batch':>5} {'compiled':>8} {'img/s':>9} {'TFLOP/s':>8} {'of peak':>8} {'mem GiB':>8}")
    for r in results["runs"]:
        memory = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{r['what']:<22} {r['batch']:>5} {str(r['compiled']):>8} {r['images_per_s']:>9.1f} "
              f"{r['tflops']:>8.3f} {r['fraction_of_peak']:>8.1%} {memory:>8}")
    print(f"\nmeasured {dtype} matmul peak: {peak:.2f} TFLOP/s on {results['machine']['device']}")
    print("in flight:", {k: round(v, 2) for k, v in results["in_flight"].items()})
    p = results["projection"]
    print(f"projected: paper protocol {p['paper_protocol_hours']:.1f} h, fast path {p['fast_path_hours']:.1f} h "
          f"({p['fast_path_assumptions']})")
    for name, t in results["targets"].items():
        print(f"target {name}: {t['reached']:.2f} (target {t['target']})")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
