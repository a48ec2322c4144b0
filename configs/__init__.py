"""Typed configuration: the specs (spec.py), their command lines (flags.py) and the YAML presets here, one per model
size. Each top-level section of a preset holds the defaults of one command's spec."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

PRESETS = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A preset that cannot be applied; the message names the file and the key."""


def resolve(name_or_path: str) -> Path:
    """A preset name ('wav2lip288') or a path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ConfigError(f"config '{name_or_path}' not found (presets: {known})")
    return path


def load_section(config: str, section: str, spec: type[BaseModel]) -> dict:
    """A preset's `section`, checked against `spec`: unknown keys and values of the wrong type, choice or range
    fail with the file and the key named."""
    path = resolve(config)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    values = data.get(section) or {}
    unknown = sorted(set(values) - set(spec.model_fields))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in '{section}': {', '.join(unknown)}")
    try:
        spec.model_validate(values)
    except ValidationError as exc:  # the fields the section leaves out (required ones) are the command line's
        errors = [e for e in exc.errors() if e["loc"] and e["loc"][0] in values]
        if errors:
            key, reason = errors[0]["loc"][0], errors[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{path}: '{key}: {values[key]}' in '{section}': {reason}") from None
    return values
