"""Lip-sync metrics: LSE-D, LSE-C and the best audio offset of face crops against their mel, judged by a SyncNet.

`python stream_out.py evaluate video.mp4 --syncnet expert.pth` (tools/evaluate.py) runs it on any video. As in
Wav2Lip's evaluation: every 5-frame window of lower-half face crops is embedded, and so is every 0.2 s mel window; for each audio offset in [-vshift, vshift] frames the face/audio distance is averaged over the video.
LSE-D is the smallest mean distance, LSE-C the median minus that minimum (how clearly one offset wins), and the
best offset says by how many frames the audio lags the lips (+k: the sound comes k frames after the mouth).
Our experts' embeddings are L2-normalised, so distances lie in [0, 2]; they are not on the scale of the numbers
papers quote from the original syncnet_v2 model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from core.timebase import MEL_WINDOW, SYNC_FRAMES, mel_start

@dataclass(frozen=True)
class SyncScore:
    lse_d: float
    lse_c: float
    offset: int


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
    return SyncScore(minimum, float(np.nanmedian(means) - minimum), int(offsets[best]))


def embed(syncnet, crops: list[Optional[np.ndarray]], mel: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """SyncNet embeddings of the 5-frame window starting at each frame (NaN where a frame has no face) and of the
    mel window at each frame (NaN beyond the audio). crops: (S,S,3) float BGR in [0,1], or None (no face)."""
    size = syncnet.spec.size
    windows = [i for i in range(len(crops) - SYNC_FRAMES + 1) if all(c is not None for c in crops[i:i + SYNC_FRAMES])]
    mel_frames = [j for j in range(len(crops)) if mel_start(j) + MEL_WINDOW <= mel.shape[1]]

    def face_input(i: int) -> np.ndarray:  # (15, S/2, S): lower halves, frames on channels
        return np.concatenate([crops[i + t][size // 2:] for t in range(SYNC_FRAMES)], axis=2).transpose(2, 0, 1)

    def run(encode, items: list[int], make) -> dict[int, np.ndarray]:
        out = {}
        with torch.no_grad():
            for k in range(0, len(items), batch):
                part = items[k:k + batch]
                vectors = encode(torch.from_numpy(np.stack([make(i) for i in part]).astype(np.float32))).numpy()
                out.update(zip(part, vectors))
        return out

    faces = run(syncnet.embed_faces, windows, face_input)
    audio = run(syncnet.embed_audio, mel_frames, lambda j: mel[None, :, mel_start(j):mel_start(j) + MEL_WINDOW])
    dim = next(iter({**faces, **audio}.values())).shape[0]
    face_rows, audio_rows = np.full((len(crops), dim), np.nan, np.float32), np.full((len(crops), dim), np.nan, np.float32)
    for i, v in faces.items():
        face_rows[i] = v
    for j, v in audio.items():
        audio_rows[j] = v
    return face_rows, audio_rows


def score_clip(syncnet, crops: list[Optional[np.ndarray]], mel: np.ndarray, vshift: int = 15) -> SyncScore:
    """LSE-D / LSE-C / offset of one clip: face crops at the expert's size (BGR float in [0,1], None: no face) and
    the clip's mel, judged by a loaded SyncNet in eval mode."""
    face, audio = embed(syncnet, crops, mel)
    return sync_scores(face, audio, vshift)
