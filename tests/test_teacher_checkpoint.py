"""A teacher the user already trained, from a checkpoint file: every wrapper form loads, every bad one is refused
up front by name, and the checkpoint's content is part of the study's identity."""

import json
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep
from effrank_utils.run.teacher import LOADED, train_teacher
from effrank_utils.training.checkpoints import checkpoint_digest, load_checkpoint_into, unwrap
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.models import build_model

SETTINGS = dict(ranks=[1, 2, 4], student_epochs=1)


def trained_state(config, classes=10, seed=0):
    torch.manual_seed(seed)
    return build_model(config, classes, 1).state_dict()


@pytest.fixture(scope="module")
def config():
    return load_preset("smoke", SETTINGS)


@pytest.fixture(scope="module")
def data(config):
    return load_data_for(config)


WRAPPERS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 3},
    "model": lambda s: {"model": s, "optimizer": {"lr": 0.1}},
    "nested": lambda s: {"model": {"state_dict": s}},
    "ddp": lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
}


@pytest.mark.parametrize("form", WRAPPERS)
def test_every_wrapper_form_loads_and_is_evaluated_not_trained(config, data, tmp_path, form):
    state = trained_state(config)
    path = tmp_path / "mine.pt"
    torch.save(WRAPPERS[form](state), path)
    given = config.replace(teacher_checkpoint=str(path))
    teacher = train_teacher(given, tmp_path / "run", data)
    assert teacher.source == LOADED and teacher.history == [] and "not trained" in teacher.describe()
    for name, value in teacher.model.state_dict().items():
        assert torch.equal(value.cpu(), state[name]), name
    assert 0 <= teacher.accuracy <= 1
    record = json.loads((tmp_path / "run" / "teacher.json").read_text())
    assert record["source"] == LOADED and record["epochs"] == 0
    again = train_teacher(given, tmp_path / "run", data)  # reloaded from the run folder, not re-evaluated
    assert again.source == LOADED and again.accuracy == teacher.accuracy


class NotWeights:
    pass


def bad_checkpoints(config, tmp_path):
    """(file content writer, expected message) for every kind of bad checkpoint."""
    state = trained_state(config)
    missing = dict(state)
    missing.pop("blocks.0.mlp.fc1.bias")
    wider = load_preset("smoke", SETTINGS | {"embed_dim": 32, "num_heads": 2})
    bigger = load_preset("smoke", SETTINGS | {"image_size": 16})
    return {
        "head": (lambda p: torch.save(trained_state(config, classes=5), p), "its head has 5 classes but the dataset "
                                                                             "has 10"),
        "input size": (lambda p: torch.save(build_model(bigger, 10, 1).state_dict(), p), "position embeddings"),
        "missing key": (lambda p: torch.save(missing, p), "missing 1: blocks.0.mlp.fc1.bias"),
        "unexpected key": (lambda p: torch.save(state | {"extra.weight": torch.ones(2)}, p),
                           "unexpected 1: extra.weight"),
        "shapes": (lambda p: torch.save(build_model(wider, 10, 1).state_dict(), p), "different shapes"),
        "not torch": (lambda p: p.write_bytes(b"not a checkpoint"), "cannot be read as a PyTorch checkpoint"),
        "unsafe pickle": (lambda p: p.write_bytes(pickle.dumps({"state_dict": NotWeights()})),
                          "cannot be read as a PyTorch checkpoint with weights_only=True"),
        "not a tensor": (lambda p: torch.save(state | {"note": "text"}, p), "entry 'note' is a str"),
        "no weights": (lambda p: torch.save({"optimizer": {}, "epoch": 1}, p), "no weights found"),
    }


@pytest.mark.parametrize("kind", ["head", "input size", "missing key", "unexpected key", "shapes", "not torch",
                                  "unsafe pickle", "not a tensor", "no weights"])
def test_bad_checkpoints_are_refused_before_any_compute(config, tmp_path, kind):
    write, message = bad_checkpoints(config, tmp_path)[kind]
    path = tmp_path / "bad.pt"
    write(path)
    with pytest.raises(ValueError, match="teacher_checkpoint: .*" + message.replace("(", r"\(")):
        load_preset("smoke", SETTINGS | {"teacher_checkpoint": str(path)})


def test_a_missing_file_and_pretrained_weights_are_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher_checkpoint: no file at"):
        load_preset("smoke", SETTINGS | {"teacher_checkpoint": str(tmp_path / "nope.pt")})
    with pytest.raises(ValueError, match="teacher_checkpoint: a teacher loaded from a checkpoint replaces"):
        load_preset("smoke", SETTINGS | {"teacher_checkpoint": "x.pt", "pretrained": True,
                                         "normalization": "imagenet"})


