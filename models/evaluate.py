"""Lip-sync metrics of a video: LSE-D, LSE-C and the best audio offset, judged by a SyncNet lip expert.

python -m models.evaluate video.mp4 --syncnet expert.pth [--vshift 15]

As in Wav2Lip's evaluation: every 5-frame window of lower-half face crops is embedded, and so is every 0.2 s mel
window; for each audio offset in [-vshift, vshift] frames the face/audio distance is averaged over the video.
LSE-D is the smallest mean distance, LSE-C the median minus that minimum (how clearly one offset wins), and the
best offset says by how many frames the audio lags the lips (+k: the sound comes k frames after the mouth).
Our experts' embeddings are L2-normalised, so distances lie in [0, 2]; they are not on the scale of the numbers
papers quote from the original syncnet_v2 model.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from .dataset import MEL_STEP, WINDOW, mel_start
from .loader import load_syncnet


@dataclass(frozen=True)
class SyncScore:
    lse_d: float
    lse_c: float
    offset: int
    mean_distances: np.ndarray  # per offset, -vshift .. vshift


def sync_scores(face: np.ndarray, audio: np.ndarray, vshift: int = 15) -> SyncScore:
    """face (N,D): embedding of the window starting at frame i (NaN rows: no face); audio (M,D): of the mel window
    at frame j (NaN: beyond the audio). Distances between face i and audio i+o for o in [-vshift, vshift]."""
    offsets = np.arange(-vshift, vshift + 1)
    means = np.full(len(offsets), np.nan)
    for n, o in enumerate(offsets):
        i = np.arange(max(0, -o), min(len(face), len(audio) - o))
        if len(i) == 0:
            continue
        d = np.linalg.norm(face[i] - audio[i + o], axis=1)
        d = d[~np.isnan(d)]
        if len(d):
            means[n] = d.mean()
    if np.all(np.isnan(means)):
        raise ValueError("no face window overlaps the audio at any offset")
    best = int(np.nanargmin(means))
    minimum = float(means[best])
    return SyncScore(minimum, float(np.nanmedian(means) - minimum), int(offsets[best]), means)


def embed(syncnet, crops: list[Optional[np.ndarray]], mel: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """SyncNet embeddings of the 5-frame window starting at each frame (NaN where a frame has no face) and of the
    mel window at each frame (NaN beyond the audio). crops: (S,S,3) float BGR in [0,1], or None (no face)."""
    size = syncnet.spec.size
    windows = [i for i in range(len(crops) - WINDOW + 1) if all(c is not None for c in crops[i:i + WINDOW])]
    mel_frames = [j for j in range(len(crops)) if mel_start(j) + MEL_STEP <= mel.shape[1]]

    def face_input(i: int) -> np.ndarray:  # (15, S/2, S): lower halves, frames on channels
        return np.concatenate([crops[i + t][size // 2:] for t in range(WINDOW)], axis=2).transpose(2, 0, 1)

    def run(encode, items: list[int], make) -> dict[int, np.ndarray]:
        out = {}
        with torch.no_grad():
            for k in range(0, len(items), batch):
                part = items[k:k + batch]
                vectors = encode(torch.from_numpy(np.stack([make(i) for i in part]).astype(np.float32))).numpy()
                out.update(zip(part, vectors))
        return out

    faces = run(syncnet.embed_faces, windows, face_input)
    audio = run(syncnet.embed_audio, mel_frames, lambda j: mel[None, :, mel_start(j):mel_start(j) + MEL_STEP])
    dim = next(iter({**faces, **audio}.values())).shape[0]
    face_rows, audio_rows = np.full((len(crops), dim), np.nan, np.float32), np.full((len(crops), dim), np.nan, np.float32)
    for i, v in faces.items():
        face_rows[i] = v
    for j, v in audio.items():
        audio_rows[j] = v
    return face_rows, audio_rows


def evaluate_video(video: Path, syncnet_path: str, vshift: int = 15) -> SyncScore:
    """Preprocess the video (25 fps, faces at the expert's size, its audio) in a temp folder, then score it."""
    from engine.audio import load_audio
    from engine.mel import melspectrogram
    from preprocess import cache
    from preprocess.pipeline import PreprocessConfig, preprocess_video

    syncnet = load_syncnet(syncnet_path).model.eval()
    with tempfile.TemporaryDirectory(prefix="evaluate-") as work:
        folder = Path(work) / preprocess_video(Path(video), Path(work), PreprocessConfig(face_size=syncnet.spec.size),
                                               progress=False).name
        if not (folder / cache.AUDIO).is_file():
            raise ValueError(f"{video}: has no audio track to judge")
        has_face = cache.read_face_det(folder)["has_face"]
        crops = [cv2.imread(str(folder / "body_face" / cache.frame_name(i))).astype(np.float32) / 255 if ok else None
                 for i, ok in enumerate(has_face)]
        mel = melspectrogram(load_audio(folder / cache.AUDIO))
    face, audio = embed(syncnet, crops, mel)
    return sync_scores(face, audio, vshift)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.splitlines()[0])
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
