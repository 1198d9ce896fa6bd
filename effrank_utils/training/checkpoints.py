"""A teacher the user already trained: read its checkpoint, check that it fits the model, identify its content.

Accepted: a plain ``state_dict``, or one wrapped as ``{"state_dict": ...}``, ``{"model": ...}`` (nested wrappers
too), with or without the ``module.`` prefix DistributedDataParallel adds (or ``_orig_mod.`` from
``torch.compile``). Loaded with ``weights_only=True``: a checkpoint holding arbitrary Python objects is refused, and
so are weights without data (meta tensors) or with NaN or inf values.
Every problem is a ``ValueError`` naming ``teacher_checkpoint`` and what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..base.storage import file_digest

FIELD = "teacher_checkpoint"
WRAPPERS = ("state_dict", "model")
PREFIXES = ("module.", "_orig_mod.")
SHOWN = 4  # names listed per kind of difference


def _path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{FIELD}: no file at {path}")
    return path


def checkpoint_digest(path: str | Path) -> str:
    """A hex digest of the checkpoint file's content (:func:`~effrank_utils.base.storage.file_digest`)."""
    return file_digest(_path(path))


def unwrap(payload: Any) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint payload: wrappers (``state_dict``, ``model``) removed, prefixes stripped."""
    while isinstance(payload, Mapping) and not any(isinstance(v, torch.Tensor) for v in payload.values()):
        inner = next((payload[k] for k in WRAPPERS if isinstance(payload.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(f"{FIELD}: no weights found; expected a state_dict, or one under "
                             f"{' or '.join(map(repr, WRAPPERS))} (top-level keys: {sorted(map(str, payload))[:8]})")
        payload = inner
    if not isinstance(payload, Mapping):
        raise ValueError(f"{FIELD}: expected a state_dict (a mapping of names to tensors), got "
                         f"{type(payload).__name__}")
    state = {}
    for name, value in payload.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{FIELD}: entry {name!r} is a {type(value).__name__}, not a tensor")
        state[str(name)] = value
    for prefix in PREFIXES:  # in this order: DDP wraps a compiled model as module._orig_mod.
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _which(names: list[str], problem: str) -> str:
    """``name holds <problem>`` for one tensor, ``N tensors hold <problem>: names`` for more."""
    return f"{names[0]} holds {problem}" if len(names) == 1 else f"{len(names)} tensors hold {problem}: {_names(names)}"


def check_content(state: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights that cannot be used: tensors that hold no data (on the meta device: shapes only), or
    floating tensors with NaN or inf values (a diverged training)."""
    empty = [k for k, v in state.items() if v.is_meta]
    if empty:
        raise ValueError(f"{FIELD}: " + _which(empty, "no data (on the meta device: shapes only, as saved from a "
                                                      "model built under torch.device('meta'))"))
    bad = {k: n for k, v in state.items()
           if (v.is_floating_point() or v.is_complex()) and (n := int((~torch.isfinite(v)).sum()))}
    if bad:
        names = list(bad)
        detail = f" ({bad[names[0]]} of {state[names[0]].numel()} values)" if len(names) == 1 else ""
        raise ValueError(f"{FIELD}: " + _which(names, "NaN or inf values") + detail)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in a checkpoint file (on the CPU), unwrapped (:func:`unwrap`), its content checked
    (:func:`check_content`)."""
    path = _path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{FIELD}: {path} is empty (0 bytes), not a PyTorch checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, unsafe globals, truncated files: all mean "cannot use it"
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise ValueError(f"{FIELD}: {path} cannot be read as a PyTorch checkpoint with weights_only=True "
                         f"({type(exc).__name__}{': ' + reason if reason else ''})") from None
    state = unwrap(payload)
    check_content(state)
    return state


def _names(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _is_head(key: str) -> bool:
    return key.split(".")[-2:-1] == ["head"] or key.startswith("heads.")


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], what: str, check_head: bool = True) -> None:
    """Refuse ``state`` unless it has exactly ``model``'s keys and shapes (``model`` may live on the meta
    device). The head and the position embeddings get messages of their own: those differ when the number of
    classes or the input size does not match. ``what`` names the model in messages; ``check_head=False``
    ignores the head's shapes (when the number of classes is not known yet)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if expected[k] != given[k]
                    and (check_head or not _is_head(k)))
    head = [k for k in shapes if _is_head(k)]
    position = [k for k in shapes if ("pos_embed" in k or "pos_embedding" in k)  # token count, not width
                and len(given[k]) == len(expected[k]) and given[k][-1] == expected[k][-1]]
    if head and head == shapes and not missing and not unexpected:
        raise ValueError(f"{FIELD}: its head has {given[head[0]][0]} classes but the dataset has "
                         f"{expected[head[0]][0]} ({head[0]}: {given[head[0]]} vs {expected[head[0]]})")
    if position:
        key = position[0]
        raise ValueError(f"{FIELD}: its position embeddings {key} have shape {given[key]}, {what} at this "
                         f"image_size expects {expected[key]}: set image_size (and patch_size) to the input size "
                         "the checkpoint was trained at")
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_names(unexpected)}")
    if shapes:
        problems.append("different shapes: " + _names([f"{k} {given[k]} vs {expected[k]}" for k in shapes]))
    if problems:
        raise ValueError(f"{FIELD}: does not fit {what} ({'; '.join(problems)})")


def load_checkpoint_into(model: nn.Module, path: str | Path, what: str) -> nn.Module:
    """Check and load the checkpoint at ``path`` into ``model`` (strict)."""
    state = read_checkpoint(path)
    check_fits(model, state, what)
    model.load_state_dict(state)
    return model
