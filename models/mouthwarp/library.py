"""The presenter's own mouths: a small library of recorded mouth shapes, chosen per frame to fit the audio.

At preprocess time every frame's mouth is measured from its landmarks (opening, width against the resting width,
how bright the inside is: teeth). A compact set of frames spanning the openings and roundings is kept: each
mouth region aligned to a canonical frame (corners on fixed points), with its landmarks. At run time the animator
asks for (opening, rounding); the library picks the entry that fits best, with a cost for switching so a steady
target keeps its entry, warps the current frame's lips and jaw to that entry's shape, and pastes the entry's lips
and inside over them under a feathered mask, colour-matched to the current frame.

A presenter recorded talking for a few seconds gets their own teeth, tongue and lips this way; a silent loop has
no open mouths, so the library says it is not usable and the drawn mouth is used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from core.scratch import written

from .geometry import (LAYOUTS, MouthLayout, jaw_reach, lip_contours, lip_polygons, mouth_opening, mouth_width,
                       polygon_mask, warp_mouth)

log = logging.getLogger("mouthwarp")
LIBRARY_FILE = "mouths.npz"
CANVAS = (96, 80)  # canonical frame (w, h): the corners at CORNERS, room for the chin below
CORNERS = np.array([[24.0, 28.0], [72.0, 28.0]], np.float32)
MIN_RANGE = 0.08  # a library whose widest mouth opens less than this (of the width) beyond its most closed: no use
OPENING_BINS = 12
SWITCH_COST = 0.08  # in units of the library's opening range: what a change of entry must gain


def to_canonical(points: np.ndarray, layout: MouthLayout) -> np.ndarray:
    """2x3 similarity that puts the mouth corners on CORNERS."""
    left, right = points[list(layout.corners)].astype(np.float64)
    (a, b), (c, d) = CORNERS.astype(np.float64)
    src = right - left
    dst = np.array([c - a, d - b])
    scale = np.linalg.norm(dst) / max(np.linalg.norm(src), 1e-6)
    angle = np.arctan2(dst[1], dst[0]) - np.arctan2(src[1], src[0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, (np.array([a, b]) - rotation @ left)[:, None]]).astype(np.float32)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def teeth_brightness(face: np.ndarray, points: np.ndarray, layout: MouthLayout) -> float:
    """Mean grey level between the inner lips (0 when closed): teeth make it bright, a dark mouth low."""
    inner = lip_polygons(lip_contours(points, layout))[1]
    mask = polygon_mask(face.shape[:2], inner)
    if mask.sum() < 1:
        return 0.0
    grey = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float((grey * mask).sum() / mask.sum())


@dataclass
class MouthLibrary:
    crops: np.ndarray      # (E, h, w, 3) uint8 BGR, canonical frame
    points: np.ndarray     # (E, K, 2) landmarks in the canonical frame
    openings: np.ndarray   # (E,) inner-lip gap / mouth width
    roundings: np.ndarray  # (E,) -1 spread .. +1 rounded (narrower than at rest)
    teeth: np.ndarray      # (E,) grey level between the inner lips

    def __post_init__(self):
        self._current: Optional[int] = None

    @property
    def usable(self) -> bool:
        return len(self.openings) > 1 and float(self.openings.max() - self.openings.min()) >= MIN_RANGE

    @classmethod
    def build(cls, landmarks: np.ndarray, face_at: Callable[[int], np.ndarray]) -> "MouthLibrary":
        """From every frame's landmarks (N,K,2) in crop pixels (NaN where there is no face); `face_at(i)` gives
        frame i's crop, read only for the frames kept."""
        valid = [i for i in range(len(landmarks)) if np.isfinite(landmarks[i]).all()]
        if not valid or landmarks.shape[1] not in LAYOUTS:
            return cls.empty()
        layout = LAYOUTS[landmarks.shape[1]]
        openings = np.array([mouth_opening(landmarks[i], layout) for i in valid])
        widths = np.array([mouth_width(landmarks[i], layout) for i in valid])
        resting = widths[openings <= np.percentile(openings, 30)]
        rest_width = float(np.median(resting)) if len(resting) else float(np.median(widths))
        roundings = np.clip((rest_width - widths) / (0.12 * rest_width), -1, 1)
        chosen = select_frames(openings, roundings)
        crops, points, teeth = [], [], []
        for k in chosen:
            face, marks = face_at(valid[k]), landmarks[valid[k]].astype(np.float32)
            matrix = to_canonical(marks, layout)
            crops.append(cv2.warpAffine(face, matrix, CANVAS, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
            points.append(apply(matrix, marks))
            teeth.append(teeth_brightness(face, marks, layout))
        return cls(np.stack(crops), np.stack(points), openings[chosen], roundings[chosen], np.array(teeth))

    @classmethod
    def empty(cls) -> "MouthLibrary":
        return cls(np.zeros((0, CANVAS[1], CANVAS[0], 3), np.uint8), np.zeros((0, 478, 2), np.float32),
                   np.zeros(0), np.zeros(0), np.zeros(0))

    def save(self, path: Path) -> None:
        """Written to a scratch file and published (core/scratch.py): never half-written, nothing left behind."""
        with written(path) as scratch, open(scratch, "wb") as file:
            np.savez_compressed(file, crops=self.crops, points=self.points, openings=self.openings,
                                roundings=self.roundings, teeth=self.teeth)

    @classmethod
    def load(cls, path: Path) -> "MouthLibrary":
        with np.load(path) as data:
            return cls(data["crops"], data["points"], data["openings"], data["roundings"], data["teeth"])

    def reset(self) -> None:
        """Forget the current entry: the next choice is made afresh."""
        self._current = None

    def choose(self, opening: float, rounding: float) -> int:
        """The entry for an audio-driven (opening 0..1, rounding -1..1): the library's own range of openings (its
        most closed to its widest) is mapped onto 0..1, and staying on the current entry is favoured by
        SWITCH_COST."""
        if not len(self.openings):
            raise ValueError("an empty mouth library has nothing to choose from")
        low = float(self.openings.min())
        span = max(float(self.openings.max()) - low, 1e-6)
        cost = np.abs((self.openings - low) / span - opening) + 0.3 * np.abs(self.roundings - rounding)
        if self._current is not None:
            cost = cost + SWITCH_COST
            cost[self._current] -= SWITCH_COST
        self._current = int(np.argmin(cost))
        return self._current

    def shape(self, points: np.ndarray, layout: MouthLayout, opening: float,
              rounding: float) -> tuple[np.ndarray, int, np.ndarray, float]:
        """(this frame's landmarks with the chosen entry's lips and the jaw following, the entry, the affine from
        the canonical frame to this crop, the jaw's drop px)."""
        entry = self.choose(opening, rounding)
        back = cv2.invertAffineTransform(to_canonical(points, layout))
        shape = apply(back, self.points[entry])  # the entry's landmarks on this frame's mouth
        chin_side = layout.lower_outer[len(layout.lower_outer) // 2]
        down = shape[chin_side] - points[chin_side]  # how far the entry's lower lip sits below this one's
        moved = points.astype(np.float32).copy()
        lips = list(layout.lips)
        moved[lips] = shape[lips]
        moved[list(layout.jaw)] += 0.8 * np.outer(jaw_reach(layout), down).astype(np.float32)
        return moved, entry, back, 0.8 * float(down[1])

    def render(self, face: np.ndarray, points: np.ndarray, layout: MouthLayout, opening: float,
               rounding: float) -> np.ndarray:
        """`face` with the chosen recorded mouth: lips and jaw warped to its shape, its lips and inside pasted."""
        moved, entry, back, jaw_drop = self.shape(points, layout, opening, rounding)
        warped, _, after = warp_mouth(face, points, moved, layout, jaw_drop)
        warped = warped.astype(np.float32)
        recorded = cv2.warpAffine(self.crops[entry], back, face.shape[1::-1], flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        outer, inner = lip_polygons(after)
        width = mouth_width(points, layout)
        mask = polygon_mask(face.shape[:2], outer, feather=max(0.8, 0.06 * width))
        lips = (polygon_mask(face.shape[:2], outer) - polygon_mask(face.shape[:2], inner)) > 0.5
        offset = warped[lips].mean(0) - recorded[lips].mean(0) if lips.any() else 0.0  # lighting of this frame
        mask = mask[..., None]
        out = warped * (1 - mask) + (recorded + offset) * mask
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def select_frames(openings: np.ndarray, roundings: np.ndarray) -> list[int]:
    """Indices spanning the openings (OPENING_BINS bins up to the widest) with, per bin, the most rounded and the most
    spread frame: at most 2 * OPENING_BINS entries."""
    edges = np.linspace(0, float(openings.max()) + 1e-6, OPENING_BINS + 1)
    chosen: list[int] = []
    for low, high in zip(edges[:-1], edges[1:]):
        members = np.flatnonzero((openings >= low) & (openings < high))
        if len(members):
            chosen += list(dict.fromkeys([int(members[np.argmax(roundings[members])]),
                                          int(members[np.argmin(roundings[members])])]))
    return chosen


def every_frames_landmarks(presenter) -> np.ndarray:
    """(N, K, 2) crop landmarks of every cached frame, NaN where it has no face."""
    nowhere = np.full_like(presenter.crop_landmarks(0), np.nan)
    return np.stack([presenter.crop_landmarks(i) if presenter.has_face[i] else nowhere
                     for i in range(presenter.frames)])


def library_for(presenter) -> MouthLibrary:
    """The presenter cache's library (`mouths.npz`, written by preprocess); built from the cache when missing.
    `presenter` is an engine Presenter (dir, frames, has_face, face(i), crop_landmarks(i))."""
    path = Path(presenter.dir) / LIBRARY_FILE
    if path.is_file():
        return MouthLibrary.load(path)
    log.info("%s has no %s (made before the mouth library): building it from the cache", presenter.dir, LIBRARY_FILE)
    library = MouthLibrary.build(every_frames_landmarks(presenter), presenter.face)
    try:
        library.save(path)  # kept for the next start
    except OSError as exc:
        log.info("could not keep it in %s (%s): it is built again at the next start", presenter.dir, exc)
    return library
