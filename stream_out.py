#!/usr/bin/env python3
"""stream-wav2lip command line.

  python stream_out.py --checkpoint_path wav2lip_gan.pth --data_dir CACHE --audio_files a.mp3 b.wav --outfile out.mp4
  python stream_out.py ... --outfile obs       MPEG-TS into an OBS Media Source (--obs_control sets OBS up)
  python stream_out.py ... --outfile vcam      virtual camera + audio device
  python stream_out.py preprocess <video-or-folder>... --out <cache_root>   build presenter caches
  python stream_out.py demo [--out out/demo]                    sample presenter speaks -> out/demo/demo.mp4
  python stream_out.py prepare --checkpoint_path wav2lip.pth   convert a checkpoint for this CPU ahead of time
  python stream_out.py evaluate video.mp4 --syncnet_v2 syncnet_v2.model   LSE-D, LSE-C, AV offset (= python -m models.evaluate)
  python stream_out.py obs-setup [--target obs|vcam] [--obs_password ...]   point OBS at our stream
  python stream_out.py serve [--data_dir CACHE] [--listen 127.0.0.1:8765]   WebSocket/HTTP/WebRTC API, sessions
  python stream_out.py ray-serve --hosts 2 [--gpus_per_host 1] [--ray_address auto]   sessions across Ray Serve
Run `python stream_out.py --help` for every engine flag; add --verbose to any command for tracebacks.
"""
from __future__ import annotations

import os
import sys

# Before numpy or scipy load: their OpenBLAS workers would spin a core between our small matrix products.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    """Every subcommand, with errors as one line on stderr (--verbose adds the traceback) and SIGTERM as Ctrl-C."""
    from core.cli import run_command
    return run_command(dispatch, argv)


def dispatch(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "preprocess":
        import argparse

        from preprocess.__main__ import parse_args, run
        return run(parse_args(rest, argparse.ArgumentParser(prog="stream_out.py preprocess")))
    if command == "prepare":
        from tools.prepare import main as prepare_main
        return prepare_main(rest)
    if command == "evaluate":
        from tools.evaluate import main as evaluate_main
        return evaluate_main(rest)
    from engine.cli import main as engine_main, obs_setup, ray_serve
    if command == "demo":
        from demo.__main__ import prepare
        engine_argv, video = prepare(rest)
        code = engine_main(engine_argv)
        if code == 0 and video is not None:
            print(f"demo video: {video.resolve()}")
        return code
    if command == "obs-setup":
        return obs_setup(rest)
    if command == "ray-serve":
        return ray_serve(rest)
    if command == "serve":  # the engine with the network API; --listen defaults to 127.0.0.1:8765
        return engine_main(rest if any(a.startswith("--listen") for a in rest) else [*rest, "--listen", "127.0.0.1:8765"])
    return engine_main(argv)


if __name__ == "__main__":
    from core.cli import exit_with
    exit_with(main())
