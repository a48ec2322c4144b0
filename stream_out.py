#!/usr/bin/env python3
"""stream-wav2lip command line.

  python stream_out.py preprocess <video-or-folder>... --out <cache_root>   build presenter caches
  python stream_out.py demo [--out out/demo]                                sample presenter -> cache
"""
from __future__ import annotations

import sys

COMMANDS = ("preprocess", "demo")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    command, rest = argv[0], argv[1:]
    if command == "preprocess":
        import argparse

        from preprocess.__main__ import parse_args, run
        return run(parse_args(rest, argparse.ArgumentParser(prog="stream_out.py preprocess")))
    from demo.__main__ import main as demo_main
    return demo_main(rest)


if __name__ == "__main__":
    sys.exit(main())
