"""YAML presets (one per model size). Each top-level section holds the defaults of one command's flags."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

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


def apply_defaults(parser: argparse.ArgumentParser, config: str, section: str) -> None:
    """Make a YAML section the parser's defaults, so explicit flags still override the file."""
    path = resolve(config)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    values = data.get(section) or {}
    flags = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - flags)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in '{section}': {', '.join(unknown)}")
    for action in parser._actions:  # defaults skip argparse's own check of the choices
        if action.dest in values and action.choices is not None and values[action.dest] not in action.choices:
            raise ConfigError(f"{path}: '{action.dest}: {values[action.dest]}' in '{section}' is not one of "
                              f"{', '.join(map(str, action.choices))}")
    parser.set_defaults(**values)


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None, section: str) -> argparse.Namespace:
    """Parse flags; a --config preset's `section` supplies the defaults first, so explicit flags still win."""
    known, _ = parser.parse_known_args(argv)
    if known.config:
        try:
            apply_defaults(parser, known.config, section)
        except ConfigError as exc:
            parser.error(str(exc))
    return parser.parse_args(argv)
