"""From what a user typed (notebook parameters, command-line options) to a validated config and its run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..records.config import CUSTOM_PRESET, StudyConfig
from ..records.run_folder import CONFIG_JSON, DEFAULT_RESULTS, WRITTEN_BY, default_run_dir
from .preflight import make_config
from .presets import preset_values


def load_preset(name: str, overrides: dict[str, Any] | None = None, **fields: Any) -> StudyConfig:
    """A validated config: the preset's values (``custom``: the config's defaults), then ``fields`` that are not
    None (the way notebook parameters say "keep the preset's value"), then ``overrides``. Unknown names are
    refused."""
    given = {k: v for k, v in fields.items() if v is not None} | dict(overrides or {})
    base = {"preset": CUSTOM_PRESET} if name == CUSTOM_PRESET else preset_values(name)
    return make_config(base | given)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Config fields from a JSON or YAML file (``.yaml``/``.yml``), or from a run folder's ``config.json`` (the
    folder itself may be given): its study's config, to rerun it. Checked like any fields afterwards."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CONFIG_JSON
    if not path.is_file():
        raise ValueError(f"--config: no file at {path}")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            values = yaml.safe_load(path.read_text())
        else:
            values = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # yaml.YAMLError and JSONDecodeError are ValueErrors
        raise ValueError(f"--config: {path} is not valid {'YAML' if path.suffix.lower() != '.json' else 'JSON'} "
                         f"({' '.join(str(exc).split())[:200]})") from None
    if isinstance(values, dict) and values.get("written_by") == WRITTEN_BY and isinstance(values.get("config"), dict):
        values = values["config"]  # a run folder's record: the study's config
    if not isinstance(values, dict):
        raise ValueError(f"--config: {path} must hold a mapping of field names to values, got "
                         f"{type(values).__name__}")
    return values


def open_study(preset: str, overrides: dict[str, Any] | None = None, run_dir: str | Path | None = None,
               results: str | Path = DEFAULT_RESULTS) -> tuple[StudyConfig, Path]:
    """The validated config of ``preset`` with ``overrides``, and its run folder: ``run_dir`` if given, else
    ``<results>/<preset>``. Every field is checked before anything is computed."""
    config = load_preset(preset, overrides)
    return config, Path(run_dir) if run_dir else default_run_dir(config.preset, results)
