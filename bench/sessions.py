"""How many live sessions one machine holds: ramp sessions until the first late frame, and print the table.

python bench/sessions.py [--size 0|96|288|384] [--enhance none|lip|face --gfpgan_path G.pth] [--device auto]
                         [--resolution 540p|720p|1080p] [--data_dir CACHE] [--hold 60] [--step 1] [--max 64]
                         [--latency_ms 300] [--speech WAV] [--cuda_graphs]
--size 0 (default) is the weight-free mouth animator; 96/288/384 is Wav2Lip at that size with random weights, saved
in the released checkpoint layout and loaded as a user's file would be (speed does not depend on the weights);
--enhance without --gfpgan_path saves a random GFPGANv1.4-layout file the same way.

Every session runs in one process as `stream_out.py serve` hosts them (engine/serve/sessions.py: the shared presenter, one
model worker batching every session's frames by deadline), with a null output, and speaks all the time: speech is
pushed in 20 ms chunks kept 0.1 s ahead of its clock (the WebSocket transport is not in the figures). Each step adds
`step` sessions and holds `hold` seconds; for that hold it prints per session the worst fps, the late and skipped
frames, the worst p95 input-to-screen latency, the CPU cores busy, the frames per call of the shared model worker
(how well it batches the sessions' due frames) with the most frames the model takes in one network call, and how many more sessions the admission check (measured load,
default budget) would have let in. It stops after the first step with a late frame or a p95 over
the latency target.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from core.timebase import FPS, SAMPLE_RATE  # noqa: E402
from demo.presenter import FacePath, make_presenter_clip  # noqa: E402
from engine.cli import parse_args  # noqa: E402
from engine.serve.sessions import LoadMeter, Sessions, SessionsConfig  # noqa: E402
from engine.outputs.sinks import NullSink  # noqa: E402
from engine.render.sources import Feeder  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402

RESOLUTIONS = {"540p": (960, 540, 1.2), "720p": (1280, 720, 1.4), "1080p": (1920, 1080, 2.1)}


def random_checkpoint(size: int, path: Path) -> Path:
    """A Wav2Lip checkpoint of random weights in the released layout ({'state_dict'}, 'module.' keys)."""
    import torch
    from models import wav2lip96, wav2lip288, wav2lip384
    from models.blocks import Wav2Lip
    spec = {96: wav2lip96.GENERATOR, 288: wav2lip288.GENERATOR, 384: wav2lip384.GENERATOR}[size]
    state = {f"module.{k}": v for k, v in Wav2Lip(spec).state_dict().items()}
    torch.save({"state_dict": state}, path)
    return path


def random_gfpgan(path: Path) -> Path:
    """A GFPGAN checkpoint of random weights in the released layout ({'params_ema'})."""
    import torch
    from models.gfpgan.arch import build_gfpgan
    torch.save({"params_ema": build_gfpgan().state_dict()}, path)
    return path


def chunks_forever(pcm: np.ndarray):
    step = SAMPLE_RATE // 50
    while True:
        for start in range(0, len(pcm) - step + 1, step):
            yield pcm[start:start + step]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=0, choices=[0, 96, 288, 384])
    parser.add_argument("--enhance", default="none", choices=["none", "lip", "face"])
    parser.add_argument("--gfpgan_path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resolution", default="540p", choices=sorted(RESOLUTIONS))
    parser.add_argument("--data_dir", help="a presenter cache (default: a generated one at --resolution)")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds each step holds")
    parser.add_argument("--step", type=int, default=1, help="sessions added per step")
    parser.add_argument("--max", type=int, default=64)
    parser.add_argument("--latency_ms", type=float, default=300.0)
    parser.add_argument("--speech", help="a speech file to use (default: espeak-ng, which a GPU machine may lack)")
    parser.add_argument("--cuda_graphs", action="store_true", help="the models' steps as CUDA graphs (CUDA only)")
    args = parser.parse_args()
    print(header())
    from audio.decode import load_audio
    from demo.presenter import speak

    work = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    flags = ["--device", args.device, "--latency_ms", str(args.latency_ms), "--enhance", args.enhance]
    if args.cuda_graphs:
        flags.append("--cuda_graphs")
    if args.enhance != "none":
        flags += ["--gfpgan_path", args.gfpgan_path or str(random_gfpgan(work / "GFPGANv1.4.pth"))]
    if args.size:
        flags += ["--checkpoint_path", str(random_checkpoint(args.size, work / f"wav2lip{args.size}.pth"))]
    if args.data_dir:
        cache = Path(args.data_dir)
    else:
        width, height, scale = RESOLUTIONS[args.resolution]
        clip = make_presenter_clip(work / "presenter.mp4", 4.0, 25, FacePath(width=width, height=height, scale=scale))
        cache = work / "cache" / preprocess_video(clip, work / "cache", PreprocessConfig(face_size=args.size or 96),
                                                  progress=False).name
    pcm = load_audio(args.speech or speak("Welcome back to the stream. Today we look at how a lip sync engine keeps "
                                          "audio and video together, frame by frame.", work / "speech.wav"))
    # admission off for the ramp (it is what is being measured); its verdict is printed beside each step
    sessions = Sessions(parse_args(flags).engine(), SessionsConfig(root=Path("/"), max_sessions=args.max, cpu_cores=1e9,
                                                          worker_share=1e9))
    default_budget = SessionsConfig(max_sessions=10 ** 6)  # the CPU and model-worker checks only
    meter = LoadMeter(window=args.hold)
    print(f"presenter {cache}, {'Wav2Lip-%d (random weights)' % args.size if args.size else 'mouth animator'}, "
          f"enhance {args.enhance}, latency target {args.latency_ms:.0f} ms, {args.hold:.0f} s per step")
    print("| sessions | worst fps | late frames | skipped | worst p95 input→screen ms | CPU cores busy | "
          "frames per worker call (network batch) | admission: more allowed |")
    print("|---|---|---|---|---|---|---|---|")
    feeders, held = [], 0
    try:
        while len(sessions) < args.max:
            for _ in range(args.step):
                session_flags = parse_args([*flags, "--data_dir", str(cache)]).engine().replace(outfile=())  # the null output only
                session = sessions.start(session_flags, f"s{len(sessions)}", extra_sinks=(NullSink(),),
                                         admit=False)
                feeders.append(Feeder(session.engine.buffer, chunks_forever(pcm), ahead_seconds=0.1,
                                      ends_input=False).start())
            time.sleep(2.0)  # start-up (first frames, warm caches) is not part of the hold
            running = [sessions.get(sid) for sid in sessions.ids()]
            before = {s.id: (s.engine.stats.frames, s.engine.stats.late, s.engine.stats.skipped) for s in running}
            calls0 = [(w.rows, w.batches) for w in sessions.workers]
            cpu0, t0 = time.process_time(), time.monotonic()
            meter.sample(*sessions.frames(), list(sessions.workers), len(sessions))
            time.sleep(args.hold)
            meter.sample(*sessions.frames(), list(sessions.workers), len(sessions))
            elapsed, cores = time.monotonic() - t0, (time.process_time() - cpu0) / (time.monotonic() - t0)
            fps, late, skipped, p95 = [], 0, 0, []
            for s in running:
                frames0, late0, skipped0 = before[s.id]
                stats = s.engine.stats
                fps.append((stats.frames - frames0) / elapsed)
                late += stats.late - late0
                skipped += stats.skipped - skipped0
                heard = list(stats.input_latencies)[-(stats.frames - frames0):]  # speech never stops: one a frame
                p95.append(float(np.percentile(heard, 95)) * 1000 if heard else float("nan"))
            rows = sum(w.rows - r for w, (r, _) in zip(sessions.workers, calls0))
            calls = sum(w.batches - b for w, (_, b) in zip(sessions.workers, calls0))
            left, _ = meter.room(default_budget, len(running), list(sessions.workers))
            worst = max(p95)
            print(f"| {len(running)} | {min(fps):.1f} | {late} | {skipped} | {worst:.0f} | {cores:.2f} | "
                  f"{rows / max(calls, 1):.1f} ({sessions.workers[0].model.batch_size}) | {left} |",
                  flush=True)
            if late or not worst <= args.latency_ms:
                break
            held = len(running)
    finally:
        for feeder in feeders:
            feeder.stop()
        sessions.close()
    print(f"held: {held} live session(s) with 0 late frames and p95 <= {args.latency_ms:.0f} ms over "
          f"{args.hold:.0f} s each (frames/s target {FPS})")


if __name__ == "__main__":
    main()
