"""A mouth animator that needs no learned weights: audio features -> a landmark-driven warp of lips and jaw.

Per frame, from the Wav2Lip mel window the engine already computes:
- opening: loudness of the mel frames around the frame's time (silence is the -4 floor) -> how far the jaw drops;
- rounding: spectral tilt (energy low in the spectrum, as in "o"/"u", rounds the lips; high, as in "i"/"s", spreads
  them).
Both go through an attack/release filter, so the mouth opens quickly, closes a little slower and does not flicker
like a level meter. The crop is then warped with smooth radial displacements (lower lip and jaw down, upper lip
up a little, corners in or out) split along the lip line, and the gap between the lips is painted as a dark mouth
cavity with a hint of upper teeth, anti-aliased.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from core.masks import smoothstep

# calibrated on espeak-ng speech: mel loudness near a frame is -4 in silence, about -2.9 .. -0.6 in speech
LOUDNESS_CLOSED, LOUDNESS_OPEN = -3.2, -0.8
TILT_SCALE = 1.3
MAX_OPEN = 0.27      # jaw drop at full opening, as a fraction of the mouth width
CAVITY_BGR = (30, 22, 48)
TEETH_BGR = (196, 202, 212)


@dataclass(frozen=True)
class MouthLayout:
    """Landmark indices of one detector's scheme (image-left first)."""
    upper_inner: tuple[int, ...]
    lower_inner: tuple[int, ...]
    upper_outer_mid: int
    lower_outer_mid: int
    corners: tuple[int, int]
    chin: int


MEDIAPIPE_478 = MouthLayout(upper_inner=(78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308),
                            lower_inner=(78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308),
                            upper_outer_mid=0, lower_outer_mid=17, corners=(61, 291), chin=152)
DLIB_68 = MouthLayout(upper_inner=(60, 61, 62, 63, 64), lower_inner=(60, 67, 66, 65, 64),
                      upper_outer_mid=51, lower_outer_mid=57, corners=(48, 54), chin=8)
LAYOUTS = {478: MEDIAPIPE_478, 68: DLIB_68}


def audio_features(window: np.ndarray) -> tuple[float, float]:
    """(opening 0..1, rounding -1 spread .. +1 rounded) from one (80, 16) mel window."""
    near = window[:, 1:5].mean(axis=1)  # about 12 ms before to 62 ms after the frame's time
    opening = float(np.clip((near.mean() - LOUDNESS_CLOSED) / (LOUDNESS_OPEN - LOUDNESS_CLOSED), 0, 1))
    tilt = near[40:].mean() - near[5:30].mean()
    rounding = float(np.clip(-tilt / TILT_SCALE, -1, 1)) * opening
    return opening, rounding


