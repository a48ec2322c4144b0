"""--fps 50: the cost of the optical-flow in-between frame (engine/render/interpolate.py) on this machine.

python bench/interpolate.py [--frames 50]
The generated presenter (demo/presenter.py) moving fast, drawn at 1280x720 and 1920x1080. The whole frame (what
`preprocess --fps 50` pays per stored background, and a 50 fps render from a cache without them) and the face
region a 50 fps render from a cache with them runs the flow on (twice the face box, about the union of two
frames' padded Wav2Lip boxes with the engine's margin): in-between frames per second on one OpenCV thread, and
the gain over repeating a frame (PSNR against the true midpoint).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from demo.presenter import FacePath, frame_at  # noqa: E402
from core.flow import FlowInterpolator  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    args = parser.parse_args()
    print(header())
    cv2.setNumThreads(1)
    for width, height in ((1280, 720), (1920, 1080)):
        path = FacePath(width=width, height=height, scale=height / 360, sway=120.0 * height / 360,
                        bob=30.0 * height / 360, period=1.0)
        box = path.box_at(0.0)
        side = int(2.0 * (box[2] - box[0]))
        times = np.linspace(0, 1, 5)[:-1]
        triples = [tuple(frame_at(path, t + dt) for dt in (0.0, 0.02, 0.04)) for t in times]
        corners = [np.clip(((path.box_at(t)[:2] + path.box_at(t)[2:]) / 2 - side / 2).astype(int), 0,
                           (width - side, height - side)) for t in times]
        regions = [lambda f, c=c: f[c[1]:c[1] + side, c[0]:c[0] + side] for c in corners]
        for name, cuts in (("whole frame", [lambda f: f] * len(triples)), (f"{side}x{side} face region", regions)):
            interpolator = FlowInterpolator()
            gains = [psnr(interpolator.midpoint(cut(a), cut(b)), cut(m)) - psnr(cut(a), cut(m))
                     for (a, m, b), cut in zip(triples, cuts)]
            started = time.perf_counter()
            for k in range(args.frames):
                (a, _, b), cut = triples[k % len(triples)], cuts[k % len(triples)]
                interpolator.midpoint(cut(a), cut(b))
            rate = args.frames / (time.perf_counter() - started)
            print(f"{width}x{height}, {name}: {rate:.1f} in-between frames/s (one thread); PSNR gain over "
                  f"repeating a frame {min(gains):.1f}-{max(gains):.1f} dB")


if __name__ == "__main__":
    main()
