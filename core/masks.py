"""Soft edges for masks: the compositor's feathered regions and the mouth animator's lip falloff share one curve."""
from __future__ import annotations

import numpy as np


def smoothstep(t: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, and 3t^2 - 2t^3 between: a ramp with flat ends, so a mask built from it has no seam."""
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)
