"""The benchmark and experiment scripts run end to end (tiny sizes; no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> None:
    # the timeout guards against a hang; it is not a speed test
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_bench_writes_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    run("bench/bench.py", "--quick", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["fused"]["speedup"] > 0 and result["fused"]["k"] == 2
    region = result["time_to_region"]
    candidates = region["candidates"]
    assert list(candidates) == ["adaptive + fused", "+ band stop", "+ band stop + teacher cache"]
    for sweep in [region["dense"], *candidates.values()]:
        assert sweep["over_teacher"] > 0 and isinstance(sweep["converged"], bool) and sweep["verdict"]
        assert isinstance(sweep["region_agrees"], bool) and isinstance(sweep["knee_agrees"], bool)
        assert sweep["student_epochs"] >= sweep["students"]
    assert region["dense"]["students"] == len(region["dense_ranks"]) > candidates["adaptive + fused"]["students"]
    assert region["dense"]["speedup_vs_dense"] == 1.0 and region["paper_shape_estimate"]["over_teacher"] > 0
    assert len(region["teacher_times_s"]) == 3 and region["teacher_s"] == min(region["teacher_times_s"])
    assert 0 < result["teacher_step"]["fraction_of_peak"]
    assert isinstance(result["bench_seconds"], float)  # the bench's own wall time is recorded, not judged


def test_warm_start_experiment_records_and_plots(tmp_path):
    out, figure = tmp_path / "ws.json", tmp_path / "ws.png"
    run("bench/warm_start.py", "--preset", "smoke", "--ranks", "1,4", "--random-epochs", "2", "--svd-epochs", "1",
        "--run-dir", str(tmp_path / "run"), "--out", str(out), "--figure", str(figure))
    record = json.loads(out.read_text())
    assert set(record["histories"]) == {"random", "svd"} and len(record["histories"]["random"]["4"]) == 2
    assert set(record["svd_epochs_to_match_random"]) == {"1", "4"}
    assert figure.stat().st_size > 0
    run("bench/warm_start.py", "--replot", "--out", str(out), "--figure", str(tmp_path / "again.png"))


def test_init_study_records_both_inits_and_redraws(tmp_path):
    out, figure = tmp_path / "study.json", tmp_path / "study.png"
    settings = ["ranks=[1,4]", "student_epochs=3", "validation_fraction=0.1", "student_patience=1",
                "student_schedule=constant", "teacher_epochs=2"]
    run("bench/init_study.py", "--preset", "smoke", "--seeds", "0", "1", *[a for s in settings for a in ("--set", s)],
        "--init-set", "random:student_epochs=2", "--results", str(tmp_path / "runs"), "--out", str(out),
        "--figure", str(figure))
    record = json.loads(out.read_text())
    assert set(record["inits"]) == {"svd", "random"}
    assert set(record["intervals_overlap"]) == {"region_low", "region_high", "knee"}
    for entry in record["inits"].values():
        assert isinstance(entry["converged"], bool) and entry["verdict"]
        assert entry["students"] == 4
    svd, rand = record["inits"]["svd"], record["inits"]["random"]
    assert (svd["config"]["student_epochs"], rand["config"]["student_epochs"]) == (3, 2)  # for one init only
    assert svd["student_epochs"]["max"] <= 3 and rand["student_epochs"]["max"] <= 2
    # one teacher for both inits: the random study loads the one the svd study trained
    assert rand["config"]["teacher_checkpoint"] == str(tmp_path / "runs" / "smoke-svd" / "teacher.pt")
    assert svd["config"]["teacher_checkpoint"] is None
    assert rand["teacher_accuracy"] == svd["teacher_accuracy"]
    assert figure.stat().st_size > 0 and record["complete"]
    again = tmp_path / "again.json"  # recorded from the finished students alone: the same numbers
    run("bench/init_study.py", "--preset", "smoke", "--seeds", "0", "1", *[a for s in settings for a in ("--set", s)],
        "--init-set", "random:student_epochs=2", "--results", str(tmp_path / "runs"), "--out", str(again),
        "--figure", str(tmp_path / "again.png"), "--no-train")
    recorded = json.loads(again.read_text())
    assert not recorded["complete"]
    for init in ("svd", "random"):
        assert recorded["inits"][init]["region"] == record["inits"][init]["region"]
        assert recorded["inits"][init]["students"] == recorded["inits"][init]["students_planned"] == 4
    refused = subprocess.run([sys.executable, "bench/init_study.py", "--inits", "svd", "--init-set",
                              "random:student_epochs=2", "--out", str(tmp_path / "no.json")],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--init-set: random is not among --inits" in refused.stderr
    untrained = subprocess.run([sys.executable, "bench/init_study.py", "--results", str(tmp_path / "none"),
                                "--no-train", "--out", str(tmp_path / "no.json")],
                               cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert untrained.returncode == 2 and "has no finished students" in untrained.stderr
    run("bench/init_study.py", "--replot", "--out", str(out), "--figure", str(tmp_path / "redrawn.png"))


def test_paper_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "paper.json"
    run("bench/paper_gpu.py", "--tiny", "--out", str(out))
    result = json.loads(out.read_text())
    assert {r["what"] for r in result["runs"]} == {"teacher", "student rank 2", "student rank 4"}
    assert all(r["images_per_s"] > 0 and r["fraction_of_peak"] > 0 for r in result["runs"])
    assert result["in_flight"]["vmap_speedup"] > 0 and result["matmul_peak_tflops"] > 0
    assert result["projection"]["paper_protocol_hours"] > result["projection"]["teacher_hours"] > 0
    assert set(result["targets"]) == {"teacher_fraction_of_peak", "student rank 4_fraction_of_peak",
                                      "students_in_flight_speedup"}


def test_neighbour_experiment_compares_the_chain_with_independent_students(tmp_path):
    out = tmp_path / "neighbour.json"
    run("bench/neighbour.py", "--preset", "smoke", "--ranks", "4,2", "--epochs", "2", "--out", str(out))
    record = json.loads(out.read_text())
    assert set(record["runs"]) == {"independent", "from_neighbour"} == set(record["curves"])
    # the top rank starts from the teacher in both; the lower one from the trained rank-4 student in the chain
    assert record["runs"]["independent"]["4"]["before"] == record["runs"]["from_neighbour"]["4"]["before"]
    assert record["runs"]["independent"]["2"]["before"] != record["runs"]["from_neighbour"]["2"]["before"]
    assert all(len(r["test"]) == 2 for run_ in record["runs"].values() for r in run_.values())


def test_student_rates_experiment_records_every_rank_per_rate(tmp_path):
    out = tmp_path / "rates.json"
    run("bench/student_rates.py", "--preset", "smoke", "--rates", "1e-3", "3e-3", "--epochs", "2", "--out", str(out))
    record = json.loads(out.read_text())
    assert set(record["rates"]) == {"0.001", "0.003"}
    assert all([r["rank"] for r in rate["rows"]] == [1, 2, 4, 8] and all(len(r["test"]) == 2 for r in rate["rows"])
               for rate in record["rates"].values())


def test_student_budget_experiment_records_each_rule(tmp_path):
    out = tmp_path / "budget.json"
    rules = ["plateau, patience 4 (demo)", "cosine, 40 epochs"]
    run("bench/student_budget.py", "--preset", "smoke", "--ranks", "1", "4", "--rules", *rules,
        "--set", "validation_fraction=0.2", "--set", "student_epochs=3", "--out", str(out))
    record = json.loads(out.read_text())
    assert list(record["rules"]) == rules
    plateau, cosine = (record["rules"][r] for r in rules)
    assert [r["rank"] for r in plateau["rows"]] == [1, 4]
    assert all(len(r["test"]) == r["epochs"] <= 3 for r in plateau["rows"] + cosine["rows"])
    assert cosine["fields"]["student_schedule"] == "cosine" and cosine["fields"]["student_epochs"] == 3
    assert all(r["stop_reason"] == "cap" for r in cosine["rows"])  # no patience: every rank runs the budget
    assert plateau["fields"] == {"validation_fraction": 0.2, "student_epochs": 3}  # the preset's own rule
    assert plateau["student_epochs"] == sum(r["epochs"] for r in plateau["rows"])


def test_student_step_experiment_times_the_same_steps_three_ways(tmp_path):
    out = tmp_path / "step.json"
    run("bench/student_step.py", "--preset", "smoke", "--ranks", "1", "2", "--rounds", "1", "--steps", "1",
        "--out", str(out))
    record = json.loads(out.read_text())
    assert set(record["ms_per_group_step"]) == {"one after another", "stacked"}  # compiled only with --compile
    assert record["vs_one_after_another"]["one after another"] == 1.0
    assert record["gradient_gap"] < 1e-5  # the stacked students take the same steps as one after another
    assert set(record["epoch_cost_by_batch"]["relative"]) == {"64", "128", "256"}


def test_fewer_deciders_reads_a_subset_of_a_study_as_its_own_sweep_and_writes_nothing(tmp_path, snapshot):
    from effrank_utils.estimate.convergence import convergence
    from effrank_utils.estimate.curves import effective_rank
    from effrank_utils.report.analysis import analyze, study_convergence
    from effrank_utils.report.study import load_study
    from effrank_utils.run.entry import load_preset
    from effrank_utils.run.sweep import run_sweep

    study_dir, out = tmp_path / "study", tmp_path / "fewer.json"
    run_sweep(load_preset("smoke", validation_fraction=0.2, student_epochs=2), study_dir)
    before = snapshot(study_dir)
    run("bench/fewer_deciders.py", str(study_dir), "--sets", "1,2,4,8", "8,1,4", "--out", str(out))
    assert snapshot(study_dir) == before
    everything, fewer = json.loads(out.read_text())["sets"]
    study = load_study(study_dir)
    whole = analyze(study, n_bootstrap=0)
    assert (everything["region"], everything["knee"]) == ([whole.region_low, whole.region_high], whole.knee)
    assert everything["verdict"] == study_convergence(study).verdict()
    assert everything["student_epochs"] == study.table["epochs"].sum()
    rows = study.table[study.table["rank"] != 2]
    part = effective_rank(rows["rank"], rows["final_accuracy"], study.teacher_accuracy, n_bootstrap=0)
    assert fewer["ranks"] == [1, 4, 8] and fewer["students"] == 3
    assert (fewer["region"], fewer["knee"]) == ([part.region_low, part.region_high], part.knee)
    assert fewer["student_epochs"] == rows["epochs"].sum()
    assert fewer["verdict"] == convergence(study.epochs[study.epochs["rank"] != 2], study.teacher_accuracy).verdict()
    refused = subprocess.run([sys.executable, "bench/fewer_deciders.py", str(study_dir), "--sets", "1,3"],
                             cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "--sets: ranks [3] have no finished student" in refused.stderr


def test_fewer_deciders_keeps_the_missing_students_of_the_ranks_it_reads(tmp_path):
    from effrank_utils.records.run_folder import write_sweep_csv
    from effrank_utils.run.entry import load_preset
    from effrank_utils.run.sweep import run_sweep

    study_dir, out = tmp_path / "study", tmp_path / "fewer.json"
    run_sweep(load_preset("smoke", ranks=(1, 2, 4), seeds=(0, 1), student_epochs=1), study_dir)
    (study_dir / "tasks" / "r00002_s1.json").unlink()  # rank 2 seed 1 has no result yet
    write_sweep_csv(study_dir)
    run("bench/fewer_deciders.py", str(study_dir), "--sets", "1,2,4", "1,4", "--out", str(out))
    with_rank_2, without = json.loads(out.read_text())["sets"]
    assert with_rank_2["verdict"].startswith("not converged: the study is incomplete (no result for rank 2 seed 1)")
    assert not with_rank_2["converged"] and "incomplete" not in without["verdict"]
