"""Face detectors on this machine: ms per frame on a generated 720p presenter clip and on the 512x512 astronaut.

python bench/detectors.py [--frames 100]
- mediapipe (the default): full-range detector + 478-point mesh, on the clip as the pipeline runs it;
- OpenCV's Haar frontal-face cascade (box only, no landmarks);
- face-alignment's sfd (S3FD + FAN-68): only where its weights are already on disk (we never download them);
  otherwise the row says which files are missing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from demo.presenter import FacePath, astronaut_bgr, make_presenter_clip  # noqa: E402
from preprocess.detect import DetectorUnavailable, make_detector  # noqa: E402
from preprocess.video import decode_frames, probe  # noqa: E402


def ms_per_frame(detect, frames) -> tuple[float, int]:
    detect(frames[0])
    found, start = 0, time.perf_counter()
    for frame in frames:
        found += detect(frame) is not None
    return 1000 * (time.perf_counter() - start) / len(frames), found


def haar():
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def detect(frame):
        boxes = cascade.detectMultiScale(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(40, 40))
        return boxes[0] if len(boxes) else None
    return detect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()
    print(header())
    work = Path(tempfile.mkdtemp(prefix="bench-detectors-"))
    clip = make_presenter_clip(work / "720p.mp4", args.frames / 25, 25, FacePath(width=1280, height=720, scale=1.4))
    frames = list(decode_frames(probe(clip)))
    photo = [astronaut_bgr()] * 10
    print("detector | input | ms per frame | frames with a face")
    for name in ("mediapipe", "sfd"):
        try:
            detector = make_detector(name)
        except DetectorUnavailable as exc:
            print(f"{name} | - | skipped: {exc} | -")
            continue
        for label, images in (("720p clip", frames), ("512x512 astronaut", photo)):
            ms, found = ms_per_frame(detector.detect, images)
            print(f"{name} | {label} | {ms:.1f} | {found} of {len(images)}")
        detector.close()
    for label, images in (("720p clip", frames), ("512x512 astronaut", photo)):
        ms, found = ms_per_frame(haar(), images)
        print(f"Haar cascade | {label} | {ms:.1f} | {found} of {len(images)}")


if __name__ == "__main__":
    main()
