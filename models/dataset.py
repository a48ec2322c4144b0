"""Training samples from an LRS2-style folder (what `preprocess --train_dir` writes, or LRS2 itself).

<data_root>/train.txt, val.txt: one clip folder per line; each clip holds 00000.jpg … (frames without a face are
absent) and audio.wav. Samples follow the reference scripts (§9.2 of the anchors): 5-frame windows, the lower
half of each crop for SyncNet, mel windows at int(80 f / 25), the generator's per-frame windows one frame earlier.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from core.errors import UserError
from core.timebase import MEL_WINDOW, SYNC_FRAMES, mel_start
from audio.decode import load_audio
from audio.mel import melspectrogram



class DataError(UserError):
    """A training folder that cannot be used; the message says what to run."""


@dataclass
class Clip:
    folder: Path
    frames: dict[int, Path]   # frame index -> jpg
    mel: np.ndarray           # (80, T)

    def window(self, start: int) -> Optional[list[Path]]:
        """The 5 consecutive frame files from `start`, or None when one is missing."""
        paths = [self.frames.get(start + k) for k in range(SYNC_FRAMES)]
        return None if any(p is None for p in paths) else paths

    def mel_window(self, frame: int) -> Optional[np.ndarray]:
        start = mel_start(frame)
        if start < 0 or start + MEL_WINDOW > self.mel.shape[1]:
            return None
        return self.mel[:, start:start + MEL_WINDOW]


def split_folders(data_root: Path, split: str) -> tuple[Path, list[Path]]:
    """(<data_root>/<split>.txt, the clip folders it lists: its first word per line, relative to data_root)."""
    data_root = Path(data_root)
    listing = data_root / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"{listing} is missing; export a training set with "
                        f"`python stream_out.py preprocess <videos> --train_dir {data_root}`")
    folders = [Path(line.split()[0]) for line in listing.read_text().splitlines() if line.strip()]
    return listing, [folder if folder.is_absolute() else data_root / folder for folder in folders]


def read_split(data_root: Path, split: str) -> list[Clip]:
    """The clips listed in <data_root>/<split>.txt that have audio and at least a window of frames."""
    listing, folders = split_folders(data_root, split)
    clips = []
    for folder in folders:
        frames = {int(p.stem): p for p in folder.glob("*.jpg") if p.stem.isdigit()}
        if len(frames) < 3 * SYNC_FRAMES or not (folder / "audio.wav").is_file():
            continue
        clips.append(Clip(folder, frames, melspectrogram(load_audio(folder / "audio.wav"))))
    if not clips:
        raise DataError(f"{listing}: no usable clip (each needs audio.wav and at least {3 * SYNC_FRAMES} frames)")
    return clips


def read_frames(paths: list[Path], size: int) -> np.ndarray:
    """(T, size, size, 3) BGR float32 in [0,1], resized like the reference loader."""
    frames = []
    for path in paths:
        image = cv2.imread(str(path))
        if image is None:
            raise DataError(f"{path}: unreadable image")
        frames.append(cv2.resize(image, (size, size)))
    return np.stack(frames).astype(np.float32) / 255.0


def to_channels(frames: np.ndarray) -> torch.Tensor:
    """(T,H,W,3) -> (3,T,H,W), the layout of the reference datasets."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2)))


class Sampler:
    """Random samples as the reference datasets draw them: a random clip, a random window, a different window."""

    def __init__(self, clips: list[Clip], size: int, seed: Optional[int] = None):
        self.clips, self.size = clips, size
        self.random = random.Random(seed)

    def _pick(self, first: int = 0) -> tuple[Clip, int, int]:
        """(clip, start, wrong start): both windows complete, the start's mel windows inside the audio."""
        for _ in range(1000):
            clip = self.random.choice(self.clips)
            starts = sorted(clip.frames)
            start, wrong = self.random.choice(starts), self.random.choice(starts)
            if start == wrong or start < first or clip.window(start) is None or clip.window(wrong) is None:
                continue
            if clip.mel_window(start + SYNC_FRAMES - 1) is None:
                continue
            return clip, start, wrong
        raise DataError("no complete 5-frame windows with audio found in the training clips")

    def syncnet(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(faces (15, S/2, S), mel (1, 80, 16), label (1,)): half in sync, half a window from elsewhere."""
        clip, start, wrong = self._pick()
        in_sync = self.random.random() < 0.5
        frames = read_frames(clip.window(start if in_sync else wrong), self.size)[:, self.size // 2:]
        faces = torch.from_numpy(np.ascontiguousarray(np.concatenate(list(frames), axis=2).transpose(2, 0, 1)))
        mel = torch.from_numpy(clip.mel_window(start).copy())[None]
        return faces, mel, torch.tensor([float(in_sync)])

    def generator(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x (6,5,S,S): masked ground truth + a wrong window, per-frame mels (5,1,80,16) one frame early as in
        training, mel (1,80,16) for the sync loss, ground truth (3,5,S,S))."""
        clip, start, wrong = self._pick(first=1)
        truth = read_frames(clip.window(start), self.size)
        masked = truth.copy()
        masked[:, self.size // 2:] = 0
        reference = read_frames(clip.window(wrong), self.size)
        x = torch.cat([to_channels(masked), to_channels(reference)], dim=0)
        per_frame = np.stack([clip.mel_window(start + k - 1) for k in range(SYNC_FRAMES)])[:, None]
        mel = torch.from_numpy(clip.mel_window(start).copy())[None]
        return x, torch.from_numpy(per_frame.copy()), mel, to_channels(truth)


def batch(samples: list[tuple]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.stack(parts) for parts in zip(*samples))
