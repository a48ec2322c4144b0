"""A spec's command line: argparse flags generated from its fields, grouped for --help, and argv parsed into the
spec (a --config preset's section supplies the defaults, explicit flags win)."""
from __future__ import annotations

import argparse
import types
import typing
from typing import Optional

from pydantic import BaseModel, ValidationError

from . import ConfigError, load_section
from .spec import GROUPS

NOT_FLAGS = {"config", "help"}  # the parser's own: the preset that sets defaults, and --help


def add_flags(parser: argparse.ArgumentParser, spec: type[BaseModel]) -> argparse.ArgumentParser:
    """One flag per field of `spec`, in argument groups by the field's group, in GROUPS' order."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    fields = sorted(spec.model_fields.items(), key=lambda item: GROUPS.index(item[1].json_schema_extra["group"]))
    for name, field in fields:
        extra = field.json_schema_extra
        group = extra["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        kwargs = {"help": field.description or None, **argparse_type(field.annotation)}
        cli = dict(extra.get("cli", {}))
        positional = cli.pop("positional", False)
        kwargs.update(cli)
        if field.is_required():
            kwargs["required"] = True
        else:
            default = field.get_default(call_default_factory=True)
            kwargs["default"] = list(default) if isinstance(default, tuple) and kwargs.get("nargs") else default
            if kwargs.get("action") == "append":
                kwargs["default"] = []
        if positional:
            kwargs.pop("required", None)
            kwargs.pop("default", None)
            groups[group].add_argument(name, **kwargs)
        else:
            groups[group].add_argument(f"--{name}", **kwargs)
    return parser


def argparse_type(annotation) -> dict:
    """What argparse needs for a field's type: store_true for a flag, choices for a Literal, the element type."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": "store_true"}
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return {"choices": choices, "type": type(choices[0])}
    if origin is tuple:
        items = typing.get_args(annotation)
        return {"type": items[0]} if items[-1] is Ellipsis else {"type": items[0], "nargs": len(items)}
    return {"type": annotation}


def parse_spec(spec: type[BaseModel], argv: Optional[list[str]], section: str,
               parser: Optional[argparse.ArgumentParser] = None) -> BaseModel:
    """argv -> spec. A --config preset's `section` becomes the defaults first (checked by the spec, the error naming
    the file and key); whatever argparse cannot check (ranges) the spec checks, as argparse would say it."""
    parser = build_parser(spec, parser)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        try:
            parser.set_defaults(**load_section(known.config, section, spec))
        except ConfigError as exc:
            parser.error(str(exc))
    values = {k: v for k, v in vars(parser.parse_args(argv)).items() if k not in NOT_FLAGS}
    try:
        return spec.model_validate(values)
    except ValidationError as exc:
        parser.error(first_error(exc, flag=True))


def build_parser(spec: type[BaseModel], parser: Optional[argparse.ArgumentParser] = None,
                 ) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser()
    parser.add_argument("--config", help="YAML preset (wav2lip96|288|384, iplap) or file; its section for this "
                                         "command sets the defaults")
    return add_flags(parser, spec)


def first_error(exc: ValidationError, flag: bool = False) -> str:
    """A spec's first complaint in one line: 'argument --name: what is wrong' (or 'name: …' off the command line)."""
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error["loc"]) or "value"
    message = error["msg"].removeprefix("Value error, ").replace("a valid tuple", "a list")
    return f"argument --{name}: {message}" if flag else f"{name}: {message}"


def field_of(exc: ValidationError) -> str:
    """The field the first complaint is about."""
    loc = exc.errors()[0]["loc"]
    return str(loc[0]) if loc else "body"
