"""python stream_out.py --checkpoint_path X --data_dir CACHE --audio_files a.mp3 b.wav --outfile out.mp4 | obs | vcam"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from configs import parse_with_config
from core.timebase import FPS

log = logging.getLogger("stream_out")
OBS_URL = "udp://127.0.0.1:23000?pkt_size=1316"
OBS_ALPHA_URL = "udp://127.0.0.1:23001?pkt_size=1316"  # --background alpha: WebM with VP9 alpha
DEFAULT_OUTFILE = ["out/result.mp4"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stream_out.py", description="Make a cached presenter speak, to a file or live.")
    p.add_argument("--config", help="YAML preset (wav2lip96|288|384) or file; its 'stream_out' section sets defaults")
    p.add_argument("--checkpoint_path", help="Wav2Lip generator checkpoint (wav2lip.pth, wav2lip_gan.pth, 288/384); "
                                             "without one, the weight-free mouth animator is used")
    p.add_argument("--model", choices=("wav2lip", "iplap"), default="wav2lip",
                   help="the lip model: wav2lip (--checkpoint_path; without one the mouth animator) or iplap "
                        "(IP_LAP: --landmark_checkpoint and --renderer_checkpoint; a GPU feature, seconds per frame "
                        "on a CPU)")
    p.add_argument("--landmark_checkpoint", metavar="landmarkgenerator_checkpoint.pth", help="--model iplap: "
                   "IP_LAP's landmark generator")
    p.add_argument("--renderer_checkpoint", metavar="renderer_checkpoint.pth", help="--model iplap: IP_LAP's renderer")
    p.add_argument("--iplap_references", type=int, default=25, metavar="N",
                   help="--model iplap: reference faces the renderer warps from (the reference's 25; fewer are "
                        "faster, each costs about as much as the rest of a frame)")
    p.add_argument("--data_dir", help="a presenter cache folder (from `stream_out.py preprocess`), or a cache root "
                                      "holding exactly one")
    p.add_argument("--face", help="uncached input: a video to preprocess first (uses --pads/--nosmooth)")
    p.add_argument("--pads", type=int, nargs=4, default=[0, 10, 0, 0], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"))
    p.add_argument("--nosmooth", action="store_true", help="with --face: no temporal smoothing of face boxes")
    p.add_argument("--audio_files", nargs="+", default=[], help="audio to speak, played back to back")
    p.add_argument("--allow_truncated", action="store_true",
                   help="use audio files (and a --face video) that hold less than they declare (otherwise an error)")
    p.add_argument("--mic", nargs="?", const="default", help="speak what the microphone hears (optional device)")
    p.add_argument("--outfile", nargs="+", default=DEFAULT_OUTFILE,
                   help="one or more of: a .mp4 path; 'obs' (MPEG-TS to OBS on %s); 'vcam' (virtual camera + "
                        "audio device); a udp:// or srt:// URL. With --background alpha: a .mov or .webm path, and "
                        "'obs' is WebM with alpha on %s" % (OBS_URL, OBS_ALPHA_URL))
    p.add_argument("--enhance", default="none", choices=["none", "lip", "face"], help="GFPGAN on the head")
    p.add_argument("--gfpgan_path", help="GFPGANv1.3.pth / GFPGANv1.4.pth (for --enhance lip|face)")
    p.add_argument("--gfpgan_dtype", default="auto", help="auto (fp16 on CUDA, fp32 on the CPU), fp32, fp16 or bf16")
    p.add_argument("--pipeline", default="auto", choices=["auto", "host", "device"],
                   help="device: the cached frames decoded once into GPU memory, the model's pre/post-processing, "
                        "the composite and GFPGAN all on the device, one copy per finished frame (auto: on CUDA "
                        "with a Wav2Lip checkpoint); host: JPEG decodes and cv2 on host threads (the CPU path)")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: torch.compile Wav2Lip and GFPGAN (CUDA graphs) in the background for the batch sizes "
                        "in use, running eagerly until each is ready")
    p.add_argument("--resident_gib", type=float, default=24.0,
                   help="device pipeline: most GPU memory for the decoded presenter (beyond it: pinned host memory)")
    p.add_argument("--batch_size", type=int, default=16, help="frames per model call when writing a file")
    p.add_argument("--live_batch_size", type=int, default=1, help="frames per model call when live")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", default="auto",
                   help="auto (fp16 on CUDA; int8 on CPUs with VNNI, checked against fp32), fp32, fp16, bf16 or int8")
    p.add_argument("--runtime", default="auto", choices=["auto", "torch", "openvino"],
                   help="auto: OpenVINO on the CPU, torch on CUDA")
    p.add_argument("--runtime_cache", help="where converted models are kept, one per checkpoint (default: "
                                           "$XDG_CACHE_HOME or ~/.cache, /stream-wav2lip/runtime)")
    p.add_argument("--audio_device", help="vcam: sound device the audio plays on (name or index)")
    p.add_argument("--audio_delay_ms", type=float, default=0.0, help="vcam: delay the audio; OBS: audio sync offset")
    p.add_argument("--latency_ms", type=float, default=300.0, help="live: audio-in to frame-out target")
    p.add_argument("--silence_db", type=float, default=-45.0, help="quieter than this: no inference, still mouth")
    p.add_argument("--color_match", action="store_true", help="match the generated region's colour to the face")
    p.add_argument("--preview", action="store_true", help="also show the output in a window")
    p.add_argument("--seconds", type=float, help="live: stop after this many seconds")
    p.add_argument("--obs_host", default="127.0.0.1")
    p.add_argument("--obs_port", type=int, default=4455)
    p.add_argument("--obs_password", default="")
    p.add_argument("--obs_control", action="store_true",
                   help="with obs/vcam: create/refresh our source in OBS's current scene (or start its virtual camera)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="serve the network API (WebSocket speech in, WebRTC preview out), e.g. 127.0.0.1:8765")
    p.add_argument("--token", default=os.environ.get("STREAM_WAV2LIP_TOKEN"),
                   help="with --listen on a non-loopback address: the secret every request must carry (better: set "
                        "STREAM_WAV2LIP_TOKEN, which `ps` does not show)")
    p.add_argument("--allow_host", action="append", default=[], metavar="NAME",
                   help="with --listen: another name the server answers to (Host header), e.g. a LAN host name")
    p.add_argument("--allow_origin", action="append", default=[], metavar="ORIGIN",
                   help="with --listen: a web origin (e.g. https://my.app) whose pages may use the API")
    p.add_argument("--max_queue_seconds", type=float, default=300.0,
                   help="with --listen: most speech waiting to be spoken, all clients and uploads together")
    p.add_argument("--max_client_queue_seconds", type=float, default=60.0,
                   help="with --listen: most speech one WebSocket client may have waiting")
    p.add_argument("--max_peers", type=int, default=4, help="with --listen: most WebRTC viewers per session")
    p.add_argument("--session_root", default=".",
                   help="serve: the folder whose presenters, checkpoints and recordings POST /sessions may name "
                        "(paths in a session body stay inside it)")
    p.add_argument("--max_sessions", type=int, default=32, help="serve: most sessions at once")
    p.add_argument("--cpu_cores", type=float,
                   help="serve: CPU cores the sessions may use; a new session is refused when the measured load "
                        "says it would not fit (default: half this machine's cores: one Python process)")
    p.add_argument("--trust_checkpoint", action="store_true", help="allow checkpoints that pickle Python objects")
    p.add_argument("--blendshapes_csv", metavar="FILE.csv",
                   help="with a file render: also write each frame's ARKit-52 mouth and jaw weights, in the column "
                        "layout of Live Link Face's CSV exports")
    p.add_argument("--blendshapes", action="store_true",
                   help="serve: compute ARKit weights per frame; a WebSocket client asks for them with "
                        '{"type": "blendshapes", "on": true}')
    p.add_argument("--blendshapes_only", action="store_true",
                   help="audio to ARKit weights, no lip model and no video: into --blendshapes_csv, or, serving, "
                        "as WebSocket events")
    p.add_argument("--fps", type=int, choices=(25, 50), default=25,
                   help="output frames/s: 50 puts an in-between frame (--interpolator) between each pair the lip model "
                        "makes at 25, on every output; the audio is unchanged")
    p.add_argument("--interpolator", choices=("dis", "rife"), default="dis",
                   help="what makes the in-between frames at --fps 50: 'dis' (OpenCV's optical flow, no weights) or "
                        "'rife' (Practical-RIFE v4.6, --rife_path; a GPU feature: about 4 frames/s on a 2-core CPU)")
    p.add_argument("--rife_path", metavar="flownet.pkl",
                   help="RIFE v4.6's train_log/flownet.pkl (from the model list in hzwer/Practical-RIFE's README)")
    p.add_argument("--background", default="video", type=checked_backdrop,
                   help="behind the presenter: 'video' (the recorded one), 'alpha' (transparent: .mov ProRes 4444, "
                        ".webm VP9, or 'obs' as WebM), or a key colour for outputs without alpha: green, blue or "
                        "#rrggbb (edges spill-suppressed for OBS's chroma key). Needs a cache made with --matte")
    p.add_argument("--blendshapes_from", choices=("auto", "pixels", "animator"), default="auto",
                   help="how a lip-synced frame's weights are measured: 'pixels' reads the face mesh on the generated "
                        "mouth (what the viewer sees; a mesh run per frame), 'animator' takes the mouth animator's "
                        "shape for the same audio (exact for the animator, cheap); auto: pixels with a Wav2Lip "
                        "checkpoint, animator otherwise")
    return p


def checked_backdrop(text: str) -> str:
    """argparse type for --background: the text, once engine.backdrop accepts it (an error names the choices)."""
    from engine.backdrop import Backdrop
    try:
        Backdrop.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None
    return text


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv, "stream_out")


def make_sinks(args: argparse.Namespace):
    from engine.sinks import Mp4Sink, MpegTsSink, PreviewSink, SinkError, VirtualCameraSink, WebmAlphaSink
    alpha = args.background == "alpha"
    sinks = []
    for target in args.outfile:
        if target == "vcam":
            if alpha:
                raise SinkError("a virtual camera carries no alpha: fill a key colour instead (--background green) "
                                "and key it in OBS, or stream the alpha with --outfile obs")
            sinks.append(VirtualCameraSink(args.audio_device, args.audio_delay_ms, fps=args.fps))
        elif target == "obs" or "://" in target or target.endswith(".ts"):
            url = (OBS_ALPHA_URL if alpha else OBS_URL) if target == "obs" else target
            if alpha and target.endswith(".ts"):
                raise SinkError(f"{target}: MPEG-TS (H.264) carries no alpha; stream WebM with alpha to a URL "
                                f"(--outfile obs, or udp://…), or fill a key colour (--background green)")
            sinks.append(WebmAlphaSink(url, fps=args.fps) if alpha else MpegTsSink(url, fps=args.fps))
        else:
            sinks.append(Mp4Sink(target, fps=args.fps, alpha=alpha))
    if args.preview:
        sinks.append(PreviewSink())
    return sinks


def use_gpu_encoder(sinks: list, compositor) -> None:
    """Frames rendered on a CUDA GPU are encoded there too (NVENC) when this ffmpeg can; else x264 on the CPU."""
    from core.ffmpeg import encoder_works
    on_gpu = getattr(compositor, "on_device", False) and compositor.device.type == "cuda"
    if on_gpu and any(getattr(s, "nvenc_capable", False) for s in sinks) and encoder_works("h264_nvenc"):
        for sink in sinks:
            if getattr(sink, "nvenc_capable", False):
                sink.video_codec = "h264_nvenc"
        log.info("encoding with NVENC (h264_nvenc)")


def run(args: argparse.Namespace) -> int:
    """The engine command. Errors are raised (core.cli prints them in one line); Ctrl-C ends a render cleanly."""
    from audio.decode import check_files, stream_files
    from engine.loop import LiveEngine, Stats, render_file
    from engine.sources import Feeder, Microphone

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
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
        args.outfile, args.preview, args.blendshapes = [], False, True  # no video at all
    if serving and args.outfile == DEFAULT_OUTFILE:
        args.outfile = []  # serving: the WebRTC preview, plus any live outputs asked for
    from engine.assemble import check_frame_flags
    check_frame_flags(args)
    sinks = make_sinks(args)
    live = serving or any(s.live for s in sinks)
    if live and any(not s.live for s in sinks):
        raise ValueError("mix of a file and a live output: run them separately (a file renders faster than live)")
    if args.blendshapes_csv and live:
        raise ValueError("--blendshapes_csv goes with a file render (--outfile x.mp4, or --blendshapes_only); "
                         "live, serve with --blendshapes and read the WebSocket events")
    if serving and args.background == "alpha":
        raise ValueError("--background alpha: WebRTC carries no alpha; serve with a key colour (--background green)")
    if serving:
        server_cfg = server_config(args)  # refused before any model loads
        if args.obs_control:
            obs_control(args)
        return serve(args, server_cfg, files)
    from engine.assemble import Parts, blendshape_meter
    presenter, predictor, compositor, cfg = Parts().build(args, live)
    meter = blendshape_meter(args, presenter, predictor)
    use_gpu_encoder(sinks, compositor)
    audio = stream_files(args.audio_files)
    if not live:
        stats, weights = Stats(), [] if meter is not None else None
        try:
            render_file(audio, presenter, predictor, compositor, sinks, cfg, stats=stats,
                        total_samples=sum(f.samples for f in files), meter=meter, blendshapes=weights)
        except KeyboardInterrupt:  # the sinks were closed on the way out: the file holds what was rendered
            print(f"interrupted: wrote {', '.join(args.outfile) or 'nothing'} with the first {stats.frames} frames",
                  file=sys.stderr)
            return 130
        finally:
            if meter is not None:
                meter.close()
        written = list(args.outfile)
        if weights is not None:
            from engine.interpolate import in_between_weights
            from models.mouthwarp.blendshapes import write_live_link_csv
            rows = weights if args.fps == FPS else in_between_weights(weights)
            written.append(str(write_live_link_csv(args.blendshapes_csv, rows, fps=args.fps)))
        between = f", {stats.frames} more in between at {args.fps} frames/s" if args.fps != FPS else ""
        print(f"wrote {', '.join(written)}: {stats.frames} frames ({stats.frames / FPS:.2f} s){between}, "
              f"{stats.inferred} {'measured' if predictor is None else 'lip-synced'}")
        log_start_up(stats)
        return 0
    if args.obs_control:
        obs_control(args)
    engine = LiveEngine(presenter, predictor, compositor, sinks, cfg, meter)
    microphone = feeder = None
    if args.mic:
        microphone = Microphone(engine.buffer, None if args.mic == "default" else args.mic)
        microphone.start()
    if files:
        feeder = Feeder(engine.buffer, audio, ends_input=not args.mic).start()
    try:
        stats = engine.run(args.seconds)
    except KeyboardInterrupt:
        engine.stop()
        stats = engine.stats
    finally:
        if microphone:
            microphone.stop()
        if feeder:
            feeder.stop()
    print(f"streamed {stats.presented} frames at {args.fps} frames/s ({stats.inferred} lip-synced, {stats.late} late)")
    return 0


def log_start_up(stats) -> None:
    """How long the user waited for the first frame (from the process start) and the most memory it took."""
    import resource
    import time

    import psutil
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
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, user_api="blas")


def server_config(args: argparse.Namespace):
    from engine.server import ServerConfig, check_bind, parse_listen
    host, port = parse_listen(args.listen)
    cfg = ServerConfig(host, port, args.token or None, tuple(args.allow_host), tuple(args.allow_origin),
                       max_queue_seconds=args.max_queue_seconds,
                       max_client_queue_seconds=args.max_client_queue_seconds, max_peers=args.max_peers)
    check_bind(cfg)
    return cfg


def sessions_config(args: argparse.Namespace):
    from engine.protocol import SpeechLimits
    from engine.sessions import SessionsConfig
    return SessionsConfig(root=Path(args.session_root), max_sessions=args.max_sessions, cpu_cores=args.cpu_cores,
                          limits=SpeechLimits(max_queue_seconds=args.max_queue_seconds,
                                              max_client_queue_seconds=args.max_client_queue_seconds),
                          max_peers=args.max_peers)


def serve(args: argparse.Namespace, server_cfg, files: list) -> int:
    """Run the network API until Ctrl-C / SIGTERM. With a presenter (--data_dir or --face) it is the default
    session, and --audio_files become its first utterance; without one the server waits for POST /sessions."""
    from audio.decode import stream_files
    from engine.server import Server
    from engine.sessions import DEFAULT
    from engine.sources import Feeder
    has_presenter = bool(args.data_dir or args.face)
    if files and not has_presenter:
        raise ValueError("--audio_files needs a presenter to speak them: add --data_dir CACHE")
    server = Server(None, server_cfg, sessions_config(args), defaults=args)
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
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if feeder:
            feeder.stop()
        for sid in server.sessions.ids():
            stats = server.sessions.get(sid).engine.stats
            frames, inferred, late = frames + stats.frames, inferred + stats.inferred, late + stats.late
        server.stop()
    print(f"served {frames} frames ({inferred} lip-synced, {late} late)")
    return 0


def obs_control(args: argparse.Namespace) -> None:
    from engine.obs import ObsSettings, setup_media_source, start_virtual_camera
    settings = ObsSettings(args.obs_host, args.obs_port, args.obs_password)
    for target in args.outfile:
        if target == "obs" or "://" in target:
            alpha = args.background == "alpha"
            done = setup_media_source(settings, (OBS_ALPHA_URL if alpha else OBS_URL) if target == "obs" else target,
                                      int(args.audio_delay_ms), input_format="webm" if alpha else "mpegts")
            for line in done or []:
                log.info("OBS: %s", line)
        elif target == "vcam" and start_virtual_camera(settings):
            log.info("OBS: virtual camera started")


def main(argv: Optional[list[str]] = None) -> int:
    return run(parse_args(argv))
