"""A mouth animator that needs no learned weights: audio features -> the presenter's own mouths, or a drawn one.

Per frame, from the Wav2Lip mel window the engine already computes:
- opening: loudness of the mel frames around the frame's time (silence is the -4 floor) -> how far the mouth opens;
- rounding: spectral tilt (energy low in the spectrum, as in "o"/"u", rounds the lips; high, as in "i"/"s", spreads
  them).
Both go through an attack/release filter, so the mouth opens quickly, closes a little slower and does not flicker
like a level meter.

When the presenter's footage has open mouths (models/mouthwarp/library.py), the frame takes the recorded mouth
that best fits that shape. Otherwise it draws one (`draw_open_mouth`): the lips move whole, never painted over
(the lower lip and jaw drop, the upper lip lifts a little), the opening closes toward the corners and is at most
45% of the mouth width, and the inside is shaded from the lip colour with soft, curved teeth.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from ..contract import HostDevice
from .geometry import (LAYOUTS, MouthLayout, along_lip, jaw_reach, lip_polygons, mouth_opening,
                       mouth_width, polygon_mask, warp_mouth)

# calibrated on espeak-ng speech: mel loudness near a frame is -4 in silence, about -2.9 .. -0.6 in speech
LOUDNESS_CLOSED, LOUDNESS_OPEN = -3.2, -0.8
TILT_SCALE = 1.3
MAX_GAP = 0.45        # the lips' gap at full opening, as a fraction of the mouth width
UPPER_SHARE = 0.15    # of the gap, the upper lip's lift (the rest is the lower lip and jaw dropping)
TEETH_BGR = np.array([200, 212, 224], np.float32)


def audio_features(window: np.ndarray) -> tuple[float, float]:
    """(opening 0..1, rounding -1 spread .. +1 rounded) from one (80, 16) mel window."""
    near = window[:, 1:5].mean(axis=1)  # about 12 ms before to 62 ms after the frame's time
    opening = float(np.clip((near.mean() - LOUDNESS_CLOSED) / (LOUDNESS_OPEN - LOUDNESS_CLOSED), 0, 1))
    tilt = near[40:].mean() - near[5:30].mean()
    rounding = float(np.clip(-tilt / TILT_SCALE, -1, 1)) * opening
    return opening, rounding


class MouthSmoother:
    """The attack/release filter on (opening, rounding), frame after frame: the mouth opens quickly, closes a little
    slower. The animator and the blendshape meter each own one, fed the same frames."""

    def __init__(self, attack: float = 0.7, release: float = 0.45):
        self.attack, self.release = attack, release
        self._opening = 0.0
        self._rounding = 0.0

    def __call__(self, opening: float, rounding: float) -> tuple[float, float]:
        rate = self.attack if opening > self._opening else self.release
        self._opening += rate * (opening - self._opening)
        self._rounding += 0.5 * (rounding - self._rounding)
        return self._opening, self._rounding


class MouthAnimator:
    """A LipModel (models/contract.py) like the Wav2Lip predictor: predict(mel_windows, faces, landmarks) -> faces
    (BGR uint8), on the host, frame after frame (its smoothing runs in frame order), so any batch is one call.

    `library` (models/mouthwarp/library.py) gives the presenter's own recorded mouths; without one, or when it has
    no open mouths, each frame's mouth is drawn."""
    name = "mouthwarp"
    window_frames = 1
    batch_size = None
    device = HostDevice()
    runtime = "numpy"
    device_tensors = False
    scheduled = False

    def __init__(self, face_size: int, attack: float = 0.7, release: float = 0.45, library=None):
        self.size = face_size
        self.attack, self.release = attack, release
        self.library = library if library is not None and library.usable else None
        self._smooth = MouthSmoother(attack, release)

    def warm_up(self, batch: int = 1) -> None:
        """Import the warp's interpolator now (about 0.6 s), not on the first spoken frame of a live stream."""
        import scipy.interpolate  # noqa: F401

    def predict(self, mel_windows: np.ndarray, faces_bgr: np.ndarray, landmarks: Optional[np.ndarray] = None,
                frames: Optional[np.ndarray] = None, due: float = float("inf")) -> np.ndarray:
        """`frames` and `due` are the contract's, not needed: one window per frame, drawn when called."""
        if landmarks is None:
            raise ValueError("the mouth animator needs each crop's landmarks (from the preprocess cache)")
        if not len(mel_windows) == len(faces_bgr) == len(landmarks):
            raise ValueError(f"{len(mel_windows)} mel windows, {len(faces_bgr)} faces and {len(landmarks)} landmark "
                             f"sets: one of each per frame")
        out = np.empty_like(faces_bgr)
        for i, (window, face, points) in enumerate(zip(mel_windows, faces_bgr, landmarks)):
            out[i] = self.animate(face, points, *self._smooth(*audio_features(window)))
        return out

    def animate(self, face: np.ndarray, points: np.ndarray, opening: float, rounding: float) -> np.ndarray:
        """One crop with the mouth at this shape. `points` are the detector's landmarks in crop pixels."""
        layout = LAYOUTS.get(len(points))
        if layout is None or opening < 1e-3 or not np.isfinite(points).all():
            return face.copy()
        if self._recorded(points):
            return self.library.render(face, points, layout, opening, rounding)
        return draw_open_mouth(face, points, layout, opening, rounding)

    def shape(self, points: np.ndarray, opening: float, rounding: float) -> np.ndarray:
        """The landmarks of the mouth `animate` shows at this shape, without drawing it (blendshapes). The library's
        choice is made as `animate` makes it, so call one or the other per frame, not both."""
        layout = LAYOUTS.get(len(points))
        if layout is None or opening < 1e-3 or not np.isfinite(points).all():
            return points
        if self._recorded(points):
            return self.library.shape(points, layout, opening, rounding)[0]
        return opened_lips(points, layout, *drawn_gap(self.size, points, layout, opening, rounding))[0]

    def _recorded(self, points: np.ndarray) -> bool:
        return self.library is not None and self.library.points.shape[1] == len(points)


