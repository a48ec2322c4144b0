"""Lip-sync metrics of any video with a face and sound: LSE-D, LSE-C and the audio offset (models/evaluate.py).

python stream_out.py evaluate video.mp4 --syncnet expert.pth [--vshift 15]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from audio.decode import load_audio
from audio.mel import melspectrogram
from models.evaluate import SyncScore, score_clip
from models.loader import load_syncnet
from preprocess import cache
from preprocess.pipeline import PreprocessConfig, preprocess_video


def evaluate_video(video: Path, syncnet_path: str, vshift: int = 15) -> SyncScore:
    """Preprocess the video (25 fps, faces at the expert's size, its audio) in a temp folder, then score it."""
    syncnet = load_syncnet(syncnet_path).model.eval()
    size = syncnet.spec.size
    with tempfile.TemporaryDirectory(prefix="evaluate-") as work:
        folder = Path(work) / preprocess_video(Path(video), Path(work), PreprocessConfig(face_size=size),
                                               progress=False).name
        if not (folder / cache.AUDIO).is_file():
            raise ValueError(f"{video}: has no audio track to judge")
        has_face = cache.read_face_det(folder)["has_face"]
        crops = [cv2.imread(str(folder / "body_face" / cache.frame_name(i, "body_face"))).astype(np.float32) / 255 if ok else None
                 for i, ok in enumerate(has_face)]
        mel = melspectrogram(load_audio(folder / cache.AUDIO))
    return score_clip(syncnet, crops, mel, vshift)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="stream_out.py evaluate", description=__doc__.splitlines()[0])
    p.add_argument("video", help="any video with a face and an audio track")
    p.add_argument("--syncnet", required=True, help="a SyncNet expert checkpoint (python -m models.train syncnet)")
    p.add_argument("--vshift", type=int, default=15, help="audio offsets tried, in frames either way")
    args = p.parse_args(argv)
    score = evaluate_video(Path(args.video), args.syncnet, args.vshift)
    print(f"LSE-D {score.lse_d:.4f}  LSE-C {score.lse_c:.4f}  offset {score.offset:+d} frames")
    return 0


if __name__ == "__main__":
    from core.cli import run_command
    sys.exit(run_command(main))
