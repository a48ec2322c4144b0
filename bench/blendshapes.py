"""Blendshapes only: audio to ARKit weights with no lip model and no video, as 3D-avatar users run it.

python bench/blendshapes.py --data_dir CACHE [--seconds 60] [--live_seconds 20]
CPU per second of audio for a file (render_file with a BlendshapeMeter and no sink), and the CPU share of a live
engine fed espeak-ng speech in real time (20 ms chunks kept 0.1 s ahead), as `serve --blendshapes_only` runs it.
Then what `--blendshapes_from pixels` (the default with Wav2Lip) adds to each lip-synced frame: the face mesh read
on the generated crops (here the mouth animator's, for the same speech).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from audio.decode import load_audio  # noqa: E402
from core.timebase import SAMPLE_RATE  # noqa: E402
from demo.presenter import speak  # noqa: E402
from engine.render.blendshapes import BlendshapeMeter  # noqa: E402
from engine.render.composite import Compositor  # noqa: E402
from engine.render.loop import EngineConfig, LiveEngine, lip_sync, render_file  # noqa: E402
from engine.render.presenter import Presenter  # noqa: E402
from engine.render.sources import Feeder  # noqa: E402
from engine.render.timeline import frame_units  # noqa: E402
from models.mouthwarp import MouthAnimator  # noqa: E402
from models.mouthwarp.library import library_for  # noqa: E402
from preprocess.detect import CropMesh  # noqa: E402


def cpu() -> float:
    return sum(os.times()[:2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--live_seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(header())
    presenter = Presenter(args.data_dir)
    one = load_audio(speak("Welcome back to the stream. Today we talk about lip sync and avatars.",
                           Path(tempfile.mkdtemp()) / "speech.wav"))
    audio = np.tile(one, int(np.ceil(args.seconds * SAMPLE_RATE / len(one))))[: int(args.seconds * SAMPLE_RATE)]
    started, wall = cpu(), time.perf_counter()
    rows: list = []
    render_file(audio, presenter, None, Compositor(presenter), [], progress=False,
                meter=BlendshapeMeter(presenter), blendshapes=rows)
    spent, wall = cpu() - started, time.perf_counter() - wall
    print(f"file: {args.seconds:.0f} s of audio, {len(rows)} frames of weights in {wall:.2f} s, {spent:.2f} CPU s "
          f"({100 * spent / args.seconds:.1f}% of one core per second of audio)")
    engine = LiveEngine(presenter, None, Compositor(presenter), [], EngineConfig(), BlendshapeMeter(presenter))
    events: list = []
    engine.on_event = events.append
    live = audio[: int(args.live_seconds * SAMPLE_RATE)]
    step = SAMPLE_RATE // 50
    feeder = Feeder(engine.buffer, (live[i:i + step] for i in range(0, len(live), step)), ahead_seconds=0.1)
    started, wall = cpu(), time.perf_counter()
    feeder.start()
    stats = engine.run()
    spent, wall = cpu() - started, time.perf_counter() - wall
    weights = sum(e["type"] == "blendshapes" for e in events)
    print(f"live: {stats.frames} frames in {wall:.1f} s, {weights} blendshape events, {stats.late} late; CPU "
          f"{100 * spent / wall:.1f}% of one core")
    read_pixels(presenter, audio)


def read_pixels(presenter: Presenter, audio: np.ndarray) -> None:
    animator = MouthAnimator(presenter.face_size, library=library_for(presenter))
    meter = BlendshapeMeter(presenter, read_pixels=CropMesh())
    crops = [(u.window, i, face) for m in lip_sync(frame_units(audio), presenter, animator, 16)
             if m.faces is not None for u, i, face in zip(m.units, m.indices, m.faces)]
    meter.driven(*crops[0])  # mediapipe loads on the first crop
    started, wall = cpu(), time.perf_counter()
    for crop in crops[1:]:
        meter.driven(*crop)
    spent, wall = cpu() - started, time.perf_counter() - wall
    print(f"pixels: {len(crops) - 1} generated {presenter.face_size} px crops read by the face mesh in {wall:.2f} s, "
          f"{1000 * spent / (len(crops) - 1):.1f} ms of CPU a frame; no face found on {meter.unread}")


if __name__ == "__main__":
    main()
