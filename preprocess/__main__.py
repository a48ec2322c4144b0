"""python -m preprocess <video-or-folder>... --out <cache_root>"""
from __future__ import annotations

import argparse
import sys

from configs import flags
from configs.spec import PreprocessSpec
from core.cli import log_to_stderr
from core.timebase import interpolated

from .pipeline import PreprocessConfig, run_batch, summary_table


def command(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return parser or argparse.ArgumentParser(prog="python -m preprocess", description=(
        "Turn presenter videos into the cache the live engine plays: 25 fps frames, face crops, upright heads, "
        "16 kHz audio and every box/affine needed to paste results back."))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The flags of PreprocessSpec, grouped for --help."""
    return flags.build_parser(PreprocessSpec, command(parser))


def config_from_args(args: PreprocessSpec) -> PreprocessConfig:
    return PreprocessConfig(face_size=args.face_size, pads=tuple(args.pads), detector=args.detector,
                            smooth_radius=0 if args.nosmooth else PreprocessConfig.smooth_radius,
                            jpeg_quality=args.jpeg_quality, force=args.force, train_dir=args.train_dir,
                            allow_truncated=args.allow_truncated, between_frames=interpolated(args.fps), matte=args.matte)


def run(args: PreprocessSpec) -> int:
    log_to_stderr()
    results = run_batch(args.inputs, args.out, config_from_args(args), progress=not args.quiet)
    if not results:
        print("error: no video files found in the given inputs", file=sys.stderr)
        return 2
    print(summary_table(results))
    print(f"cache: {args.out.resolve()}")
    return 1 if any(r.status == "failed" for r in results) else 0


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> PreprocessSpec:
    return flags.parse_spec(PreprocessSpec, argv, "preprocess", command(parser))


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    from core.cli import exit_with, run_command
    exit_with(run_command(main))
