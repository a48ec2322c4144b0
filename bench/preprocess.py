"""Preprocessing speed and cache size on generated presenter clips (720p and 1080p, 10 s, 25 fps).

python bench/preprocess.py [--seconds 10]
Prints frames/s for decode alone, decode + detection/landmarks, and the whole preprocess (crops, heads, JPEG
writes), plus the cache size per minute of video.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from demo.presenter import FacePath, make_presenter_clip  # noqa: E402
from preprocess.detect import make_detector  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402
from preprocess.video import decode_frames, probe  # noqa: E402

SIZES = {"720p": (1280, 720, 1.4), "1080p": (1920, 1080, 2.1)}


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def bench(label: str, seconds: float, work: Path) -> dict:
    width, height, scale = SIZES[label]
    clip = make_presenter_clip(work / f"{label}.mp4", seconds, 25, FacePath(width=width, height=height, scale=scale))
    info = probe(clip)
    t = time.perf_counter()
    n = sum(1 for _ in decode_frames(info))
    decode_fps = n / (time.perf_counter() - t)
    detector = make_detector("mediapipe")
    t = time.perf_counter()
    found = sum(detector.detect(frame) is not None for frame in decode_frames(info))
    detect_fps = n / (time.perf_counter() - t)
    detector.close()
    t = time.perf_counter()
    result = preprocess_video(clip, work / "cache", PreprocessConfig(), progress=False)
    total_fps = result.frames / (time.perf_counter() - t)
    mb = folder_mb(work / "cache" / label)
    return {"clip": label, "frames": n, "faces": found, "decode fps": decode_fps, "decode+detect fps": detect_fps,
            "preprocess fps": total_fps, "cache MB/min": mb * 60 / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    try:
        rows = [bench(label, args.seconds, work) for label in SIZES]
    finally:
        shutil.rmtree(work)
    print(header())
    print("detector mediapipe; face_size 96; JPEG q95 (bg 4:2:0, crops 4:4:4)")
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.1f}" if isinstance(row[k], float) else str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
