"""Mouth geometry shared by the fallback mouth and the presenter's mouth library: landmark layouts, the measures
of a mouth (opening, width), a warp that moves chosen landmarks to new places and keeps everything else still, and
anti-aliased polygon masks."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np


@dataclass(frozen=True)
class MouthLayout:
    """Landmark indices of one detector's scheme. Every lip contour runs from the image-left corner to the right."""
    upper_inner: tuple[int, ...]
    lower_inner: tuple[int, ...]
    upper_outer: tuple[int, ...]
    lower_outer: tuple[int, ...]
    jaw: tuple[int, ...]  # the lower jaw line, ear side to ear side through the chin
    still: tuple[int, ...]  # points that never move: nose and cheekbones

    @property
    def corners(self) -> tuple[int, int]:
        return self.upper_outer[0], self.upper_outer[-1]

    @property
    def lips(self) -> tuple[int, ...]:
        return self.upper_inner + self.lower_inner + self.upper_outer + self.lower_outer


MEDIAPIPE_478 = MouthLayout(
    upper_inner=(78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308),
    lower_inner=(78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308),
    upper_outer=(61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291),
    lower_outer=(61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291),
    jaw=(172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397),
    still=(1, 2, 98, 327, 205, 425, 50, 280))
DLIB_68 = MouthLayout(upper_inner=(60, 61, 62, 63, 64), lower_inner=(60, 67, 66, 65, 64),
                      upper_outer=(48, 49, 50, 51, 52, 53, 54), lower_outer=(48, 59, 58, 57, 56, 55, 54),
                      jaw=(4, 5, 6, 7, 8, 9, 10, 11, 12), still=(30, 31, 33, 35))
LAYOUTS = {478: MEDIAPIPE_478, 68: DLIB_68}
BORDER_POINTS = 9  # fixed points along each side of the crop


def mouth_width(points: np.ndarray, layout: MouthLayout) -> float:
    left, right = points[list(layout.corners)]
    return float(np.linalg.norm(right - left))


def mouth_opening(points: np.ndarray, layout: MouthLayout) -> float:
    """The gap between the inner lips at the middle, as a fraction of the mouth width."""
    middle = len(layout.upper_inner) // 2
    gap = points[layout.lower_inner[middle]] - points[layout.upper_inner[middle]]
    return float(max(gap[1], 0.0) / max(mouth_width(points, layout), 1e-6))


@lru_cache(maxsize=16)
def _catmull_rom(count: int, factor: int) -> np.ndarray:
    """((count - 1) * factor + 1, count) weights: a uniform Catmull-Rom curve through `count` points (the end
    points doubled), `factor` samples per segment."""
    weights = np.zeros(((count - 1) * factor + 1, count), np.float32)
    for segment in range(count - 1):
        neighbours = [max(segment - 1, 0), segment, segment + 1, min(segment + 2, count - 1)]
        for step in range(factor):
            s = step / factor
            basis = 0.5 * np.array([-s ** 3 + 2 * s ** 2 - s, 3 * s ** 3 - 5 * s ** 2 + 2, -3 * s ** 3 + 4 * s ** 2 + s,
                                    s ** 3 - s ** 2])
            for index, weight in zip(neighbours, basis):
                weights[segment * factor + step, index] += weight
    weights[-1, -1] = 1.0
    return weights


def smooth_contour(points: np.ndarray, factor: int = 4) -> np.ndarray:
    """A lip contour with `factor`x as many points on a curve through the landmarks: polygons and warps drawn
    from it are curved, not faceted."""
    return (_catmull_rom(len(points), factor) @ np.asarray(points, np.float32)).astype(np.float32)


def lip_contours(points: np.ndarray, layout: MouthLayout) -> list[np.ndarray]:
    """The four lip contours (upper inner, lower inner, upper outer, lower outer), smoothed."""
    return [smooth_contour(points[list(c)]) for c in (layout.upper_inner, layout.lower_inner, layout.upper_outer,
                                                        layout.lower_outer)]


