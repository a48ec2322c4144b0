"""python stream_out.py --checkpoint_path X --data_dir CACHE --audio_files a.mp3 b.wav --outfile out.mp4 | obs | vcam"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from typing import Optional

import psutil
from threadpoolctl import threadpool_limits

from audio.decode import check_files, stream_files
from configs import flags
from configs.spec import DEFAULT_OUTFILE, ObsSetupSpec, RayServeSpec, StreamOutSpec
from core.cli import log_to_stderr, stop_of, stop_on_sigterm
from core.timebase import FPS, interpolated
from engine.api import Engine
from engine.assemble import check_frame_flags
from engine.outputs.obs import ObsSettings, setup_media_source, start_virtual_camera
from engine.outputs.targets import CSV_LIVE, MIXED, make_sinks, obs_control
from engine.render.sources import Feeder
from engine.serve.server import Server, ServerConfig
from engine.serve.sessions import DEFAULT, SessionsConfig

log = logging.getLogger("stream_out")


def command() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="stream_out.py", description="Make a cached presenter speak, to a file or "
                                                                     "live.")


def build_parser() -> argparse.ArgumentParser:
    """The flags of StreamOutSpec, grouped for --help."""
    return flags.build_parser(StreamOutSpec, command())


def parse_args(argv: Optional[list[str]]) -> StreamOutSpec:
    return flags.parse_spec(StreamOutSpec, argv, "stream_out", command())


def run(args: StreamOutSpec) -> int:
    """The engine command. Errors are raised (core.cli prints them in one line); Ctrl-C ends a render cleanly."""
    log_to_stderr()
    pin_thread_pools()
    serving = args.listen is not None
    if not args.audio_files and not args.mic and not serving:
        raise ValueError("nothing to say: give --audio_files a.wav … or --mic (or --listen to take it over the "
                         "network)")
    if args.device not in ("auto", "cpu"):  # fail fast, before any file is read or model loaded (a CPU render
        from models.predictor import pick_device  # may never need torch: models/stored.py)
        pick_device(args.device)
    files = check_files(args.audio_files, args.allow_truncated) if args.audio_files else []
    if files and max(f.level for f in files) < 10 ** (args.silence_db / 20):
        log.warning("the audio is silent (below %.0f dB): the presenter will keep a still mouth", args.silence_db)
    if args.blendshapes_only:
        if args.mic and not serving:
            raise ValueError("--blendshapes_only with --mic is live: serve the weights (--listen HOST:PORT)")
        if not serving and not args.blendshapes_csv:
            raise ValueError("--blendshapes_only needs somewhere to put the weights: --blendshapes_csv FILE.csv, "
                             "or serve them (--listen HOST:PORT)")
        if args.blendshapes_from == "pixels":
            raise ValueError("--blendshapes_only makes no pixels to read: leave out --blendshapes_from pixels")
        args = args.replace(outfile=(), preview=False, blendshapes=True)  # no video at all
    if serving and args.outfile == DEFAULT_OUTFILE:
        args = args.replace(outfile=())  # serving: the WebRTC preview, plus any live outputs asked for
    if serving:
        check_frame_flags(args)
        if any(not sink.live for sink in make_sinks(args)):
            raise ValueError(MIXED)
        if args.blendshapes_csv:
            raise ValueError(CSV_LIVE)
        if args.background == "alpha":
            raise ValueError("--background alpha: WebRTC carries no alpha; serve with a key colour (--background "
                             "green)")
        server_cfg = ServerConfig.from_spec(args)  # refused before any model loads
        if args.obs_control:
            obs_control(args)
        return serve(args, server_cfg, files)
    engine = Engine.from_spec(args.engine(), progress=True, speech=files)
    if engine.live:
        stopped = None
        try:
            engine.wait()
        except KeyboardInterrupt as exc:
            stopped = exc
        finally:
            stats = engine.close()
        return finished(f"streamed {stats.presented} frames at {args.fps} frames/s ({stats.inferred} lip-synced, "
                        f"{stats.late} late)", stopped)
    try:
        stats = engine.close()
    except KeyboardInterrupt as exc:  # the sinks were closed on the way out: the files hold what was rendered
        word, code = stop_of(exc)
        if engine.written:
            print(f"{word}: wrote {', '.join(engine.written)} with the first {engine.stats.frames} frames",
                  file=sys.stderr)
        else:
            print(f"{word} {'before the first frame' if engine.stats.frames == 0 else 'while finishing'}: nothing "
                  f"written", file=sys.stderr)
        return code
    between = f", {stats.frames} more in between at {args.fps} frames/s" if interpolated(args.fps) else ""
    print(f"wrote {', '.join(engine.written)}: {stats.frames} frames ({stats.frames / FPS:.2f} s){between}, "
          f"{stats.inferred} {'measured' if engine.model is None else 'lip-synced'}")
    log_start_up(stats)
    return 0


def finished(summary: str, stopped: Optional[KeyboardInterrupt]) -> int:
    """A live command's last line, and its exit code: 0 when it ended by itself, 130 or 143 when stopped."""
    if stopped is None:
        print(summary)
        return 0
    word, code = stop_of(stopped)
    print(f"{word}: {summary}", file=sys.stderr)
    return code


