"""IP_LAP training samples from our LRS2-style export (`preprocess --train_dir`), drawn as the reference's
train_landmarks_generator.py and train_video_renderer.py draw them, from the crops and landmarks the engine uses
(the reference's own training preprocess cuts with 5 pixels of margin and stores 8-bit sketches; see the README).

Each clip folder holds, besides the Wav2Lip crops: `iplap/00000.jpg …` (IP_LAP's 128 x 128 crops, frames without a
face absent), `iplap_landmarks.npz` (pose (N, 2, 74) and content (N, 2, 57) landmarks in the crop's [0, 1], NaN
without a face; crop_size (N, 2) height and width) and audio.wav.
- landmark generator: a window of T = 5 frames starting in [2, n - 7], its pose and content landmarks, 15 other
  frames' landmarks as references, and each window frame k's mel window at frame k - 2 (clips under 25 frames
  are left out, as there).
- renderer: a window of 5 frames starting in [0, n - 5]; the middle frame's crop (the target, its upper half the
  input), the five frames' sketches drawn from their own landmarks, 3 other random frames' crops and sketches as
  references, and the mel window at the middle frame - 2.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from audio.decode import load_audio
from audio.mel import melspectrogram
from core.timebase import MEL_WINDOW, mel_start

from ..dataset import DataError, split_folders
from .mesh import EXPORT_CROPS, EXPORT_LANDMARKS, FACE, MEL_LAG, T_FRAMES, draw_sketch
from .prior import REFERENCE_LANDMARKS

MIN_FRAMES = 25              # the reference's min_len
TRAINING_REFERENCES = 3      # the renderer trains with 3 reference faces (ref_N), and runs with 25


@dataclass
class IplapClip:
    folder: Path
    pose: np.ndarray          # (N, 2, 74), NaN without a face
    content: np.ndarray       # (N, 2, 57)
    crop_size: np.ndarray     # (N, 2) height, width
    mel: np.ndarray           # (80, M)

    @property
    def frames(self) -> int:
        return len(self.pose)

    def has_face(self, frame: int) -> bool:
        return 0 <= frame < self.frames and bool(np.isfinite(self.pose[frame]).all())

    def mel_window(self, frame: int) -> Optional[np.ndarray]:
        """The mel window frame `frame` hears in IP_LAP: the one starting at frame - 2 (None outside the audio)."""
        start = mel_start(frame - MEL_LAG)
        if frame - MEL_LAG < 0 or start + MEL_WINDOW > self.mel.shape[1]:
            return None
        return self.mel[:, start:start + MEL_WINDOW]

    def face(self, frame: int) -> np.ndarray:
        image = cv2.imread(str(self.folder / EXPORT_CROPS / f"{frame:05d}.jpg"))
        if image is None:
            raise DataError(f"{self.folder / EXPORT_CROPS}: frame {frame} is missing or unreadable")
        return cv2.resize(image, (FACE, FACE)) if image.shape[:2] != (FACE, FACE) else image

    def sketch(self, frame: int, content: Optional[np.ndarray] = None) -> np.ndarray:
        return draw_sketch(self.pose[frame], self.content[frame] if content is None else content,
                           *self.crop_size[frame])


def read_iplap_split(data_root: Path, split: str) -> list[IplapClip]:
    """The clips of <data_root>/<split>.txt that have IP_LAP's crops and landmarks, audio and 25 frames or more."""
    listing, folders = split_folders(data_root, split)
    clips = []
    for folder in folders:
        if not (folder / EXPORT_LANDMARKS).is_file() or not (folder / "audio.wav").is_file():
            continue
        with np.load(folder / EXPORT_LANDMARKS) as arrays:
            pose, content, size = arrays["pose"], arrays["content"], arrays["crop_size"]
        if len(pose) >= MIN_FRAMES:
            clips.append(IplapClip(folder, pose, content, size, melspectrogram(load_audio(folder / "audio.wav"))))
    if not clips:
        raise DataError(f"{listing}: no clip with IP_LAP's crops and landmarks ({EXPORT_CROPS}/, "
                        f"{EXPORT_LANDMARKS}), audio.wav and {MIN_FRAMES} frames or more; export it again with this "
                        f"version's `preprocess --train_dir` (MediaPipe detector)")
    return clips


class IplapSampler:
    def __init__(self, clips: list[IplapClip], seed: Optional[int] = None):
        self.clips = clips
        self.random = random.Random(seed)

    def landmark(self) -> tuple[torch.Tensor, ...]:
        """(mels (T,1,80,16), pose (T,2,74), content (T,2,57), reference pose (15,2,74), reference content
        (15,2,57))."""
        for _ in range(1000):
            clip = self.random.choice(self.clips)
            start = self.random.randint(2, clip.frames - T_FRAMES - 2)
            window = list(range(start, start + T_FRAMES))
            others = [i for i in range(clip.frames) if i not in window and clip.has_face(i)]
            mels = [clip.mel_window(k) for k in window]
            if len(others) < REFERENCE_LANDMARKS or not all(map(clip.has_face, window)) or \
                    any(m is None for m in mels):
                continue
            references = self.random.sample(others, REFERENCE_LANDMARKS)
            return (torch.from_numpy(np.stack(mels)[:, None].astype(np.float32)),
                    torch.from_numpy(clip.pose[window]), torch.from_numpy(clip.content[window]),
                    torch.from_numpy(clip.pose[references]), torch.from_numpy(clip.content[references]))
        raise DataError("no 5-frame window with faces, 15 reference frames and audio in the training clips")

    def renderer(self, references: int = TRAINING_REFERENCES) -> tuple[torch.Tensor, ...]:
        """(face (1,3,128,128) the middle frame, sketches (T,3,128,128), reference faces and sketches
        (N,3,128,128), mel (1,1,80,16)); faces BGR in [0, 1]."""
        for _ in range(1000):
            clip = self.random.choice(self.clips)
            start = self.random.randint(0, clip.frames - T_FRAMES)
            window = list(range(start, start + T_FRAMES))
            middle = window[T_FRAMES // 2]
            faces = [i for i in range(clip.frames) if clip.has_face(i)]
            mel = clip.mel_window(middle)
            if mel is None or not all(map(clip.has_face, window)) or len(faces) < references:
                continue
            picks = self.random.sample(faces, references)
            return (images([clip.face(middle)]), sketches([clip.sketch(k) for k in window]),
                    images([clip.face(i) for i in picks]), sketches([clip.sketch(i) for i in picks]),
                    torch.from_numpy(mel[None, None].astype(np.float32)))
        raise DataError("no 5-frame window with faces and audio in the training clips")


def images(faces: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(faces).astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()


def sketches(drawn: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(drawn)).permute(0, 3, 1, 2).contiguous()
