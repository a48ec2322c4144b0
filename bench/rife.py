"""--interpolator rife: the cost of RIFE v4.6's in-between frame (models/rife) on this machine.

python bench/rife.py [--frames 3]
Random weights in the released flownet.pkl layout (the speed does not depend on the values), two presenter frames
(demo/presenter.py) 40 ms apart at 1280x720: the whole frame (padded to 1280x736) and a 400x400 face region (padded
to 416x416), as RifeInterpolator.midpoint runs them (BGR uint8 in and out). In-between frames per second on the CPU
with torch's default threads, and on CUDA when torch sees a GPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from demo.presenter import FacePath, frame_at  # noqa: E402
from models.rife import IFNet, RifeInterpolator  # noqa: E402

FACE_SIDE = 400


def rate(interpolator: RifeInterpolator, a: np.ndarray, b: np.ndarray, frames: int) -> float:
    """In-between frames per second after one untimed warm-up call (allocator, cuDNN choice)."""
    interpolator.midpoint(a, b)
    started = time.perf_counter()
    for _ in range(frames):
        interpolator.midpoint(a, b)  # returns a host array, so CUDA work is finished when it returns
    return frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3, help="timed calls per case on the CPU (x10 on CUDA)")
    args = parser.parse_args()
    print(header())
    path = FacePath(width=1280, height=720, scale=2.0, sway=240.0, bob=60.0, period=1.0)
    a, b = frame_at(path, 0.0), frame_at(path, 0.04)
    centre = ((path.box_at(0.0)[:2] + path.box_at(0.0)[2:]) / 2).astype(int)
    x, y = np.clip(centre - FACE_SIDE // 2, 0, (1280 - FACE_SIDE, 720 - FACE_SIDE))
    cases = (("1280x720 whole frame", a, b),
             (f"{FACE_SIDE}x{FACE_SIDE} face region", a[y:y + FACE_SIDE, x:x + FACE_SIDE],
              b[y:y + FACE_SIDE, x:x + FACE_SIDE]))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "flownet.pkl"
        torch.manual_seed(0)
        torch.save({f"module.{k}": v for k, v in IFNet().state_dict().items()}, weights)
        for device in devices:
            interpolator = RifeInterpolator(weights, device=device)
            frames = args.frames * (10 if device == "cuda" else 1)
            threads = f", {torch.get_num_threads()} torch threads" if device == "cpu" else ""
            for name, first, second in cases:
                print(f"{device}{threads}, {name}: {rate(interpolator, first, second, frames):.2f} in-between "
                      f"frames/s (fp32, {frames} timed)")


if __name__ == "__main__":
    main()