def test_unwrap_strips_one_prefix_only_when_every_key_has_it():
    t = torch.zeros(1)
    assert set(unwrap({"module.a": t, "module.b": t})) == {"a", "b"}
    assert set(unwrap({"module.a": t, "b": t})) == {"module.a", "b"}
    assert set(unwrap({"model": {"module._orig_mod.a": t}})) == {"a"}


def test_the_checkpoint_content_is_part_of_the_identity(config, data, tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(trained_state(config), path)
    run_sweep(config.replace(teacher_checkpoint=str(path)), tmp_path / "run", data=data)
    moved = tmp_path / "elsewhere.pt"
    shutil.copy(path, moved)  # the same content at another path: the same study
    assert checkpoint_digest(moved) == checkpoint_digest(path)
    table = run_sweep(config.replace(teacher_checkpoint=str(moved)), tmp_path / "run", data=data)
    assert len(table) == 3
    torch.save(trained_state(config, seed=1), path)  # other weights under the old name: refused, not mixed
    with pytest.raises(ValueError, match="made with another teacher"):
        run_sweep(config.replace(teacher_checkpoint=str(path)), tmp_path / "run", data=data)
    with pytest.raises(ValueError, match="made with another teacher"):  # nor a trained teacher in its place
        run_sweep(config, tmp_path / "run", data=data)


def test_a_relative_path_is_made_absolute_where_it_is_given(config, tmp_path, monkeypatch):
    torch.save(trained_state(config), tmp_path / "mine.pt")
    monkeypatch.chdir(tmp_path)
    given = load_preset("smoke", SETTINGS | {"teacher_checkpoint": "mine.pt"})
    assert given.teacher_checkpoint == str(tmp_path / "mine.pt")


def meta_state(config):
    with torch.device("meta"):
        return build_model(config, 10, 1).state_dict()


def nan_state(config):
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
            for k, v in trained_state(config).items()}


def one_inf_state(config):
    state = trained_state(config)
    state["blocks.0.mlp.fc1.weight"][0, 0] = float("inf")
    return state


def truncated(config, path):
    torch.save(trained_state(config), path, _use_new_zipfile_serialization=False)  # its EOFError has no message
    path.write_bytes(path.read_bytes()[:10])


UNUSABLE = {
    "empty file": (lambda c, p: p.write_bytes(b""), r"bad\.pt is empty \(0 bytes\)"),
    "truncated": (truncated, r"cannot be read as a PyTorch checkpoint with weights_only=True \(EOFError\)$"),
    "meta tensors": (lambda c, p: torch.save(meta_state(c), p),
                     r"\d+ tensors hold no data \(on the meta device.*\): cls_token, "),
    "one meta tensor": (lambda c, p: torch.save(trained_state(c) | {"cls_token": meta_state(c)["cls_token"]}, p),
                        r"cls_token holds no data \(on the meta device"),
    "all NaN": (lambda c, p: torch.save(nan_state(c), p), r"\d+ tensors hold NaN or inf values: cls_token, "),
    "one inf": (lambda c, p: torch.save(one_inf_state(c), p),
                r"blocks\.0\.mlp\.fc1\.weight holds NaN or inf values \(1 of \d+ values\)$"),
}


@pytest.mark.parametrize("kind", UNUSABLE)
def test_checkpoints_without_usable_weights_are_refused_before_any_compute(config, tmp_path, kind):
    write, message = UNUSABLE[kind]
    path = tmp_path / "bad.pt"
    write(config, path)
    with pytest.raises(ValueError, match="^teacher_checkpoint: .*" + message) as info:
        load_preset("smoke", SETTINGS | {"teacher_checkpoint": str(path)})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["meta tensors", "all NaN"])
def test_loading_applies_the_same_content_checks(config, tmp_path, kind):
    write, message = UNUSABLE[kind]
    path = tmp_path / "bad.pt"
    write(config, path)
    model = build_model(config, 10, 1)
    with pytest.raises(ValueError, match="^teacher_checkpoint: .*" + message):
        load_checkpoint_into(model, path, "the model")


@pytest.mark.parametrize("kind", ["empty file", "all NaN"])
def test_the_command_refuses_them_in_one_line(config, tmp_path, kind):
    path = tmp_path / "bad.pt"
    UNUSABLE[kind][0](config, path)
    proc = subprocess.run([sys.executable, "-m", "effrank_utils", "sweep", "--preset", "smoke", "--results",
                           str(tmp_path / "results"), "--set", f"teacher_checkpoint={path}"],
                          capture_output=True, text=True, timeout=600)  # timeout: a hang guard only
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: teacher_checkpoint: ")
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("teacher.json"))
