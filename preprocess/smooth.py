"""Temporal smoothing of detections, streamed with a small lookahead so frames never need to be held in bulk."""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, Optional, TypeVar

import numpy as np

from .detect import Face

T = TypeVar("T")


def smooth_stream(items: Iterable[tuple[T, Optional[Face]]], radius: int) -> Iterator[tuple[T, Optional[Face]]]:
    """Replace each face by the mean of the faces within `radius` frames of it, never across a frame without a face.

    A centred window (unlike the reference's forward-looking one) adds no lag; stopping at gaps keeps a face that
    reappears from being dragged towards where it was before it was covered. Output is delayed by `radius` items.
    """
    if radius <= 0:
        yield from items
        return
    window: deque[tuple[T, Optional[Face]]] = deque()
    centre = 0  # index in `window` of the next item to emit
    for item in items:
        window.append(item)
        if len(window) > 2 * radius + 1:
            window.popleft()
            centre -= 1
        if len(window) - 1 - centre >= radius:
            yield _smoothed_at(window, centre)
            centre += 1
    while centre < len(window):
        yield _smoothed_at(window, centre)
        centre += 1


def _smoothed_at(window: deque, centre: int):
    payload, face = window[centre]
    if face is None:
        return payload, None
    run = [face]
    for step in (-1, 1):
        i = centre + step
        while 0 <= i < len(window) and window[i][1] is not None:
            run.append(window[i][1])
            i += step
    return payload, Face(np.mean([f.box for f in run], 0), np.mean([f.points5 for f in run], 0),
                         np.mean([f.landmarks for f in run], 0))
