"""Generic int8 calibration data: face crops and speech windows that ship with the packages we install.

A conversion is paid once per checkpoint, not per presenter, so it cannot calibrate on a presenter's own crops.
It calibrates on the face in scikit-image's astronaut photo, varied the way presenters vary (position, size, tilt,
light, colour cast, mirror), with speech windows from the bundled clip. The same kind of data, never seen in
calibration, checks the result.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

CALIBRATION_SPEECH = Path(__file__).parent / "data" / "calibration_speech.wav"
FACE_BOX = (60, 180, 165, 285)  # the astronaut's face with Wav2Lip's padding: top, bottom, left, right


def generic_faces(size: int, count: int = 40, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 BGR face crops, deterministic for a seed."""
    import cv2
    from skimage import data
    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    top, bottom, left, right = FACE_BOX
    centre, side = np.array([(left + right) / 2, (top + bottom) / 2]), bottom - top
    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(count):
        scale = size / (side * rng.uniform(0.85, 1.15))
        angle = rng.uniform(-8, 8)
        shift = rng.uniform(-0.08, 0.08, 2) * side
        matrix = cv2.getRotationMatrix2D(tuple(centre + shift), angle, scale)
        matrix[:, 2] += size / 2 - (centre + shift)  # the (shifted) face centre lands in the crop's centre
        face = cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        gain, offset, cast = rng.uniform(0.75, 1.25), rng.uniform(-20, 20), rng.uniform(0.9, 1.1, 3)
        face = np.clip(face.astype(np.float32) * gain * cast + offset, 0, 255).astype(np.uint8)
        faces.append(face[:, ::-1] if rng.random() < 0.5 else face)
    return np.ascontiguousarray(np.stack(faces))


@lru_cache(maxsize=1)
def speech_windows() -> np.ndarray:
    """(N, 80, 16) mel windows of the bundled calibration speech, one per video frame."""
    from audio.decode import load_audio
    from audio.mel import frame_windows, melspectrogram
    return frame_windows(melspectrogram(load_audio(CALIBRATION_SPEECH)))


def loudest_windows(count: int) -> np.ndarray:
    """`count` windows spread over the clip's speech (not its pauses): what makes a mouth move."""
    windows = speech_windows()
    energy = windows.mean(axis=(1, 2))
    spoken = np.flatnonzero(energy > np.percentile(energy, 40))
    return windows[spoken[np.linspace(0, len(spoken) - 1, count).round().astype(int)]]
