"""python -m preprocess <video-or-folder>... --out <cache_root>"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from configs import parse_with_config

from .detect import DETECTORS
from .pipeline import FACE_SIZES, PreprocessConfig, run_batch, summary_table


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m preprocess", description=(
        "Turn presenter videos into the cache the live engine plays: 25 fps frames, face crops, upright heads, "
        "16 kHz audio and every box/affine needed to paste results back."))
    parser.add_argument("--config", help="YAML preset name (wav2lip96, wav2lip288, wav2lip384) or file; "
                        "its 'preprocess' section sets the defaults below")
    parser.add_argument("inputs", nargs="+", type=Path, help="video files and/or folders of videos")
    parser.add_argument("--out", required=True, type=Path, help="cache root; one folder per video is made in it")
    parser.add_argument("--face_size", type=int, default=96, choices=FACE_SIZES,
                        help="face crop size, to match the model: 96, 288 or 384 for Wav2Lip, 128 for IP_LAP "
                             "(default 96)")
    parser.add_argument("--pads", type=int, nargs=4, default=[0, 10, 0, 0], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                        help="pixels added around the face box, as Wav2Lip's --pads (default 0 10 0 0: chin included)")
    parser.add_argument("--nosmooth", action="store_true", help="do not smooth boxes and landmarks over time")
    parser.add_argument("--detector", default="mediapipe", choices=sorted(DETECTORS),
                        help="mediapipe (default, no download) or sfd (needs face-alignment's weights on disk)")
    parser.add_argument("--force", action="store_true", help="rebuild caches that are already complete")
    parser.add_argument("--train_dir", type=Path, help="also export an LRS2-style training set here")
    parser.add_argument("--jpeg_quality", type=int, default=95, help="JPEG quality of cached images (default 95)")
    parser.add_argument("--allow_truncated", action="store_true",
                        help="use videos that decode to fewer frames than they declare (otherwise they fail)")
    parser.add_argument("--fps", type=int, choices=(25, 50), default=25,
                        help="50: also store the optical-flow frame between each pair of background frames, so a "
                             "50 fps render (stream_out.py --fps 50) interpolates only the face region")
    parser.add_argument("--matte", action="store_true",
                        help="also store the presenter's alpha per frame (selfie segmentation, edges refined on the "
                             "frame), for output without this background: stream_out.py --background "
                             "alpha|green|#rrggbb")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(face_size=args.face_size, pads=tuple(args.pads), detector=args.detector,
                            smooth_radius=0 if args.nosmooth else PreprocessConfig.smooth_radius,
                            jpeg_quality=args.jpeg_quality, force=args.force, train_dir=args.train_dir,
                            allow_truncated=args.allow_truncated, between_frames=args.fps == 50, matte=args.matte)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    results = run_batch(args.inputs, args.out, config_from_args(args), progress=not args.quiet)
    if not results:
        print("error: no video files found in the given inputs", file=sys.stderr)
        return 2
    print(summary_table(results))
    print(f"cache: {args.out.resolve()}")
    return 1 if any(r.status == "failed" for r in results) else 0


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(parser), argv, "preprocess")


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    from core.cli import run_command
    sys.exit(run_command(main))