def gap_profile(count: int) -> np.ndarray:
    """How far the lips part along a contour of `count` points, 1 in the middle: 0 at the corners, which stay
    closed."""
    return np.sin(np.pi * along_lip(count)) ** 1.2


def drawn_gap(crop_size: int, points: np.ndarray, layout: MouthLayout, opening: float,
              rounding: float) -> tuple[float, float]:
    """(peak gap px, rounding) of the drawn mouth at this shape: at most MAX_GAP of the mouth width, the lower lip's
    edge kept inside the crop, rounded lips opening less."""
    room = crop_size - 3 - float(points[list(layout.lower_inner)][:, 1].max())
    widest = max(0.0, min(MAX_GAP * mouth_width(points, layout), room / (1 - UPPER_SHARE)))
    return widest * opening * (1 - 0.3 * max(rounding, 0.0)), rounding


def opened_lips(points: np.ndarray, layout: MouthLayout, peak_gap: float, rounding: float,
                jaw_drop: Optional[float] = None) -> tuple[np.ndarray, float]:
    """The landmarks with the lips and jaw moved (the others as they were): the lower lip (inner and outer edge together, so it keeps its
    thickness) down by (1 - UPPER_SHARE) of the gap, the upper lip up by UPPER_SHARE, the gap being `peak_gap` in
    the middle (gap_profile); rounded lips narrow, spread ones widen; the jaw follows by `jaw_drop` at the chin
    (default: 0.8 of the lower lip's share of the gap). Returns (moved landmarks, jaw_drop)."""
    if jaw_drop is None:
        jaw_drop = 0.8 * (1 - UPPER_SHARE) * peak_gap
    left, right = points[list(layout.corners)]
    centre = (left + right) / 2
    across = (right - left) / max(float(np.linalg.norm(right - left)), 1e-6)
    down = np.array([-across[1], across[0]], np.float32)
    if down[1] < 0:
        down = -down
    narrow = 1 - 0.15 * rounding
    moved = points.astype(np.float32).copy()
    for contour, share in ((layout.upper_inner, -UPPER_SHARE), (layout.upper_outer, -UPPER_SHARE),
                           (layout.lower_inner, 1 - UPPER_SHARE), (layout.lower_outer, 1 - UPPER_SHARE)):
        for index, amount in zip(contour, peak_gap * gap_profile(len(contour))):
            p = points[index]
            offset = p - centre
            along = float(offset @ across)
            moved[index] = centre + across * along * narrow + down * float(offset @ down) + down * share * amount
    moved[list(layout.jaw)] += np.outer(jaw_reach(layout), down * jaw_drop).astype(np.float32)
    return moved, jaw_drop


def lip_colour(face: np.ndarray, contours: list[np.ndarray]) -> np.ndarray:
    """Mean BGR of the lips (between the outer and inner contours of lip_contours) of a crop."""
    outer, inner = lip_polygons(contours)
    mask = polygon_mask(face.shape[:2], outer) * (1 - polygon_mask(face.shape[:2], inner))
    if mask.sum() < 1:
        return np.array([90, 90, 150], np.float32)
    return (face.reshape(-1, 3).astype(np.float32) * mask.reshape(-1, 1)).sum(0) / mask.sum()


