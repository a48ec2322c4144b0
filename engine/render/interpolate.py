"""50 frames/s from the 25 the lip model makes: one in-between frame for each pair.

OBS canvases run at 50 or 60 frames/s, where a 25 frames/s mouth looks steppy. The lip model stays at 25; this
stage (after the paste-back, before the sinks) outputs each frame, then the frame halfway to the next, with the
frame's 640 audio samples split 320 and 320, so the audio is unchanged and every presentation time is a multiple
of 20 ms. The in-between frame is core/flow.py's optical-flow midpoint, or RIFE's (models/rife, --interpolator rife).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Protocol, TypeVar

import numpy as np

from core.flow import FlowInterpolator
from core.timebase import IN_BETWEEN_OFFSET, interpolated

from .composite import blend, head_footprint

log = logging.getLogger("engine")
MARGIN = 0.25     # of the face boxes' size, added around their union: room for the motion between two frames
FEATHER_PX = 8    # the face region's edge blends into the stored background over this many pixels
Tag = TypeVar("Tag")  # what travels with each 25 fps frame: the live engine's FrameUnit, a file render's audio


class OutputFrame(NamedTuple):
    """A frame as the sinks get it. `tag` is its 25 fps frame's; `cache_from` and `cache_to` are the cache frames it
    shows (equal for a frame the model made, neighbours for an in-between frame, which comes second in its pair)."""
    tag: object
    frame: Optional[np.ndarray]
    cache_from: int
    cache_to: int
    in_between: bool


class Midpoint(Protocol):
    """What makes an in-between frame: core.flow.FlowInterpolator (DIS) or models.rife.RifeInterpolator."""

    def midpoint(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class InBetween:
    """between(a, b, i, j): the frame halfway between the engine's frames a and b (cache frames i and j).

    Only the face region changes from the cached video (the lip model's mouth is pasted there): there the flow runs
    on the frames themselves; the rest is the cache's own in-between background (preprocess --fps 50), the same
    on every loop. A cache without one gets the flow over the whole frame, which is several times slower."""

    def __init__(self, presenter, heads: bool = False, interpolator: Optional[Midpoint] = None):
        self.presenter = presenter
        self.heads = heads  # GFPGAN's head is pasted back too (--enhance lip|face): the region covers it
        self.flow = interpolator or FlowInterpolator()
        self._warned = False

    def changed(self, k: int) -> np.ndarray:
        """x1, y1, x2, y2 of what the engine may change on cache frame k: the face crop, or with it the upright
        head's footprint when the head is pasted back."""
        box = self.presenter.box[k].astype(np.float64)
        footprint = head_footprint(self.presenter, k, self.presenter.head_size) if self.heads else None
        if footprint is None:
            return box
        return np.concatenate([np.minimum(box[:2], footprint[:2]), np.maximum(box[2:], footprint[2:])])

    def __call__(self, a: np.ndarray, b: np.ndarray, i: int, j: int) -> np.ndarray:
        background = self.presenter.background_between(i, j)
        if background is None:
            if not self._warned:
                log.warning("the cache holds no in-between backgrounds, so every in-between frame runs the flow "
                            "over the whole frame; preprocess the video with --fps 50 for a faster render")
                self._warned = True
            return self.flow.midpoint(a, b)
        boxes = [self.changed(k) for k in (i, j) if self.presenter.has_face[k]]
        if not boxes:
            return background
        x1, y1 = np.min([box[:2] for box in boxes], axis=0)
        x2, y2 = np.max([box[2:] for box in boxes], axis=0)
        pad_x, pad_y = MARGIN * (x2 - x1), MARGIN * (y2 - y1)
        height, width = a.shape[:2]
        x1, y1 = int(max(0, x1 - pad_x)), int(max(0, y1 - pad_y))
        x2, y2 = int(min(width, x2 + pad_x)), int(min(height, y2 + pad_y))
        ramp_y = np.minimum(np.arange(y2 - y1) + 1, np.arange(y2 - y1)[::-1] + 1) / FEATHER_PX
        ramp_x = np.minimum(np.arange(x2 - x1) + 1, np.arange(x2 - x1)[::-1] + 1) / FEATHER_PX
        blend(background[y1:y2, x1:x2], self.flow.midpoint(a[y1:y2, x1:x2], b[y1:y2, x1:x2]),
              np.clip(np.minimum.outer(ramp_y, ramp_x), 0, 1))
        return background


def interleaved(frames: Iterable[tuple[Tag, Optional[np.ndarray], int]],
                between: Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]) -> Iterator[OutputFrame]:
    """(tag, frame, cache frame) at 25 frames/s -> OutputFrames at 50: each frame as soon as it comes, then, once
    the next has come, the frame `between` the two (its tag is the earlier frame's). The last frame is shown twice.
    A frame of None (nobody wants pixels) makes a None in-between."""
    previous: Optional[tuple[Tag, Optional[np.ndarray], int]] = None
    for tag, frame, index in frames:
        if previous is not None:
            middle = None if previous[1] is None or frame is None else between(previous[1], frame, previous[2], index)
            yield OutputFrame(previous[0], middle, previous[2], index, True)
        yield OutputFrame(tag, frame, index, index, False)
        previous = (tag, frame, index)
    if previous is not None:
        yield OutputFrame(previous[0], previous[1], previous[2], previous[2], True)


def audio_share(audio: np.ndarray, pts: int, output: OutputFrame, fps: int) -> tuple[np.ndarray, int]:
    """The audio and presentation time an output frame carries, from its 25 fps frame's: all of them at 25
    frames/s; at 50 the first half (the frame) or the second (the in-between frame), 20 ms later."""
    if not interpolated(fps):
        return audio, pts
    half = len(audio) // 2
    return (audio[half:], pts + IN_BETWEEN_OFFSET) if output.in_between else (audio[:half], pts)


def in_between_weights(rows: list[dict[str, float]]) -> Iterator[dict[str, float]]:
    """Blendshape rows at 25 frames/s -> 50: each row, then the mean of it and the next (the in-between image is
    their midpoint too); the last row twice, as its frame is."""
    for row, following in zip(rows, [*rows[1:], rows[-1]] if rows else []):
        yield row
        yield {name: (value + following.get(name, value)) / 2 for name, value in row.items()}
