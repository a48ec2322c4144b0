"""What the loop writes frames to: every output (engine/outputs/) and the server's WebRTC peers have this shape."""
from __future__ import annotations

from typing import Optional, Protocol

import numpy as np


class Sink(Protocol):
    """A sink may also have `wants_frames` (default True): while it is False, the live engine may hand it None
    instead of a frame (nothing is decoded for it), with the frame's audio as usual."""
    live: bool

    def open(self, width: int, height: int) -> None: ...

    def write(self, frame: Optional[np.ndarray], audio: np.ndarray, pts: int) -> None: ...

    def close(self) -> None: ...
