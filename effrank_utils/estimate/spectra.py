"""Training-free rank estimates from the teacher's weights alone: the singular values of every factorized map.

Per map, from its singular values ``s`` (descending):

* **entropy effective rank** (Roy & Vetterli 2007): ``exp(H(p))`` with ``p = s / sum(s)``;
* **stable rank**: ``||W||_F^2 / ||W||_2^2 = sum(s^2) / max(s)^2``;
* **energy ranks**: the smallest ``k`` whose top-``k`` singular values keep 90 / 95 / 99% of ``sum(s^2)``.

The measures are pure functions of ``s`` (numpy); :func:`summarize` reduces a table of them per kind of map, per
block and for the whole model (median over maps). :mod:`effrank_utils.lowrank.weight_spectra` computes them for
a model's targeted maps.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

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


def summarize(table: pd.DataFrame) -> dict:
    """Medians of every measure: over the whole model (``model``), per kind of map (``by_map``) and per block
    (``by_block``); JSON-ready."""
    by = lambda key: {str(k): g[list(MEASURES)].median().round(3).to_dict()  # noqa: E731
                      for k, g in table.groupby(key, sort=True)}
    return {"model": table[list(MEASURES)].median().round(3).to_dict(), "by_map": by("map"),
            "by_block": by("block"), "maps": len(table)}
