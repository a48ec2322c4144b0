"""The typed configuration (configs/spec.py): every flag is a spec field and every field a flag, --help groups them,
the command line, a YAML preset and an HTTP session body make the same spec, and the spec checks what argparse
and hand-written checks used to."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from pydantic import ValidationError

from conftest import ROOT
from configs import flags
from configs.spec import (GROUPS, EngineSpec, ObsSetupSpec, PrepareSpec, PreprocessSpec, RayServeSpec,
                          StreamOutSpec)


@pytest.mark.parametrize("spec", [StreamOutSpec, RayServeSpec, PreprocessSpec, ObsSetupSpec, PrepareSpec])
def test_every_flag_is_a_spec_field_and_every_field_a_flag(spec):
    parser = flags.build_parser(spec, argparse.ArgumentParser())
    assert {a.dest for a in parser._actions} - {"help", "config"} == set(spec.model_fields)


def test_help_groups_the_engine_flags_by_what_they_are_for():
    text = subprocess.run([sys.executable, "stream_out.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings[1:] == ["presenter and audio in", "lip model", "enhancement", "outputs", "live timing",
                            "GPU and runtime", "server"]
    assert all(GROUPS.index(a) < GROUPS.index(b) for a, b in zip(headings[1:], headings[2:]))


def test_argv_a_preset_and_a_session_body_make_the_same_spec(built, tmp_path):
    from engine.cli import parse_args
    from engine.serve.sessions import session_spec
    cache = built["cache"] / "clip25"
    preset = tmp_path / "mine.yaml"
    preset.write_text(f"stream_out:\n  data_dir: {cache}\n  latency_ms: 400\n  enhance: none\n  outfile: []\n")
    from_argv = parse_args(["--data_dir", str(cache), "--latency_ms", "400", "--outfile", "x.mp4"]).engine()
    from_preset = parse_args(["--config", str(preset)]).engine()
    from_body = session_spec(EngineSpec(), {"data_dir": "clip25", "latency_ms": 400}, built["cache"])
    assert from_argv.replace(outfile=()) == from_preset == from_body.replace(record_minutes=None)
    assert from_body.record_minutes == 60  # a session's recordings always have the server's cap
    assert from_body.latency_ms == 400.0 and from_argv.outfile == ("x.mp4",) and from_argv.pads == (0, 10, 0, 0)


@pytest.mark.parametrize("values, field", [
    ({"batch_size": 0}, "batch_size"), ({"enhance": "all"}, "enhance"), ({"latency_ms": float("nan")}, "latency_ms"),
    ({"live_batch_size": 1.0}, "live_batch_size"), ({"color_match": 1}, "color_match"), ({"fps": 30}, "fps"),
    ({"background": "purple"}, "background"), ({"outfile": "x.mp4"}, "outfile"), ({"nope": 1}, "nope")])
def test_the_spec_refuses_wrong_types_choices_and_ranges(values, field):
    with pytest.raises(ValidationError) as caught:
        EngineSpec(**values)
    assert flags.field_of(caught.value) == field


def test_a_range_error_on_the_command_line_is_one_argparse_line(capsys):
    from engine.cli import parse_args
    with pytest.raises(SystemExit) as exited:
        parse_args(["--batch_size", "0"])
    assert exited.value.code == 2
    assert "argument --batch_size: Input should be greater than or equal to 1" in capsys.readouterr().err