def draw_open_mouth(face: np.ndarray, points: np.ndarray, layout: MouthLayout, opening: float,
                    rounding: float, fill=None) -> np.ndarray:
    """The fallback mouth: whole lips moved apart by a warp, the gap shaded from the lip colour, with teeth.

    `fill(face, upper, lower, lips_bgr, width, opening, drawn_teeth)` paints the gap between the moved inner lips
    (default: paint_interior)."""
    width = mouth_width(points, layout)
    moved, jaw_drop = opened_lips(points, layout, *drawn_gap(face.shape[0], points, layout, opening, rounding))
    warped, before, after = warp_mouth(face, points, moved, layout, jaw_drop)
    upper, lower = after[0], after[1]
    own_teeth = mouth_opening(points, layout) >= 0.04  # the presenter shows teeth at rest: use them, not drawn ones
    out = (fill or paint_interior)(warped, upper, lower, lip_colour(face, before), width, opening,
                                   drawn_teeth=not own_teeth)
    if own_teeth:  # what shows between the lips at rest belongs to the upper jaw: it moves with the upper lip
        shift = upper[len(upper) // 2] - before[0][len(upper) // 2]
        shifted = cv2.warpAffine(face, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), face.shape[1::-1],
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        shape = face.shape[:2]
        keep = (polygon_mask(shape, lip_polygons(before)[1] + shift, feather=0.5)
                * polygon_mask(shape, lip_polygons(after)[1]))[..., None]
        out = np.clip(out * (1 - keep) + shifted * keep + 0.5, 0, 255).astype(np.uint8)
    return out


def paint_interior(face: np.ndarray, upper: np.ndarray, lower: np.ndarray, lips_bgr: np.ndarray, width: float,
                   opening: float, drawn_teeth: bool = True) -> np.ndarray:
    """Fill the gap between the inner lip contours: the lip colour darkened toward the back, a tongue low in wide
    openings and, when `drawn_teeth`, a soft curved upper row of teeth under the upper lip and a lower row at wide
    openings."""
    h, w = face.shape[:2]
    gap = lower[:, 1] - upper[:, 1]
    if float(gap.max()) < 0.6:
        return face
    cavity = polygon_mask((h, w), np.concatenate([upper, lower[::-1]]))  # upper/lower: any two inner contours
    depth = cv2.distanceTransform((cavity > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    depth = np.clip(depth / max(0.35 * float(gap.max()), 1.0), 0, 1)[..., None]
    tint = lips_bgr * np.array([0.8, 0.8, 1.2], np.float32)  # the inside of a mouth is redder than its lips
    inside = tint * (0.5 - 0.38 * depth)  # dark at the back, lip-tinted at the edges
    middle = len(upper) // 2
    tongue_centre = (lower[middle, 0], lower[middle, 1] - 0.25 * gap[middle])
    tongue = np.zeros((h, w), np.float32)
    cv2.ellipse(tongue, (int(round(tongue_centre[0])), int(round(tongue_centre[1]))),
                (max(1, int(0.28 * width)), max(1, int(0.22 * gap[middle]))), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    tongue = cv2.GaussianBlur(tongue, (0, 0), max(0.6, 0.06 * width))[..., None] * min(1.0, opening * 1.4)
    inside = inside * (1 - 0.6 * tongue) + tint * 0.6 * 0.6 * tongue
    if drawn_teeth:
        inside = with_teeth(inside, upper, lower, gap, lips_bgr, width, opening)
    out = face.astype(np.float32) * (1 - cavity[..., None]) + inside * cavity[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def with_teeth(inside: np.ndarray, upper: np.ndarray, lower: np.ndarray, gap: np.ndarray, lips_bgr: np.ndarray,
               width: float, opening: float) -> np.ndarray:
    """The shaded inside with drawn teeth: a soft, curved upper row under the upper lip, shaded toward the
    corners, and a lower row at wide openings."""
    h, w = inside.shape[:2]
    middle = len(upper) // 2
    shade = np.clip(float(lips_bgr.mean()) / 120.0, 0.6, 1.1)  # teeth as lit as the face
    along = np.sin(np.pi * along_lip(len(upper))) ** 0.5
    teeth_depth = np.minimum(0.08 * width, 0.45 * gap) * along
    top_row = np.concatenate([upper, (upper + np.stack([np.zeros_like(teeth_depth), teeth_depth], 1))[::-1]])
    teeth = polygon_mask((h, w), top_row, feather=max(0.4, 0.01 * width)) * 0.95
    if opening > 0.6:
        low_depth = 0.06 * width * (opening - 0.6) / 0.4 * along
        bottom_row = np.concatenate([lower, (lower - np.stack([np.zeros_like(low_depth), low_depth], 1))[::-1]])
        teeth = np.maximum(teeth, polygon_mask((h, w), bottom_row, feather=max(0.4, 0.015 * width)) * 0.7)
    side_shade = np.clip(1 - np.abs(np.arange(w, dtype=np.float32) - upper[middle, 0]) / max(width, 1), 0.7, 1)
    under_lip = np.clip((np.arange(h, dtype=np.float32) - upper[middle, 1]) / max(0.08 * width, 1), 0, 1)
    teeth_bgr = TEETH_BGR * shade * side_shade[None, :, None] * (0.82 + 0.18 * under_lip)[:, None, None]
    return inside * (1 - teeth[..., None]) + teeth_bgr * teeth[..., None]
