"""Engine speed, on the CPU or a CUDA GPU: file render, live loop and the cost of each per-frame stage.

python bench/engine.py [--size 96|288|384] [--enhance none|lip|face] [--device auto|cpu|cuda] [--pipeline auto|host|
                       device] [--resolution 720p|1080p] [--data_dir CACHE] [--seconds 20] [--live_seconds 20]
                       [--stages 32] [--runtime auto] [--dtype auto] [--latency_ms 300] [--batch_size 16]
                       [--live_batch_size 1] [--lip wav2lip|animator] [--speech WAV] [--profile] [--fps 25|50]
                       [--cuda_speedup none|graphs|compile]
Random weights (speed does not depend on them); a measurement given 0 seconds (or 0 frames) is skipped.
- per-stage ms per frame on `stages` frames: decode (cached images to what the model and composite read), model,
  enhance (GFPGAN), composite (paste-back, enhancement included), download (device to host), encode (x264/NVENC
  into an mp4);
- file render of `seconds` of espeak-ng speech to a null sink and into an mp4, frames/s, with GPU utilisation
  (nvidia-smi, sampled) on CUDA;
- live loop (null sink), speech arriving in 20 ms chunks kept 0.1 s ahead of the clock: speech frames lip-synced,
  frames skipped to stay on time, late frames, input-to-screen latency p50/p95 (arrival of the chunk that
  completed a frame's window to the frame shown) beside the clock's pacing offset and its drift, CPU use and peak
  RSS.
With --fps 50 (the generated presenter preprocessed with its in-between backgrounds) both runs put an in-between
frame after each; the live line adds the frames presented and the in-between frame's cost.
--cuda_speedup (CUDA): graphs captures the Wav2Lip and GFPGAN steps at the batch sizes in use (models/graphed.py;
the capture time is printed); compile builds torch.compile graphs and waits for them before anything is timed.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from audio.decode import load_audio  # noqa: E402
from core.timebase import SAMPLE_RATE, frame_pts  # noqa: E402
from models.graphed import graph_batches  # noqa: E402
from demo.presenter import FacePath, make_presenter_clip, speak  # noqa: E402
from engine.assemble import pick_pipeline  # noqa: E402
from engine.outputs.targets import use_gpu_encoder  # noqa: E402
from engine.render.composite import Compositor  # noqa: E402
from engine.render.loop import EngineConfig, LiveEngine, render_file, to_host  # noqa: E402
from engine.render.presenter import Presenter  # noqa: E402
from engine.render.resident import load_resident, resident_bytes  # noqa: E402
from engine.outputs.sinks import Mp4Sink, NullSink  # noqa: E402
from engine.render.sources import Feeder  # noqa: E402
from engine.render.torch_composite import TorchCompositor  # noqa: E402
from models import wav2lip96, wav2lip288, wav2lip384  # noqa: E402
from models.blocks import Wav2Lip  # noqa: E402
from models.mouthwarp import MouthAnimator  # noqa: E402
from models.mouthwarp.library import library_for  # noqa: E402
from models.predictor import LipSyncPredictor  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402

SPECS = {96: wav2lip96.GENERATOR, 288: wav2lip288.GENERATOR, 384: wav2lip384.GENERATOR}
RESOLUTIONS = {"720p": (1280, 720, 1.4), "1080p": (1920, 1080, 2.1)}
TEXT = ("Welcome back to the stream. Today we look at how a lip sync engine keeps audio and video together, "
        "frame by frame, while the presenter loops quietly in the background.")


def speech(work: Path, seconds: float, wav: str | None = None) -> np.ndarray:
    """`seconds` of speech: the given file, else espeak-ng reading TEXT, repeated to length."""
    one = load_audio(wav or speak(TEXT, work / "speech.wav"))
    return np.tile(one, int(np.ceil(seconds * SAMPLE_RATE / len(one))))[: int(seconds * SAMPLE_RATE)]


class GpuUtilisation:
    """Mean GPU utilisation over a block, sampled from nvidia-smi every 0.2 s ('n/a' without it)."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=2).stdout.split()
                self.samples.append(float(out[0]))
            except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def __str__(self) -> str:
        return f"{np.mean(self.samples):.0f}%" if self.samples else "n/a"


