"""Honest "recorded" mouth variety with known truth, for the mouth library's tests and its picture in the README.

The demo's presenter is a still photo: it never opens its mouth. This makes a clip of it that does, by a known
amount per frame: the photo's own lips and jaw are moved apart by the same warp as the drawn mouth
(models/mouthwarp/animator.py), and the gap is filled from another real photograph, the coffee in scikit-image's
`coffee` image (its red saucer), darkened, never with our drawn shading or teeth. The photo's own teeth, visible at rest, move
with its upper lip. So the library built from this clip holds real image texture whose openings are known.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from demo.presenter import FacePath, astronaut_bgr, make_presenter_clip
from models.mouthwarp.animator import draw_open_mouth
from models.mouthwarp.geometry import MEDIAPIPE_478, polygon_mask


@lru_cache(maxsize=1)
def photo_landmarks() -> np.ndarray:
    """The astronaut photo's 478 face-mesh landmarks, in photo pixels."""
    from preprocess.detect import make_detector
    detector = make_detector("mediapipe")
    try:
        face = detector.detect(astronaut_bgr())
    finally:
        detector.close()
    if face is None or face.landmarks is None:
        raise RuntimeError("the face mesh found no face in scikit-image's astronaut photo")
    return face.landmarks.astype(np.float32)


@lru_cache(maxsize=1)
def coffee_texture() -> np.ndarray:
    """A dark red, textured patch of a real photograph (the saucer in scikit-image's coffee), BGR."""
    from skimage import data
    coffee = cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)
    return (coffee[300:360, 140:300].astype(np.float32) * 0.5).astype(np.uint8)


def coffee_fill(face, upper, lower, lips_bgr, width, opening, drawn_teeth):
    """Fills the gap between the inner lips with the coffee texture, stretched over the gap's bounding box."""
    h, w = face.shape[:2]
    polygon = np.concatenate([upper, lower[::-1]])
    x1, y1 = np.floor(polygon.min(0)).astype(int)
    x2, y2 = np.ceil(polygon.max(0)).astype(int) + 1
    if x2 - x1 < 2 or y2 - y1 < 2:
        return face
    patch = np.zeros_like(face)
    patch[max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)] = cv2.resize(coffee_texture(), (x2 - x1, y2 - y1))[
        max(0, -y1):(y2 - y1) - max(0, y2 - h), max(0, -x1):(x2 - x1) - max(0, x2 - w)]
    mask = polygon_mask((h, w), polygon)[..., None]
    return np.clip(face * (1 - mask) + patch * mask + 0.5, 0, 255).astype(np.uint8)


def opened_photo(opening: float, rounding: float = 0.0) -> np.ndarray:
    """The astronaut photo with its mouth opened by `opening` (0..1 of the drawn mouth's range)."""
    photo = astronaut_bgr()
    if opening <= 0:
        return photo
    return draw_open_mouth(photo, photo_landmarks(), MEDIAPIPE_478, opening, rounding, fill=coffee_fill)


def known_openings(frames: int, seed: int = 0) -> np.ndarray:
    """A speech-like opening per frame: syllables of 4-8 frames rising and falling, with pauses."""
    rng = np.random.default_rng(seed)
    openings = np.zeros(frames)
    i = 0
    while i < frames:
        length = int(rng.integers(4, 9))
        peak = float(rng.uniform(0.15, 1.0)) if rng.random() > 0.15 else 0.0
        openings[i:i + length] = peak * np.sin(np.linspace(0, np.pi, length + 2)[1:-1])[:frames - i]
        i += length
    return openings


def make_talking_clip(out: Path, openings: np.ndarray, fps: int = 25, path: FacePath = FacePath()) -> Path:
    """An mp4 of the moving presenter whose mouth opens by `openings[i]` in frame i."""
    return make_presenter_clip(out, len(openings) / fps, fps, path, photo_at=lambda i: opened_photo(float(openings[i])))
