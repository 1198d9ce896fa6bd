"""The run folder never deletes outside itself, never mixes studies and never silently reuses stale results."""

import json
import os
import stat
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from effrank_utils.base.storage import atomic_write, file_lock, write_json
from effrank_utils.records import run_folder
from effrank_utils.run import sweep
from effrank_utils.run.entry import load_preset

SMOKE = dict(ranks=[1, 2, 4], teacher_epochs=2)


def assert_same_results(table: pd.DataFrame, expected: pd.DataFrame) -> None:
    """The same rows and numbers; ``seconds`` is each student's measured wall time, which no rerun repeats, so it
    is left out of the comparison (no speed is asserted anywhere here)."""
    pd.testing.assert_frame_equal(table.drop(columns="seconds"), expected.drop(columns="seconds"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke sweep, copied by the tests that damage it."""
    run_dir = tmp_path_factory.mktemp("finished")
    table = sweep.run_sweep(load_preset("smoke", **SMOKE), run_dir)
    return run_dir, table


@pytest.fixture
def run_copy(finished, tmp_path):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    return run_dir


def test_rows_carry_the_study_identity(finished):
    run_dir, _ = finished
    record = json.loads((run_dir / "config.json").read_text())
    assert record["written_by"] == "effrank" and len(record["data_fingerprint"]) >= 16
    rows = [json.loads(p.read_text()) for p in (run_dir / "tasks").glob("r*_s*.json")]
    assert len(rows) == 3 and {r["identity"] for r in rows} == {record["identity"]}


def test_rows_of_other_settings_are_refused_even_without_config_json(run_copy):
    (run_copy / "config.json").unlink()
    with pytest.raises(ValueError, match=r"r00001_s0\.json was trained under other settings or data"):
        sweep.run_sweep(load_preset("smoke", **SMOKE, student_epochs=2), run_copy)
    assert not (run_copy / "config.json").exists()  # nothing was rewritten to name the new settings


def test_teacher_of_other_settings_is_refused_before_config_json_is_written(run_copy):
    for name in ("config.json", "teacher.json"):
        (run_copy / name).unlink()
    with pytest.raises(ValueError, match=r"its teacher\) holds a study with a different config \(teacher_epochs: "
                                         r"saved 2, now 3\)"):
        sweep.run_sweep(load_preset("smoke", ranks=[1, 2, 4], teacher_epochs=3), run_copy)
    assert not (run_copy / "config.json").exists()


def test_hand_edited_row_is_moved_aside_and_retrained(finished, run_copy):
    path = run_copy / "tasks" / "r00002_s0.json"
    row = json.loads(path.read_text())
    path.write_text(json.dumps(row | {"rank": 4}))
    table = sweep.run_sweep(load_preset("smoke", **SMOKE), run_copy)
    assert table["rank"].tolist() == [1, 2, 4]
    assert (run_copy / "tasks" / "r00002_s0.json.corrupt").exists()
    assert_same_results(table, finished[1])


@pytest.mark.parametrize("content", [b'{"rank": 1, "seed": 0, "sta', b"", b'{"foo": 1}', os.urandom(64)])
def test_damaged_row_is_moved_aside_and_the_task_trained_again(finished, run_copy, content):
    (run_copy / "tasks" / "r00001_s0.json").write_bytes(content)
    table = sweep.run_sweep(load_preset("smoke", **SMOKE), run_copy)
    assert table["rank"].tolist() == [1, 2, 4] and (table["status"] == "ok").all()
    assert (run_copy / "tasks" / "r00001_s0.json.corrupt").read_bytes() == content
    assert_same_results(table, finished[1])


def test_damaged_student_checkpoint_starts_that_student_over(finished, run_copy):
    (run_copy / "tasks" / "r00001_s0.json").unlink()
    (run_copy / "tasks" / "state_r00001_s0.pt").write_bytes(os.urandom(256))
    table = sweep.run_sweep(load_preset("smoke", **SMOKE), run_copy)
    assert (run_copy / "tasks" / "state_r00001_s0.pt.corrupt").exists()
    assert_same_results(table, finished[1])


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_damaged_teacher_checkpoint_is_named_with_what_to_do(run_copy, damage):
    path = run_copy / "teacher.pt"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "empty": b"", "random": os.urandom(4096)}[damage])
    with pytest.raises(ValueError, match=r"teacher\.pt: cannot be read as a checkpoint .*delete it"):
        sweep.run_sweep(load_preset("smoke", **SMOKE), run_copy)


def _image_folder(root, classes, count, value):
    for c in range(classes):
        for split in ("train", "test"):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.full((8, 8, 3), (value + 40 * c + i) % 256, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_another_data_folder_is_refused_on_a_finished_run(tmp_path):
    first = _image_folder(tmp_path / "first", 2, 6, 10)
    second = _image_folder(tmp_path / "second", 2, 6, 90)
    settings = dict(dataset="imagefolder", train_subset=None, ranks=[1, 2], teacher_epochs=1)
    sweep.run_sweep(load_preset("smoke", **settings, data_root=str(first)), tmp_path / "run")
    with pytest.raises(ValueError, match=r"was made from different data .*data_root .*first.* then, .*second.* now"):
        sweep.run_sweep(load_preset("smoke", **settings, data_root=str(second)), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["data_root"] == str(first)
    # the same images under another path are the same data: the study resumes
    import shutil
    shutil.copytree(first, tmp_path / "moved")
    table = sweep.run_sweep(load_preset("smoke", **settings, data_root=str(tmp_path / "moved")), tmp_path / "run")
    assert table["rank"].tolist() == [1, 2]


def test_fresh_deletes_only_an_effrank_run_folder_inside_the_results(finished, tmp_path):
    results = tmp_path / "results"
    outside = tmp_path / "trav"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="--fresh: .* is not inside the results folder"):
        run_folder.remove_run_folder(outside, results)
    not_a_run = results / "mine"
    not_a_run.mkdir(parents=True)
    (not_a_run / "notes.txt").write_text("keep me too")
    with pytest.raises(ValueError, match="--fresh: .* is not an effrank run folder"):
        run_folder.remove_run_folder(not_a_run, results)
    with pytest.raises(ValueError, match="--fresh: .* is not inside the results folder"):
        run_folder.remove_run_folder(results, results)
    assert (outside / "precious.txt").exists() and (not_a_run / "notes.txt").exists()
    import shutil
    shutil.copytree(finished[0], results / "smoke")
    run_folder.remove_run_folder(results / "smoke", results)
    assert not (results / "smoke").exists() and results.exists()


def test_run_folder_names_come_only_from_plain_preset_names():
    assert run_folder.default_run_dir("demo", "results") == run_folder.Path("results/demo")
    for bad in ("..", ".", "", "a/b", "/etc"):
        with pytest.raises(ValueError, match="preset: .* cannot name a run folder"):
            run_folder.default_run_dir(bad, "results")


def test_result_files_respect_the_umask(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    path = write_json(tmp_path / "row.json", {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert 0o666 & ~mask & 0o044  # with a usual umask, the team can read results


def test_stale_temporaries_are_cleaned_on_the_next_run(finished, run_copy):
    stale = run_copy / "tasks" / ".r00002_s0.json.abc123.tmp"
    fresh = run_copy / ".sweep.csv.def456.tmp"
    stale.write_text("half a row")
    fresh.write_text("a write in progress")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    sweep.run_sweep(load_preset("smoke", **SMOKE), run_copy)
    assert not stale.exists() and fresh.exists()


def test_atomic_write_killed_midway_leaves_only_a_temporary(tmp_path):
    def fail(_f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.json", fail)
    assert list(tmp_path.iterdir()) == []


def test_waiting_for_a_lock_says_who_holds_it(tmp_path, caplog):
    import threading
    lock = tmp_path / "task.lock"
    held, release = threading.Event(), threading.Event()

    def holder():
        with file_lock(lock):
            held.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    threading.Timer(1.0, release.set).start()
    with caplog.at_level("WARNING", logger="effrank_utils.base.storage"):
        with file_lock(lock, announce_every=0.3) as acquired:
            assert acquired
    thread.join()
    messages = [r.getMessage() for r in caplog.records if "waiting for task.lock" in r.getMessage()]
    assert len(messages) >= 2  # announced when the wait starts, then again while it lasts
    assert f"held by process {os.getpid()} on " in messages[0] and " since " in messages[0]


def test_a_folder_that_is_not_a_run_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "project" / "deep").mkdir(parents=True)
    swap = tmp_path / "project" / "deep" / ".notes.swp.tmp"
    swap.write_text("a user's file")
    old = time.time() - 3600
    os.utime(swap, (old, old))
    (tmp_path / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match=r"run_dir: .* is not empty and not an effrank run folder .*thesis\.tex"):
        sweep.run_sweep(load_preset("smoke", **SMOKE), tmp_path)
    assert swap.exists() and not (tmp_path / "config.json").exists()


def test_a_student_checkpoint_of_other_settings_is_not_resumed(finished, run_copy):
    """A killed run leaves a half-trained student; config.json is deleted and the student rerun with another
    learning rate: the old progress must not be resumed under the new identity."""
    import shutil
    (run_copy / "config.json").unlink()
    other = load_preset("smoke", **SMOKE, student_lr=1e-3, student_epochs=3)
    for row in (run_copy / "tasks").glob("r*_s*.json"):
        row.unlink()
    from effrank_utils.base.storage import save_checkpoint
    save_checkpoint(run_copy / "tasks" / "state_r00001_s0.pt",
                    {"tag": "another study", "epoch": 3, "models": [], "optimizers": [], "results": "[]"})
    table = sweep.run_sweep(other, run_copy)
    assert (run_copy / "tasks" / "state_r00001_s0.pt.corrupt").exists()
    assert table.set_index("rank").loc[1, "epochs"] == 3 and (table["status"] == "ok").all()
    shutil.rmtree(run_copy)