class MouthAnimator:
    """Drop-in for the Wav2Lip predictor: predict(mel_windows, faces, landmarks) -> faces (BGR uint8)."""
    name = "mouthwarp"

    def __init__(self, face_size: int, attack: float = 0.7, release: float = 0.45):
        self.size = face_size
        self.attack, self.release = attack, release
        self._opening = 0.0
        self._rounding = 0.0
        self.last_openings: list[float] = []

    def warm_up(self, batch: int = 1) -> None:
        """Nothing to warm: kept for the engine's predictor interface."""

    def _smooth(self, opening: float, rounding: float) -> tuple[float, float]:
        rate = self.attack if opening > self._opening else self.release
        self._opening += rate * (opening - self._opening)
        self._rounding += 0.5 * (rounding - self._rounding)
        return self._opening, self._rounding

    def predict(self, mel_windows: np.ndarray, faces_bgr: np.ndarray,
                landmarks: Optional[np.ndarray] = None) -> np.ndarray:
        if landmarks is None:
            raise ValueError("the mouth animator needs each crop's landmarks (from the preprocess cache)")
        out = np.empty_like(faces_bgr)
        self.last_openings = []
        for i, (window, face, points) in enumerate(zip(mel_windows, faces_bgr, landmarks)):
            opening, rounding = self._smooth(*audio_features(window))
            self.last_openings.append(opening)
            out[i] = self.animate(face, points, opening, rounding)
        return out

    def animate(self, face: np.ndarray, points: np.ndarray, opening: float, rounding: float) -> np.ndarray:
        """Warp one crop to the given mouth shape. `points` are the detector's landmarks in crop pixels."""
        layout = LAYOUTS.get(len(points))
        if layout is None or opening < 1e-3 or not np.isfinite(points).all():
            return face.copy()
        left, right = points[layout.corners[0]], points[layout.corners[1]]
        width = float(np.linalg.norm(right - left))
        drop = MAX_OPEN * width * opening
        centre = (left + right) / 2
        h, w = face.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)

        def bump(point, radius):
            return np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * radius ** 2))

        # below the lip line: lower lip and jaw drop; above it: the upper lip lifts a little
        lower_weight = np.maximum(bump(points[layout.lower_outer_mid], 0.55 * width),
                                  0.8 * bump(points[layout.chin], 0.75 * width))
        upper_weight = bump(points[layout.upper_outer_mid], 0.35 * width)
        # lip line through the corners: between the corners the lips part along it (a 1.5 px split, the cavity
        # fills the gap); beyond the corners the split widens so the cheeks stretch instead of creasing
        direction = (right - left) / max(width, 1e-6)
        normal = np.array([-direction[1], direction[0]], np.float32)
        lip_y = (points[list(layout.upper_inner)] + points[list(layout.lower_inner)]).mean(axis=0) / 2
        along = (xs - centre[0]) * direction[0] + (ys - centre[1]) * direction[1]
        softness = 1.5 + 2.0 * np.maximum(np.abs(along) - width / 2, 0)
        below = smoothstep(((xs - lip_y[0]) * normal[0] + (ys - lip_y[1]) * normal[1]) / softness + 0.5)
        dy = below * lower_weight * drop - (1 - below) * upper_weight * 0.15 * drop
        # corners: rounded lips pull in, spread lips pull out (weights fall off with distance from each corner)
        pull = 0.12 * width * rounding
        dx = pull * (bump(left, 0.3 * width) - bump(right, 0.3 * width))
        dx = dx.astype(np.float32)
        dy = dy.astype(np.float32)
        warped = cv2.remap(face, xs - dx, ys - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return self._paint_interior(warped, points, layout, drop, width, rounding)

    def _paint_interior(self, face: np.ndarray, points: np.ndarray, layout: MouthLayout, drop: float, width: float,
                        rounding: float) -> np.ndarray:
        """Dark cavity between the moved inner lips, a band of upper teeth under the upper lip (4x supersampled)."""
        upper = points[list(layout.upper_inner)].astype(np.float32).copy()
        lower = points[list(layout.lower_inner)].astype(np.float32).copy()
        left, right = points[layout.corners[0]], points[layout.corners[1]]
        t = np.linspace(0, 1, len(upper))[:, None]
        arch = np.sin(np.pi * t)  # the lips part most in the middle, not at the corners
        upper[:, 1] -= 0.15 * drop * arch[:, 0]
        lower[:, 1] += drop * arch[:, 0]
        squeeze = 0.12 * width * rounding * (1 - arch)  # rounded lips narrow the opening
        upper[:, 0] += np.where(upper[:, 0] < (left[0] + right[0]) / 2, squeeze[:, 0], -squeeze[:, 0])
        lower[:, 0] += np.where(lower[:, 0] < (left[0] + right[0]) / 2, squeeze[:, 0], -squeeze[:, 0])
        if float((lower[:, 1] - upper[:, 1]).max()) < 0.6:
            return face
        scale = 4
        h, w = face.shape[:2]
        cavity = np.zeros((h * scale, w * scale), np.uint8)
        polygon = np.concatenate([upper, lower[::-1]]) * scale
        cv2.fillPoly(cavity, [np.round(polygon).astype(np.int32)], 255, cv2.LINE_AA)
        teeth = np.zeros_like(cavity)
        teeth_depth = np.minimum(0.28 * (lower[:, 1] - upper[:, 1]), 0.07 * width)
        band = np.concatenate([upper, (upper + np.stack([np.zeros_like(teeth_depth), teeth_depth], 1))[::-1]])
        cv2.fillPoly(teeth, [np.round(band * scale).astype(np.int32)], 255, cv2.LINE_AA)
        teeth = np.minimum(teeth, cavity)
        cavity_mask = cv2.resize(cavity, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
        teeth_mask = cv2.resize(teeth, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
        out = face.astype(np.float32)
        out = out * (1 - cavity_mask) + np.array(CAVITY_BGR, np.float32) * cavity_mask
        out = out * (1 - 0.75 * teeth_mask) + np.array(TEETH_BGR, np.float32) * 0.75 * teeth_mask
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