def lip_polygons(contours: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(outer, inner) closed polygons of the lips from lip_contours' four contours."""
    return np.concatenate([contours[2], contours[3][::-1]]), np.concatenate([contours[0], contours[1][::-1]])


def jaw_reach(layout: MouthLayout) -> np.ndarray:
    """How much of the chin's drop each jaw point takes: all at the chin, none at the jaw's ends."""
    return np.sin(np.pi * along_lip(len(layout.jaw))) ** 1.5


def chin_below(face: np.ndarray, points: np.ndarray, layout: MouthLayout, jaw_drop: float) -> np.ndarray:
    """How far the crop's bottom edge moves down at each of its BORDER_POINTS: the jaw's drop under the mouth,
    fading out sideways, so a chin below the crop slides out of it instead of being squeezed (never up)."""
    centre = float(points[list(layout.corners)][:, 0].mean())
    xs = np.linspace(0, face.shape[1] - 1, BORDER_POINTS)
    spread = max(0.6 * mouth_width(points, layout), 1.0)
    return max(jaw_drop, 0.0) * np.exp(-0.5 * ((xs - centre) / spread) ** 2)


def warp_mouth(face: np.ndarray, points: np.ndarray, moved: np.ndarray, layout: MouthLayout,
               jaw_drop: float) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """`face` with its lips and jaw warped from `points` to `moved` (both every landmark; only lips and jaw are
    read), the chin's drop being `jaw_drop`. Returns the warped crop and the smoothed lip contours before and
    after. Everything above the nose stays; a mouth the crop cannot hold comes back unwarped."""
    before, after = lip_contours(points, layout), lip_contours(moved, layout)
    jaw = list(layout.jaw)
    source = np.concatenate(before + [points[jaw].astype(np.float32)])
    target = np.concatenate(after + [moved[jaw].astype(np.float32)])
    still_above = min(float(points[list(layout.still)][:, 1].max()), float(target[:, 1].min()) - 2)
    if still_above >= face.shape[0] - 2:
        return face.copy(), before, after
    warped = warp_to(face, source, target, max(still_above, 0.0), chin_below(face, points, layout, jaw_drop))
    return warped, before, after


def along_lip(count: int) -> np.ndarray:
    """0 at the left corner, 1 at the right, for the points of one lip contour."""
    return np.linspace(0.0, 1.0, count)


def warp_to(face: np.ndarray, source: np.ndarray, target: np.ndarray, still_above: float,
            bottom_drop: np.ndarray) -> np.ndarray:
    """`face` warped so each source point lands on its target point, piecewise affine between them.

    The crop's top and sides and a row of points at height `still_above` stay where they are, so nothing above that
    row (eyes, brows, nose) moves at all. The bottom edge moves down by `bottom_drop` at each of its BORDER_POINTS
    (its corners stay): a jaw that drops below the crop slides the chin out of it rather than squeezing it. Other
    points that start or land within 2 px of the border are left out: the border would fold the image against
    them."""
    from scipy.interpolate import LinearNDInterpolator
    h, w = face.shape[:2]
    inside = np.all((np.minimum(source, target) >= 2) & (np.maximum(source, target)[:, ::-1] <= (h - 3, w - 3)), axis=1)
    source, target = source[inside], target[inside]
    xs = np.linspace(0, w - 1, BORDER_POINTS)
    side_ys = np.linspace(0, h - 1, BORDER_POINTS)[1:-1]
    fixed = np.array([(x, 0) for x in xs] + [(x, still_above) for x in xs] + [(0, y) for y in side_ys]
                     + [(w - 1, y) for y in side_ys], np.float32)
    bottom = np.stack([xs, np.full(BORDER_POINTS, h - 1.0)], 1).astype(np.float32)
    drop = np.array(bottom_drop, np.float32)
    drop[[0, -1]] = 0
    moved_to = np.concatenate([target, fixed, bottom + np.stack([np.zeros_like(drop), drop], 1)])
    came_from = np.concatenate([source, fixed, bottom])
    lowest = int(max(0, np.floor(still_above)))
    grid_y, grid_x = np.mgrid[lowest:h, 0:w].astype(np.float32)
    back = LinearNDInterpolator(moved_to, came_from - moved_to, fill_value=0.0)(grid_x, grid_y).astype(np.float32)
    map_x, map_y = np.mgrid[0:h, 0:w][::-1].astype(np.float32)
    map_x[lowest:] += back[..., 0]
    map_y[lowest:] += back[..., 1]
    return cv2.remap(face, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def polygon_mask(shape: tuple[int, int], polygon: np.ndarray, feather: float = 0.0, scale: int = 4) -> np.ndarray:
    """(h, w) float32 coverage of `polygon`, anti-aliased by drawing at `scale`x; softened by `feather` px."""
    h, w = shape
    big = np.zeros((h * scale, w * scale), np.uint8)
    cv2.fillPoly(big, [np.round(np.asarray(polygon) * scale).astype(np.int32)], 255, cv2.LINE_AA)
    mask = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), feather)
    return mask