class ThreadProfiles:
    """cProfile in every thread started inside the block (and this one); on exit, each thread's busiest functions.
    Says where a render's wall time goes when the stages alone add up to less than it."""

    def __init__(self, enabled: bool, top: int = 12):
        self.enabled, self.top, self.profiles = enabled, top, {}

    def _start(self) -> None:
        import cProfile
        profile = self.profiles[threading.current_thread().name] = cProfile.Profile()
        profile.enable()

    def __enter__(self):
        if self.enabled:
            if sys.version_info < (3, 12):  # from 3.12 cProfile sees every thread, and only one may run
                threading.setprofile(lambda *_: (sys.setprofile(None), self._start()))
            self._start()
        return self

    def __exit__(self, *exc):
        if not self.enabled:
            return
        threading.setprofile(None)
        import io
        import pstats
        for name, profile in self.profiles.items():
            profile.disable()
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(self.top)
            body = text.getvalue()
            whose = name if sys.version_info < (3, 12) else "all threads"
            print(f"-- thread {whose}: functions by own time\n" + body[body.find("   ncalls"):].rstrip())


def stage_ms(presenter, predictor, compositor, enhancer, count: int, work: Path) -> dict[str, float]:
    """ms per frame of each per-frame stage, on `count` frames with a face, each measured on its own."""
    cuda = getattr(compositor, "device", torch.device("cpu")).type == "cuda" or \
        getattr(predictor, "device", torch.device("cpu")).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    indices = [int(i) for i in np.flatnonzero(presenter.has_face)[:count]]
    windows = np.random.default_rng(0).normal(size=(len(indices), 80, 16)).astype(np.float32)
    costs = {}

    def timed(name, run):
        run()  # warm: first calls allocate
        sync()
        started = time.perf_counter()
        result = run()
        sync()
        costs[name] = 1000 * (time.perf_counter() - started) / len(indices)
        return result

    faces = timed("decode", lambda: (compositor.faces(indices), [compositor.passthrough(i) for i in indices])[0])
    landmarks = np.stack([presenter.crop_landmarks(i) for i in indices])  # the mouth animator needs them
    mouths = timed("model", lambda: predictor.predict(windows, faces, landmarks))
    if enhancer is not None:
        heads = compositor.frames.heads[indices].to(compositor.device) if hasattr(compositor, "frames") \
            else np.stack([presenter.head(i) for i in indices])
        timed("enhance", lambda: enhancer.enhance_tensors(heads) if isinstance(heads, torch.Tensor)
              else enhancer.enhance(heads))
    frames = timed("composite", lambda: compositor.compose(indices, mouths))
    host = timed("download", lambda: [to_host(f) for f in frames])

    def encode():
        sink = Mp4Sink(work / "stages.mp4")
        use_gpu_encoder([sink], compositor)
        sink.open(presenter.width, presenter.height)
        for k, frame in enumerate(host):
            sink.write(frame, np.zeros(640, np.float32), frame_pts(k))
        sink.close()
    timed("encode", encode)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, choices=sorted(SPECS))
    parser.add_argument("--enhance", default="none", choices=["none", "lip", "face"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pipeline", default="auto", choices=["auto", "host", "device"])
    parser.add_argument("--resolution", default="720p", choices=sorted(RESOLUTIONS))
    parser.add_argument("--data_dir", help="a presenter cache to use (e.g. out/demo/cache/presenter from "
                                           "`stream_out.py demo`); default: a generated presenter at --resolution")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--live_seconds", type=float, default=20.0)
    parser.add_argument("--stages", type=int, default=32, help="frames for the per-stage costs")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--latency_ms", type=float, default=300.0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--live_batch_size", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="profile the file render to the null sink: each thread's busiest functions")
    parser.add_argument("--speech", help="a speech file to use (default: espeak-ng, which a GPU machine may lack)")
    parser.add_argument("--fps", type=int, default=25, choices=(25, 50))
    parser.add_argument("--cuda_speedup", default="none", choices=["none", "graphs", "compile"])
    parser.add_argument("--lip", default="wav2lip", choices=["wav2lip", "animator"],
                        help="the lip model: Wav2Lip at --size (random weights) or the weight-free mouth animator")
    args = parser.parse_args()
    print(header())
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    if args.data_dir:
        presenter = Presenter(args.data_dir, args.size, load_heads=args.enhance != "none", load_between=args.fps == 50)
    else:
        width, height, scale = RESOLUTIONS[args.resolution]
        clip = make_presenter_clip(work / "presenter.mp4", 4.0, 25, FacePath(width=width, height=height, scale=scale))
        preprocess_video(clip, work / "cache", PreprocessConfig(face_size=args.size, between_frames=args.fps == 50),
                         progress=False)
        presenter = Presenter(work / "cache" / "presenter", args.size, load_heads=args.enhance != "none",
                              load_between=args.fps == 50)
    started = time.perf_counter()
    if args.lip == "animator":
        predictor = MouthAnimator(presenter.face_size, library=library_for(presenter))
        described = "the weight-free mouth animator, " + ("the presenter's recorded mouths" if predictor.library
                                                           else "drawn mouths")
    else:
        predictor = LipSyncPredictor(Wav2Lip(SPECS[args.size]).eval(), args.device, args.dtype,
                                     batch_size=args.batch_size, runtime=args.runtime,
                                     calibration_faces=presenter.sample_faces(32), store_dir=work / "runtime",
                                     **speedup(args, args.batch_size, args.live_batch_size))
        if args.cuda_speedup == "compile":
            predictor.runner.net.wait()
        described = (f"Wav2Lip-{args.size} on {predictor.device} via {predictor.runtime} "
                     f"({str(predictor.precision).replace('torch.', '')})")
    enhancer = None
    if args.enhance != "none":
        from models.gfpgan import GfpganEnhancer
        from models.gfpgan.arch import build_gfpgan
        enhancer = GfpganEnhancer(build_gfpgan(), args.device, **speedup(args, 4, 1))  # 4 heads a call, 1 live
        if args.cuda_speedup == "compile":
            enhancer.net.wait()
        described += f", GFPGAN {args.enhance} ({str(enhancer.dtype).replace('torch.', '')})"
    if args.cuda_speedup != "none":
        described += f", {args.cuda_speedup} ready after {time.perf_counter() - started:.1f} s"
    pipeline = pick_pipeline(args.pipeline, predictor)
    if pipeline == "device":
        frames = load_resident(presenter, predictor.device, enhancer is not None)
        compositor = TorchCompositor(presenter, frames, args.enhance, enhancer)
        need = resident_bytes(presenter, enhancer is not None) / 2 ** 30
        print(f"resident presenter images: {need:.2f} GiB for {presenter.frames} frames, "
              f"{need * 60 * 25 / presenter.frames:.1f} GiB per minute of loop, on {frames.backgrounds.device}")
    else:
        compositor = Compositor(presenter, args.enhance, enhancer)
    predictor.warm_up(min(args.batch_size, 16))
    print(f"presenter {presenter.width}x{presenter.height}, {described}, {pipeline} pipeline")

    if args.stages > 0:
        costs = stage_ms(presenter, predictor, compositor, enhancer, args.stages, work)
        print("per-stage ms per frame: " + ", ".join(f"{name} {ms:.2f}" for name, ms in costs.items()))

    audio = speech(work, max(args.seconds, args.live_seconds), args.speech)
    if args.seconds > 0:
        clip_audio = audio[: int(args.seconds * SAMPLE_RATE)]
        for label, sinks in (("null sink", [NullSink()]), ("mp4", [Mp4Sink(work / "out.mp4")])):
            use_gpu_encoder(sinks, compositor)
            with GpuUtilisation() as gpu, ThreadProfiles(args.profile and label == "null sink"):
                start = time.perf_counter()
                stats = render_file(clip_audio, presenter, predictor, compositor, sinks,
                                    EngineConfig(batch_size=args.batch_size, fps=args.fps), progress=False)
                took = time.perf_counter() - start
            print(f"file render to {label}, enhance {args.enhance}, {args.fps} fps: {args.seconds:.0f} s of audio in "
                  f"{took:.1f} s ({stats.frames / took:.1f} lip-model frames/s, {args.seconds / took:.2f}x real time, "
                  f"{stats.inferred} frames lip-synced; GPU utilisation {gpu})")

    if args.live_seconds <= 0:
        return
    predictor.batch_size = args.live_batch_size
    cfg = EngineConfig(latency_ms=args.latency_ms, live_batch_size=args.live_batch_size, fps=args.fps)
    engine = LiveEngine(presenter, predictor, compositor, [NullSink()], cfg)
    live_audio = audio[: int(args.live_seconds * SAMPLE_RATE)]
    chunks = (live_audio[i:i + SAMPLE_RATE // 50] for i in range(0, len(live_audio), SAMPLE_RATE // 50))
    feeder = Feeder(engine.buffer, chunks, ahead_seconds=0.1)  # 20 ms chunks kept 0.1 s ahead, as a streaming TTS
    cpu_before, wall_before = os.times(), time.perf_counter()
    feeder.start()
    with GpuUtilisation() as gpu:
        live = engine.run()
    feeder.stop()
    cpu = sum(os.times()[:2]) - sum(cpu_before[:2])
    wall = time.perf_counter() - wall_before
    latency = live.latency_ms()
    heard, pacing = latency["input"], latency["pacing_offset"]
    print(f"live loop, enhance {args.enhance}, batch {args.live_batch_size}, speech in 20 ms chunks kept 0.1 s "
          f"ahead: {live.frames} frames in {wall:.1f} s ({live.frames / wall:.1f} frames/s), {live.inferred} of "
          f"{live.speech} speech frames lip-synced ({100 * live.inferred / max(live.speech, 1):.0f}%), "
          f"{live.skipped} shown without the model to stay on time, {live.late} of {live.presented} presented "
          f"late{in_between(live)}; input to screen p50 "
          f"{heard['p50']:.0f} ms, p95 {heard['p95']:.0f} ms (target {args.latency_ms:.0f}); pacing offset p50 "
          f"{pacing['p50']:.2f} ms, p95 {pacing['p95']:.2f} ms, drift {drift_ms_per_minute(live, args.fps):+.2f} ms a "
          f"minute; CPU {100 * cpu / wall:.0f}% (of {os.cpu_count()} "
          f"cores x 100%); GPU utilisation {gpu}; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def speedup(args, file_batch: int, live_batch: int) -> dict:
    """The model's constructor arguments for --cuda_speedup: the batch sizes the file render and the live loop use."""
    if args.cuda_speedup == "graphs":
        return {"graph_batches": tuple(sorted(set(graph_batches(file_batch)) | {live_batch}))}
    if args.cuda_speedup == "compile":
        return {"compile_batches": (file_batch, live_batch)}
    return {}


def drift_ms_per_minute(stats, fps: int) -> float:
    """How the clock's median pacing offset moves from the first third of the frames to the last, in ms a minute:
    medians, so that a frame the scheduler made late now and then does not count as the clock drifting."""
    offsets = np.array(stats.present_offsets)
    third = len(offsets) // 3
    if third == 0:
        return float("nan")
    minutes = (len(offsets) - third) / fps / 60
    return 1000 * (np.median(offsets[-third:]) - np.median(offsets[:third])) / minutes


def in_between(stats) -> str:
    """The in-between frames' cost at --fps 50 (nothing at 25)."""
    if not stats.between_seconds:
        return ""
    cost = np.array(stats.between_seconds) * 1000
    return f", in-between frame p50 {np.percentile(cost, 50):.1f} ms, p95 {np.percentile(cost, 95):.1f} ms"


if __name__ == "__main__":
    main()
