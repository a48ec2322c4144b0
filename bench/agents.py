"""The Pipecat avatar against a local server, on this machine: how soon the lips follow the TTS, whether sound and
picture drift apart over a long conversation, and what a conversation costs.

python bench/agents.py [--minutes 10] [--models animator wav2lip96] [--latency_ms 300] [--venv VENV]

Per lip model: a server in this process (as `stream_out.py serve` runs), and bench/agents_conversation.py in the
Pipecat venv (made by integrations/pipecat/setup.sh when missing), which opens a session through
StreamWav2LipVideoService and alternates lines of espeak-ng speech (24 kHz, sent as a TTS does) with 3 s of silence.
Printed, over every line but the first (the session's warm-up, printed apart): the first frame out with the line's
sound, and the first with a lip-synced picture (not a cached one), after the line's first audio chunk went in (p50 /
p95, ms); the synced picture minus the sound (p50, and its trend in ms per minute); the stream's audio clock minus
its video clock (samples played vs frame pts) at the end and its drift in ms per minute; CPU cores busy in the
server and in the Pipecat process.
Wav2Lip-96 has random weights in the released checkpoint layout (speed does not depend on the weights).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import header  # noqa: E402
from sessions import random_checkpoint  # noqa: E402

from demo.presenter import make_presenter_clip, speak  # noqa: E402
from engine.render.presenter import Presenter  # noqa: E402
from engine.serve.routes import ServerConfig  # noqa: E402
from engine.serve.server import Server  # noqa: E402
from engine.serve.sessions import SessionsConfig  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402

LINES = ["Hello, and welcome back. How can I help you today?",
         "The train to the airport leaves every twenty minutes from platform four.",
         "Sure. I have booked a table for two at seven this evening."]


def speech_lines(work: Path) -> list[str]:
    """espeak-ng lines at 24 kHz, their leading silence cut: the first chunk sounds."""
    paths = []
    for n, line in enumerate(LINES):
        pcm, rate = soundfile.read(speak(line, work / f"line{n}.wav"), dtype="float32")
        pcm = soxr.resample(pcm[np.flatnonzero(np.abs(pcm) > 1e-3)[0]:], rate, 24000)
        paths.append(str(work / f"line{n}_24k.wav"))
        soundfile.write(paths[-1], pcm, 24000, subtype="PCM_16")
    return paths


def percentiles(values: np.ndarray) -> str:
    return f"{np.percentile(values, 50):.0f} / {np.percentile(values, 95):.0f}"


def slope_per_minute(points: list) -> float:
    t, v = np.array(points, dtype=float).T
    return float(np.polyfit(t / 60, v, 1)[0]) if len(t) > 2 and np.ptp(t) > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--models", nargs="+", default=["animator", "wav2lip96"], choices=["animator", "wav2lip96"])
    parser.add_argument("--latency_ms", type=int, default=300)
    parser.add_argument("--venv", default=str(ROOT / "integrations" / "pipecat" / ".venv"))
    args = parser.parse_args()
    print(header())
    subprocess.run(["bash", str(ROOT / "integrations" / "pipecat" / "setup.sh"), args.venv], check=True,
                   stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    clip = make_presenter_clip(work / "presenter.mp4", 4.0, 25)
    cache = work / "cache" / preprocess_video(clip, work / "cache", PreprocessConfig(), progress=False).name
    presenter = Presenter(cache)
    cached = work / "cached.sha1"
    cached.write_text("".join(hashlib.sha1(cv2.cvtColor(presenter.background(i), cv2.COLOR_BGR2RGB).tobytes())
                              .hexdigest() + "\n" for i in range(presenter.frames)))
    lines = speech_lines(work)
    print(f"presenter {presenter.width}x{presenter.height}, latency target {args.latency_ms} ms, "
          f"{args.minutes:g} min conversation (lines of 3-4 s, 3 s silences)")
    print("| lip model | lines | first line: sound / synced ms | sound after first chunk p50 / p95 ms | synced picture "
          "p50 / p95 ms | synced minus sound p50 ms (trend ms/min) | audio minus video clock, end ms (drift ms/min) | "
          "CPU cores: server / Pipecat |")
    print("|---|---|---|---|---|---|---|---|")
    server = Server(None, ServerConfig(port=0), SessionsConfig(root=work)).start()
    try:
        for model in args.models:
            body = {"data_dir": str(cache), "latency_ms": args.latency_ms}
            if model == "wav2lip96":
                body["checkpoint_path"] = str(random_checkpoint(96, work / "wav2lip96.pth"))
            cpu, children, began = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
            conversation = ROOT / "bench" / "agents_conversation.py"
            result = subprocess.run([str(Path(args.venv) / "bin" / "python"), str(conversation),
                                     "--url", f"http://127.0.0.1:{server.port}", "--session", json.dumps(body),
                                     "--speech", *lines, "--cached", str(cached), "--minutes", str(args.minutes)],
                                    capture_output=True, text=True, check=True,
                                    env={**os.environ, "PYTHONPATH": os.pathsep.join(  # this checkout's packages
                                        str(ROOT / "integrations" / name) for name in ("client", "pipecat"))})
            wall = time.monotonic() - began
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            client = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / wall
            found = json.loads(result.stdout.strip().splitlines()[-1])
            sound, lips = np.array(found["first_sound_ms"]), np.array(found["first_lips_ms"])
            onset, clock = found["lips_minus_sound_ms"][1:], found["audio_minus_video_ms"]
            print(f"| {model} | {len(lips)} of {found['utterances']} | {sound[0]:.0f} / {lips[0]:.0f} | "
                  f"{percentiles(sound[1:])} | {percentiles(lips[1:])} | {np.median([o for _, o in onset]):.0f} "
                  f"({slope_per_minute(onset):+.2f}) | {clock[-1][1]:+.1f} ({slope_per_minute(clock):+.3f}) | "
                  f"{(time.process_time() - cpu) / wall:.2f} / {client:.2f} |", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
