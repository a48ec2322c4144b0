"""Engine speed with Wav2Lip-96 (random weights; speed does not depend on them) or the weight-free mouth animator.

python bench/engine.py [--data_dir CACHE] [--seconds 20] [--live_seconds 20] [--enhance_seconds 0.4]
                       [--device auto] [--runtime auto] [--dtype auto] [--latency_ms 300] [--live_batch_size 1]
                       [--lip wav2lip96|animator]
A measurement given 0 seconds is skipped.
- file render: wall time for `seconds` of espeak-ng speech into an mp4, vs real time;
- live loop (null sink), speech arriving in 20 ms chunks kept 0.1 s ahead of the clock: speech frames lip-synced,
  frames skipped to stay on time, late frames, input-to-screen latency p50/p95 (arrival of the chunk that
  completed a frame's window to the frame shown) beside the clock's pacing offset, CPU use and peak RSS (of this
  whole process; bench/memory.py measures a live run on its own);
- file render with each GFPGAN enhancer (a short clip: ~5 s per head on a CPU).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from demo.presenter import FacePath, make_presenter_clip, speak  # noqa: E402
from audio.decode import load_audio  # noqa: E402
from core.timebase import SAMPLE_RATE  # noqa: E402
from engine.composite import Compositor  # noqa: E402
from engine.loop import EngineConfig, LiveEngine, render_file  # noqa: E402
from engine.presenter import Presenter  # noqa: E402
from engine.sources import Feeder  # noqa: E402
from engine.sinks import Mp4Sink  # noqa: E402
from models import wav2lip96  # noqa: E402
from models.blocks import Wav2Lip  # noqa: E402
from models.mouthwarp import MouthAnimator  # noqa: E402
from models.predictor import LipSyncPredictor  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402

TEXT = ("Welcome back to the stream. Today we look at how a lip sync engine keeps audio and video together, "
        "frame by frame, while the presenter loops quietly in the background.")


class NullLiveSink:
    live = True

    def open(self, width, height):
        pass

    def write(self, frame, audio, pts):
        pass

    def close(self):
        pass


def speech(work: Path, seconds: float) -> np.ndarray:
    one = load_audio(speak(TEXT, work / "speech.wav"))
    return np.tile(one, int(np.ceil(seconds * SAMPLE_RATE / len(one))))[: int(seconds * SAMPLE_RATE)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--live_seconds", type=float, default=20.0)
    parser.add_argument("--enhance_seconds", type=float, default=0.4)
    parser.add_argument("--data_dir", help="a presenter cache to use (e.g. out/demo/cache/presenter from "
                                           "`stream_out.py demo`); default: a generated 720p presenter")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--latency_ms", type=float, default=300.0)
    parser.add_argument("--live_batch_size", type=int, default=1)
    parser.add_argument("--lip", default="wav2lip96", choices=["wav2lip96", "animator"],
                        help="the lip model: Wav2Lip-96 (random weights) or the weight-free mouth animator")
    args = parser.parse_args()
    print(header())
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    if args.data_dir:
        presenter = Presenter(args.data_dir, 96, load_heads=True)
    else:
        clip = make_presenter_clip(work / "presenter.mp4", 4.0, 25, FacePath(width=1280, height=720, scale=1.4))
        preprocess_video(clip, work / "cache", PreprocessConfig(), progress=False)
        presenter = Presenter(work / "cache" / "presenter", 96, load_heads=True)
    if args.lip == "animator":
        predictor = MouthAnimator(presenter.face_size)
        print(f"presenter {presenter.width}x{presenter.height}, the weight-free mouth animator")
    else:
        predictor = LipSyncPredictor(Wav2Lip(wav2lip96.GENERATOR).eval(), args.device, args.dtype,
                                     runtime=args.runtime, calibration_faces=presenter.sample_faces(32),
                                     store_dir=work / "runtime")
        print(f"presenter {presenter.width}x{presenter.height}, Wav2Lip-96 on {predictor.device} via "
              f"{predictor.runtime} ({str(predictor.precision).replace('torch.', '')})")
    predictor.warm_up(16)
    audio = speech(work, max(args.seconds, args.live_seconds))

    if args.seconds > 0:
        start = time.perf_counter()
        stats = render_file(audio[: int(args.seconds * SAMPLE_RATE)], presenter, predictor, Compositor(presenter),
                            [Mp4Sink(work / "out.mp4")], progress=False)
        took = time.perf_counter() - start
        print(f"file render, enhance none: {args.seconds:.0f} s of audio in {took:.1f} s "
              f"({stats.frames / took:.1f} frames/s, {args.seconds / took:.2f}x real time, {stats.inferred} frames lip-synced)")

    if args.live_seconds <= 0:
        return
    predictor.batch_size = args.live_batch_size
    cfg = EngineConfig(latency_ms=args.latency_ms, live_batch_size=args.live_batch_size)
    engine = LiveEngine(presenter, predictor, Compositor(presenter), [NullLiveSink()], cfg)
    live_audio = audio[: int(args.live_seconds * SAMPLE_RATE)]
    chunks = (live_audio[i:i + SAMPLE_RATE // 50] for i in range(0, len(live_audio), SAMPLE_RATE // 50))
    feeder = Feeder(engine.buffer, chunks, ahead_seconds=0.1)  # 20 ms chunks kept 0.1 s ahead, as a streaming TTS
    cpu_before, wall_before = os.times(), time.perf_counter()
    feeder.start()
    live = engine.run()
    feeder.stop()
    cpu = sum(os.times()[:2]) - sum(cpu_before[:2])
    wall = time.perf_counter() - wall_before
    latency = live.latency_ms()
    heard, pacing = latency["input"], latency["pacing_offset"]
    print(f"live loop, enhance none, batch {args.live_batch_size}, speech in 20 ms chunks kept 0.1 s ahead: "
          f"{live.frames} frames in {wall:.1f} s ({live.frames / wall:.1f} frames/s), {live.inferred} of {live.speech} "
          f"speech frames lip-synced ({100 * live.inferred / max(live.speech, 1):.0f}%), {live.skipped} shown without "
          f"the model to stay on time, {live.late} late; input to screen p50 {heard['p50']:.0f} ms, p95 "
          f"{heard['p95']:.0f} ms (target {args.latency_ms:.0f}); pacing offset p50 {pacing['p50']:.2f} ms, p95 "
          f"{pacing['p95']:.2f} ms; CPU {100 * cpu / wall:.0f}% (of {os.cpu_count()} cores x 100%); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")

    if args.enhance_seconds <= 0 or args.lip == "animator":
        return
    from models.gfpgan import GfpganEnhancer
    from models.gfpgan.arch import build_gfpgan
    enhancer = GfpganEnhancer(build_gfpgan(), args.device)
    for mode in ("lip", "face"):
        start = time.perf_counter()
        stats = render_file(audio[: int(args.enhance_seconds * SAMPLE_RATE)], presenter, predictor,
                            Compositor(presenter, mode, enhancer), [Mp4Sink(work / f"{mode}.mp4")], progress=False)
        took = time.perf_counter() - start
        print(f"file render, enhance {mode}: {stats.frames} frames in {took:.1f} s ({stats.frames / took:.2f} frames/s)")


if __name__ == "__main__":
    main()
