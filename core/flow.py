"""The frame halfway between two frames, by optical flow: OpenCV's DIS, which needs no weights.

Both directions are computed; each side is warped halfway with the flow from the midpoint (the quadratic
approximation of Super SloMo at t = 1/2) and the two are blended, each pixel weighted by how well its side's
forward and backward flows agree there, so a region one frame hides (an occlusion) comes from the frame that shows
it. Used for 50 fps output (engine/render/interpolate.py) and the in-between backgrounds a cache can store
(preprocess --fps 50).
"""
from __future__ import annotations

import cv2
import numpy as np

AGREEMENT_PX = 1.0  # forward-backward flow disagreement (px) at which a side's weight falls to 1/e


class FlowInterpolator:
    """midpoint(a, b): the frame halfway between two BGR frames. One per stream (it keeps the DIS instance)."""

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST):
        self._dis = cv2.DISOpticalFlow_create(preset)

    def midpoint(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        gray_a, gray_b = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY), cv2.cvtColor(b, cv2.COLOR_BGR2GRAY)
        forward = self._dis.calc(gray_a, gray_b, None)   # a(x) ~ b(x + forward(x))
        backward = self._dis.calc(gray_b, gray_a, None)  # b(x) ~ a(x + backward(x))
        grid = np.dstack(np.meshgrid(np.arange(a.shape[1], dtype=np.float32),
                                     np.arange(a.shape[0], dtype=np.float32)))
        to_a = 0.25 * (backward - forward)               # from the midpoint to a (and -to_a to b), at t = 1/2
        at_a, at_b = grid + to_a, grid - to_a
        # how well each side's flows agree where the midpoint samples it: disagreement marks occlusion
        trust_a = warp(np.exp(-disagreement(forward, backward, grid) / AGREEMENT_PX), at_a)
        trust_b = warp(np.exp(-disagreement(backward, forward, grid) / AGREEMENT_PX), at_b)
        weight_a = ((trust_a + 1e-3) / (trust_a + trust_b + 2e-3))[..., None]
        from_a, from_b = warp(a, at_a), warp(b, at_b)
        return np.clip(from_b + weight_a * (from_a.astype(np.float32) - from_b) + 0.5, 0, 255).astype(np.uint8)


def warp(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """image sampled at `where` (H, W, 2 pixel coordinates), edges repeated, in the image's own type."""
    return cv2.remap(image, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def disagreement(there: np.ndarray, back: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """|there(x) + back(x + there(x))| in pixels: 0 where going and coming back meet."""
    gap = there + warp(back, grid + there)
    return cv2.magnitude(gap[..., 0], gap[..., 1])