def log_start_up(stats) -> None:
    """How long the user waited for the first frame (from the process start) and the most memory it took."""
    if stats.first_frame_at is not None:
        started = time.monotonic() - (time.time() - psutil.Process().create_time())
        log.info("first frame after %.2f s", stats.first_frame_at - started)
    log.info("peak RSS %.0f MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def pin_thread_pools() -> None:
    """One BLAS thread: our matrix products are small (the mel filter bank), and idle OpenBLAS workers spin a core
    between them. numpy and scipy each bring their own OpenBLAS, and a limit only reaches libraries already
    loaded, so both are loaded first (stream_out.py also sets OPENBLAS_NUM_THREADS before anything loads). The model
    runtimes (torch, OpenVINO) keep their own thread pools."""
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    threadpool_limits(1, user_api="blas")


def serve(args: StreamOutSpec, server_cfg, files: list) -> int:
    """Run the network API until Ctrl-C / SIGTERM. With a presenter (--data_dir or --face) it is the default
    session, and --audio_files become its first utterance; without one the server waits for POST /sessions."""
    has_presenter = bool(args.data_dir or args.face)
    if (args.record_minutes or 0) > args.max_record_minutes:
        raise ValueError(f"--record_minutes {args.record_minutes:g} is past --max_record_minutes "
                         f"{args.max_record_minutes:g}")
    args = args.replace(record_minutes=args.record_minutes or args.max_record_minutes)  # its own session's too
    if files and not has_presenter:
        raise ValueError("--audio_files needs a presenter to speak them: add --data_dir CACHE")
    server = Server(None, server_cfg, SessionsConfig.from_spec(args), defaults=args.engine())
    if has_presenter:  # loaded before listening, however long it takes (a --face video is preprocessed first)
        server.sessions.start(args, DEFAULT, admit=False)
    try:
        server.start()
    except BaseException:
        server.sessions.close()
        raise
    feeder = None
    if files:
        session = server.sessions.get(DEFAULT)
        feeder = Feeder(session.engine.buffer, stream_files(args.audio_files), session.desk.new_utterance(None),
                        ends_input=False).start()
    frames = inferred = late = 0
    stopped = None
    try:
        server.wait()
    except KeyboardInterrupt as exc:
        stopped = exc
    finally:
        if feeder:
            feeder.stop()
        for sid in server.sessions.ids():
            stats = server.sessions.get(sid).engine.stats
            frames, inferred, late = frames + stats.frames, inferred + stats.inferred, late + stats.late
        server.stop()
    return finished(f"served {frames} frames ({inferred} lip-synced, {late} late)", stopped)


def main(argv: Optional[list[str]] = None) -> int:
    return run(parse_args(argv))


def ray_serve(argv: list[str]) -> int:
    """stream_out.py ray-serve: the router and N session hosts on Ray Serve, until Ctrl-C."""
    spec = flags.parse_spec(RayServeSpec, argv, "stream_out", argparse.ArgumentParser(prog="stream_out.py ray-serve"))
    from engine.serve.ray_serve import deploy  # Ray and FastAPI only for this command
    deploy(spec)
    stop_on_sigterm()  # ray.init replaced it with Ray's own, which exits with code 15 and skips the shutdown
    print(f"serving {spec.hosts} session host(s) through http://{spec.listen}/ (POST /sessions); Ctrl-C stops")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt as exc:
        from ray import serve  # Ray: only for ray-serve
        serve.shutdown()
        return finished(f"served through {spec.hosts} session host(s)", exc)


def obs_setup(argv: Optional[list[str]] = None) -> int:
    """stream_out.py obs-setup: point OBS at our stream (or start its virtual camera), idempotently."""
    args = flags.parse_spec(ObsSetupSpec, argv, "obs_setup", argparse.ArgumentParser(
        prog="stream_out.py obs-setup", description=obs_setup.__doc__))
    log_to_stderr()
    settings = ObsSettings(args.obs_host, args.obs_port, args.obs_password)
    if args.target == "vcam":
        ok = start_virtual_camera(settings)
        print("OBS virtual camera is on" if ok else "OBS virtual camera could not be started")
        return 0 if ok else 2
    url = "udp://127.0.0.1:23000" if args.target == "obs" else args.target
    done = setup_media_source(settings, url, args.audio_delay_ms)
    if done is None:
        return 2
    for line in done:
        print(f"OBS: {line}")
    return 0
