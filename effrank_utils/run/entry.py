"""From what a user typed (notebook parameters, command-line options) to a validated config and its run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..records.config import StudyConfig
from ..records.run_folder import DEFAULT_RESULTS, default_run_dir
from .preflight import make_config
from .presets import preset_values


def load_preset(name: str, overrides: dict[str, Any] | None = None, **fields: Any) -> StudyConfig:
    """A validated config: the preset's values, then ``fields`` that are not None (the way notebook
    parameters say "keep the preset's value"), then ``overrides``. Unknown names are refused."""
    given = {k: v for k, v in fields.items() if v is not None} | dict(overrides or {})
    return make_config(preset_values(name) | given)


def open_study(preset: str, overrides: dict[str, Any] | None = None, run_dir: str | Path | None = None,
               results: str | Path = DEFAULT_RESULTS) -> tuple[StudyConfig, Path]:
    """The validated config of ``preset`` with ``overrides``, and its run folder: ``run_dir`` if given, else
    ``<results>/<preset>``. Every field is checked before anything is computed."""
    config = load_preset(preset, overrides)
    return config, Path(run_dir) if run_dir else default_run_dir(config.preset, results)
