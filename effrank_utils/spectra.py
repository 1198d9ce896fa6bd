"""Training-free rank estimates from the teacher's weights alone: the singular values of every factorized map.

Per map, from its singular values ``s`` (descending):

* **entropy effective rank** (Roy & Vetterli 2007): ``exp(H(p))`` with ``p = s / sum(s)``;
* **stable rank**: ``||W||_F^2 / ||W||_2^2 = sum(s^2) / max(s)^2``;
* **energy ranks**: the smallest ``k`` whose top-``k`` singular values keep 90 / 95 / 99% of ``sum(s^2)``.

The measures are pure functions of ``s`` (numpy); :func:`layer_spectra` computes them for a model's targeted maps
and :func:`summarize` reduces them per kind of map, per block and for the whole model (median over maps).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pandas as pd

from .run_folder import SPECTRA_CSV, SPECTRA_JSON
from .storage import read_json, write_json, write_text

if TYPE_CHECKING:
    from torch import nn

ENERGY_LEVELS = (0.90, 0.95, 0.99)
MEASURES = ("entropy_rank", "stable_rank", *(f"energy_rank_{round(q * 100)}" for q in ENERGY_LEVELS))


def _singular_values(s: Iterable[float]) -> np.ndarray:
    values = np.sort(np.asarray(list(s), dtype=float))[::-1]
    if values.size == 0 or not np.all(np.isfinite(values)) or values[-1] < 0:
        raise ValueError(f"singular values: need a non-empty list of finite values >= 0, got {values.tolist()}")
    return values


def entropy_rank(s: Iterable[float]) -> float:
    """``exp`` of the Shannon entropy of the singular values normalized to sum 1 (0 for a zero matrix)."""
    values = _singular_values(s)
    total = values.sum()
    if total == 0:
        return 0.0
    p = values[values > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def stable_rank(s: Iterable[float]) -> float:
    """``sum(s^2) / max(s)^2`` (0 for a zero matrix)."""
    values = _singular_values(s)
    return 0.0 if values[0] == 0 else float((values ** 2).sum() / values[0] ** 2)


def energy_rank(s: Iterable[float], share: float) -> int:
    """The smallest ``k`` such that the top ``k`` singular values hold ``share`` of the squared Frobenius norm."""
    if not 0 < share <= 1:
        raise ValueError(f"share: must lie in (0, 1], got {share!r}")
    energy = _singular_values(s) ** 2
    if energy.sum() == 0:
        return 0
    kept = np.cumsum(energy) / energy.sum()
    return int(np.searchsorted(kept, share - 1e-12) + 1)


def measures(s: Iterable[float]) -> dict[str, float]:
    """Every measure of :data:`MEASURES` for one map's singular values."""
    values = _singular_values(s)
    return {"entropy_rank": entropy_rank(values), "stable_rank": stable_rank(values),
            **{f"energy_rank_{round(q * 100)}": energy_rank(values, q) for q in ENERGY_LEVELS}}


def layer_spectra(model: "nn.Module", targets: str | Iterable[str] = "all") -> tuple[pd.DataFrame, dict[str, list]]:
    """One line per targeted map (``block``, ``map``, ``path``, ``shape``, ``full_rank`` and every measure),
    and the singular values of each (by path). The SVD runs in float64 on the CPU."""
    import torch

    from .factorize import target_weights, transformer_blocks
    block_index = {name: i for i, (name, _) in enumerate(transformer_blocks(model))}
    rows, spectra = [], {}
    for layer, weight in target_weights(model, targets):
        s = torch.linalg.svdvals(weight.detach().to("cpu", torch.float64)).numpy()
        block = max((b for b in block_index if layer.name.startswith(f"{b}.") or not b), key=len)
        rows.append({"block": block_index[block], "map": layer.target, "path": layer.name,
                     "shape": f"{layer.out_features}x{layer.in_features}", "full_rank": layer.full_rank,
                     **measures(s)})
        spectra[layer.name] = s.tolist()
    return pd.DataFrame(rows), spectra


def summarize(table: pd.DataFrame) -> dict:
    """Medians of every measure: over the whole model (``model``), per kind of map (``by_map``) and per block
    (``by_block``); JSON-ready."""
    by = lambda key: {str(k): g[list(MEASURES)].median().round(3).to_dict()  # noqa: E731
                      for k, g in table.groupby(key, sort=True)}
    return {"model": table[list(MEASURES)].median().round(3).to_dict(), "by_map": by("map"),
            "by_block": by("block"), "maps": len(table)}


def write_spectra(run_dir: str | Path, model: "nn.Module", targets: str | Iterable[str] = "all") -> list[Path]:
    """``spectra.csv`` (the per-map table) and ``spectra.json`` (singular values and :func:`summarize`)."""
    table, spectra = layer_spectra(model, targets)
    run_dir = Path(run_dir)
    return [write_text(run_dir / SPECTRA_CSV, table.to_csv(index=False)),
            write_json(run_dir / SPECTRA_JSON, {"summary": summarize(table), "singular_values": spectra})]


def read_spectra(run_dir: str | Path) -> tuple[pd.DataFrame, dict] | None:
    """The per-map table and the singular values a sweep saved, or None for a folder without them."""
    run_dir = Path(run_dir)
    if not (run_dir / SPECTRA_CSV).exists() or not (run_dir / SPECTRA_JSON).exists():
        return None
    return pd.read_csv(run_dir / SPECTRA_CSV), read_json(run_dir / SPECTRA_JSON)["singular_values"]
