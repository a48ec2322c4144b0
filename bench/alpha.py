"""The presenter without its background (preprocess --matte, stream_out.py --background): what it costs, how close.

On the cut-out presenter (demo/presenter.py: the astronaut cut along a known outline over the studio wall, so the
true matte is known), at 640x360 and 1280x720:
- the matte's time per frame (selfie segmentation + guided filter; the [1, 2, 1] time filter is not timed), and
  its IoU with the truth;
- a key colour's time per frame (engine/render/backdrop.py: keyed), and the IoU of what ffmpeg's chromakey (similarity
  0.2) keys back out of the H.264 file with the truth;
- the encoders' frames/s on the BGRA frames, with the sinks' own options: ProRes 4444 (.mov), lossless VP9 with
  alpha (.webm files) and realtime VP9 with alpha (the live WebM stream), with ffmpeg's own threads.

Usage: python bench/alpha.py [--seconds 2]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: bench/engine.py is not engine/

from machine import header  # noqa: E402
from demo.presenter import FacePath, frame_at, person_matte  # noqa: E402
from engine.render.backdrop import Backdrop, keyed  # noqa: E402
from engine.outputs.sinks import Mp4Sink, WebmAlphaSink  # noqa: E402
from preprocess.matte import PersonMatte, to_levels  # noqa: E402

def encoders(folder: Path) -> dict[str, list[str]]:
    """The alpha outputs' own ffmpeg options (engine/outputs/sinks.py), video only."""
    return {"ProRes 4444 (.mov file)": [*Mp4Sink(folder / "x.mov", alpha=True)._formats()[0], "-f", "mov"],
            "VP9 lossless + alpha (.webm file)": [*Mp4Sink(folder / "x.webm", alpha=True)._formats()[0], "-f", "webm"],
            "VP9 realtime + alpha (live WebM)": ["-an", *WebmAlphaSink(fps=25)._formats()]}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def encode_rate(frames: list[np.ndarray], options: list[str], folder: Path) -> float:
    height, width = frames[0].shape[:2]
    started = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgra", "-s", f"{width}x{height}",
                    "-r", "25", "-i", "-", *options, str(folder / "out")], input=b"".join(f.tobytes() for f in frames),
                   check=True)
    return len(frames) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(header())
    matte_maker = PersonMatte()
    green = Backdrop.parse("green").colour
    for width, height in ((640, 360), (1280, 720)):
        path = FacePath(width=width, height=height, scale=height / 360, sway=40 * height / 360, bob=12 * height / 360)
        times = np.arange(int(args.seconds * 25)) / 25
        frames = [frame_at(path, t, cutout=True) for t in times]
        truths = [person_matte(path, t) > 0.5 for t in times]
        started = time.perf_counter()
        mattes = [to_levels(matte_maker.raw(frame)) for frame in frames]
        matte_ms = 1000 * (time.perf_counter() - started) / len(frames)
        scores = [iou(m > 127, t) for m, t in zip(mattes, truths)]
        started = time.perf_counter()
        greens = [keyed(f, m, green) for f, m in zip(frames, mattes)]
        key_ms = 1000 * (time.perf_counter() - started) / len(frames)
        with tempfile.TemporaryDirectory() as folder:
            mp4 = Path(folder) / "green.mp4"
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s",
                            f"{width}x{height}", "-r", "25", "-i", "-", "-c:v", "libx264", "-crf", "18", "-pix_fmt",
                            "yuv420p", str(mp4)], input=b"".join(g.tobytes() for g in greens), check=True)
            raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp4), "-vf",
                                  "format=yuva420p,chromakey=0x00b140:0.2:0,alphaextract", "-f", "rawvideo",
                                  "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout
            keyed_back = np.frombuffer(raw, np.uint8).reshape(-1, height, width)
            key_scores = [iou(k > 127, t) for k, t in zip(keyed_back, truths)]
            bgra = [np.dstack([f, m]) for f, m in zip(frames, mattes)]
            rates = {name: encode_rate(bgra, options, Path(folder)) for name, options in encoders(Path(folder)).items()}
        print(f"{width}x{height}, {len(frames)} frames:")
        print(f"  matte: {matte_ms:.1f} ms/frame, IoU with the true matte {min(scores):.3f}-{max(scores):.3f}")
        print(f"  green key colour: {key_ms:.1f} ms/frame; chromakey on the H.264 file gives IoU "
              f"{min(key_scores):.3f}-{max(key_scores):.3f}")
        for name, rate in rates.items():
            print(f"  {name}: {rate:.1f} frames/s")
    matte_maker.close()


if __name__ == "__main__":
    main()
