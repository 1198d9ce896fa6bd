"""The teacher's weights seen through their singular values: the training-free measures of
:mod:`effrank_utils.estimate.spectra` for every targeted map of a model, saved as ``spectra.csv`` and
``spectra.json`` in the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd
import torch
from torch import nn

from ..base.storage import write_json, write_text
from ..estimate.spectra import measures, summarize
from ..records.run_folder import SPECTRA_CSV, SPECTRA_JSON
from .factorize import target_weights, transformer_blocks


def layer_spectra(model: nn.Module, targets: str | Iterable[str] = "all") -> tuple[pd.DataFrame, dict[str, list]]:
    """One line per targeted map (``block``, ``map``, ``path``, ``shape``, ``full_rank`` and every measure),
    and the singular values of each (by path). The SVD runs in float64 on the CPU."""
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


def write_spectra(run_dir: str | Path, model: nn.Module, targets: str | Iterable[str] = "all") -> list[Path]:
    """``spectra.csv`` (the per-map table) and ``spectra.json`` (singular values and :func:`summarize`)."""
    table, spectra = layer_spectra(model, targets)
    run_dir = Path(run_dir)
    return [write_text(run_dir / SPECTRA_CSV, table.to_csv(index=False)),
            write_json(run_dir / SPECTRA_JSON, {"summary": summarize(table), "singular_values": spectra})]
