"""ARKit-52 mouth and jaw blendshape weights of the mouth a viewer sees, and a Live Link Face CSV of them.

The weights come from face landmarks (the animator's moved ones, or a detector's), measured against the presenter's
resting mouth (`rest_mouth` over the cached frames): each frame is first mapped onto the rest by a similarity fitted
on the points that never move (nose, cheekbones), so head motion and distance to the camera do not count, and every
distance is a fraction of the resting mouth's width. Only Apple's "Mouth and Jaw" shapes are measured; eyes, brows,
cheeks, nose and tongue stay 0.

Left and Right are the face's own, as in ARKit ("relative to the face"): the subject's left is the image's right in
a non-mirrored crop, so mouthSmileLeft is the corner on the image's right.
"""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from core.scratch import written

from .geometry import LAYOUTS, MouthLayout, mouth_opening

ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight",
    "eyeWideRight",
    "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft",
    "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft",
    "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight",
    "tongueOut")
# the Live Link Face app's header, verbatim: its own order (JawRight before JawLeft, MouthRight before MouthLeft), so
# columns are always matched by name
LIVE_LINK_COLUMNS: tuple[str, ...] = tuple(
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,EyeSquintLeft,"
    "EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,EyeSquintRight,"
    "EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,MouthLeft,"
    "MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,"
    "MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,MouthShrugUpper,"
    "MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,MouthUpperUpRight,"
    "BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,CheekSquintLeft,"
    "CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,"
    "LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll".split(","))
LIVE_LINK_VALUES = 61  # BlendShapeCount on every row: 52 shapes + 9 head and eye rotations

REST_SHARE = 0.2  # rest_mouth: the most closed fifth of the frames
# what a weight of 1 is, as a fraction of the resting mouth width (chosen so the animator's wide speaking mouth,
# a lip gap of 0.5-0.6 of the width with the chin 0.68 of it lower, gives jawOpen 0.7-0.85)
CHIN_FULL = 0.5      # the chin's drop
GAP_FULL = 0.7       # the inner lips' gap beyond rest
PARTED = 0.15        # lips this far apart beyond rest are open (mouthFunnel), closer together closed (mouthPucker)
NARROW_FULL = 0.25   # the mouth's narrowing against rest (mouthFunnel / mouthPucker)
CORNER_FULL = 0.12   # a corner's rise, drop or outward move (mouthSmile, mouthFrown, mouthStretch)
SHIFT_FULL = 0.15    # both lips together sideways (mouthLeft / mouthRight)
LIP_FULL = 0.15      # the upper lip's rise, the lower lip's drop beyond the jaw (mouthUpperUp, mouthLowerDown)
PRESS_FULL = 0.5     # the share of the lips' resting thickness lost (mouthPress)
NOISE = 0.02         # moves below this are landmark jitter (about 1 px of a 96 px crop's mouth): weight 0


def layout_of(landmarks: np.ndarray) -> MouthLayout:
    """The layout of landmarks (..., K, 2), or a ValueError naming the counts we know."""
    if landmarks.ndim < 2 or landmarks.shape[-1] != 2 or landmarks.shape[-2] not in LAYOUTS:
        raise ValueError(f"landmarks of shape {landmarks.shape}: expected (..., K, 2) with K one of "
                         f"{sorted(LAYOUTS)} (the layouts models/mouthwarp/geometry.py knows)")
    return LAYOUTS[landmarks.shape[-2]]


def similarity(moving: np.ndarray, fixed: np.ndarray) -> tuple[complex, complex]:
    """(a, b): a * z + b maps the complex points `moving` onto `fixed` with the least squared error (a holds the
    scale and rotation, b the shift). Python complex sums: numpy's per-call cost is most of the time here."""
    moving_mean, fixed_mean = complex(moving.sum()) / len(moving), complex(fixed.sum()) / len(fixed)
    centred = moving - moving_mean
    a = complex(np.vdot(centred, fixed - fixed_mean)) / max(float(np.vdot(centred, centred).real), 1e-12)
    return a, fixed_mean - a * moving_mean


def onto(points: np.ndarray, reference: np.ndarray, layout: MouthLayout) -> np.ndarray:
    """`points` (K, 2) as complex numbers, mapped onto `reference` by the similarity that best fits the still
    points: head motion and scale are taken out before the mouth is measured."""
    z, still = _complex(points), list(layout.still)
    a, b = similarity(z[still], _complex(reference)[still])
    return a * z + b


def _complex(points: np.ndarray) -> np.ndarray:
    return points[:, 0].astype(np.float64) + 1j * points[:, 1].astype(np.float64)


def rest_mouth(landmarks: np.ndarray) -> np.ndarray:
    """The presenter's resting mouth (K, 2) from every cached frame's landmarks (N, K, 2) in crop pixels, NaN rows
    where there is no face: the frames of the most closed fifth, each aligned onto their median on the still points
    (the head moves while the mouth rests), and the median of those, point by point."""
    landmarks = np.asarray(landmarks, np.float64)
    layout = layout_of(landmarks)
    if landmarks.ndim != 3:
        raise ValueError(f"landmarks of shape {landmarks.shape}: expected (N, K, 2), one set per frame")
    faces = landmarks[np.isfinite(landmarks).all(axis=(1, 2))]
    if not len(faces):
        raise ValueError(f"none of the {len(landmarks)} frames has finite landmarks: no face to take a resting "
                         f"mouth from")
    openings = np.array([mouth_opening(points, layout) for points in faces])
    closed = faces[openings <= np.quantile(openings, REST_SHARE)]
    first = np.median(closed, axis=0)
    aligned = np.stack([onto(points, first, layout) for points in closed])
    middle = np.median(aligned.real, axis=0), np.median(aligned.imag, axis=0)
    return np.stack(middle, axis=1).astype(np.float32)


def _halves(contour: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """(image-left, image-right) halves of a lip contour, corners and middle left out."""
    n = len(contour)
    return list(contour[1:n // 2]), list(contour[n // 2 + 1:n - 1])


def _middle(contour: tuple[int, ...]) -> int:
    return contour[len(contour) // 2]


class _Reference(NamedTuple):
    """What every frame is measured against, worked out once per resting mouth: the measures are weighted means of
    the `used` points (rows), so one product gives them all, in resting mouth widths."""
    used: np.ndarray          # landmark indices read per frame, the still ones first
    still: int                # how many of `used` are still points
    rest_still: np.ndarray    # the rest's still points, complex
    origin: complex           # the resting mouth's centre
    factor: complex           # (p - origin) * factor: along the mouth (real, image left to right), down (imag)
    rows: np.ndarray          # (measures, len(used)) weights
    at_rest: np.ndarray       # the measures of the rest itself
    slices: dict[str, slice]  # measure name -> its place in the vector (pairs: image-left, image-right)
    fulls: np.ndarray         # the move that is weight 1 of each raw measure of mouth_weights, in its order


def _read_at(xs: np.ndarray, places: np.ndarray) -> np.ndarray:
    """Weights of a curve's points (at increasing `xs`) whose sum is the curve's mean height over `places`, read by
    linear interpolation (which is linear in the heights)."""
    return np.array([np.interp(places, xs, unit).mean() for unit in np.eye(len(xs))])


def _rows(layout: MouthLayout, rest: np.ndarray) -> dict[str, list[dict[int, float]]]:
    """Each measure as one weighted mean of landmarks per entry ({index: weight}); the jaw under each half of the
    lower lip is the jaw line read at those lip points' places along the mouth at rest."""
    def mean(indices: list[int]) -> dict[int, float]:
        return {i: 1 / len(indices) for i in indices}

    jaw = sorted(layout.jaw, key=lambda i: rest[i].real)
    return {"corners": [{i: 1.0} for i in layout.corners], "chin": [{_middle(layout.jaw): 1.0}],
            "inner_middle": [{_middle(layout.upper_inner): 1.0}, {_middle(layout.lower_inner): 1.0}],
            "outer_middle": [mean([_middle(layout.upper_outer), _middle(layout.lower_outer)])],
            **{name: [mean(half) for half in _halves(getattr(layout, name))]
               for name in ("upper_outer", "lower_outer", "upper_inner", "lower_inner")},
            "jaw_under": [dict(zip(jaw, _read_at(rest[jaw].real, rest[half].real)))
                          for half in _halves(layout.lower_outer)]}


@lru_cache(maxsize=8)
def _reference_of(count: int, data: bytes) -> _Reference:
    rest = np.frombuffer(data).reshape(count, 2)
    layout = LAYOUTS[count]
    if not np.isfinite(rest).all():
        raise ValueError("the resting mouth has non-finite landmarks: make it with rest_mouth")
    z = _complex(rest)
    left, right = z[list(layout.corners)]
    origin, factor = (left + right) / 2, 1 / (right - left)
    measures = _rows(layout, z)
    used = list(dict.fromkeys(list(layout.still) + [i for entries in measures.values() for e in entries for i in e]))
    place = {i: k for k, i in enumerate(used)}
    rows, slices = [], {}
    for name, entries in measures.items():
        slices[name] = slice(len(rows), len(rows) + len(entries))
        for entry in entries:
            row = np.zeros(len(used))
            row[[place[i] for i in entry]] = list(entry.values())
            rows.append(row)
    matrix = np.array(rows)
    at_rest = matrix @ ((z[used] - origin) * factor)
    press_full = np.maximum(PRESS_FULL * _thickness({name: at_rest[at] for name, at in slices.items()}), 2 * NOISE)
    fulls = np.concatenate([[CHIN_FULL, GAP_FULL, NARROW_FULL, PARTED, SHIFT_FULL, SHIFT_FULL],
                            np.repeat([CORNER_FULL, CORNER_FULL, CORNER_FULL], 2), press_full, np.repeat(LIP_FULL, 4)])
    return _Reference(np.array(used), len(layout.still), z[list(layout.still)], origin, factor, matrix, at_rest,
                      slices, fulls)


def _reference(rest: np.ndarray) -> _Reference:
    """The resting mouth's reference, cached: every frame of a session is measured against the same rest."""
    layout_of(rest)
    return _reference_of(len(rest), np.ascontiguousarray(rest, np.float64).tobytes())


def _unit(value: float | np.ndarray, full: float | np.ndarray) -> np.ndarray:
    """0..1 of a move in resting widths: none below NOISE (landmark jitter), 1 at `full`."""
    return np.clip((np.asarray(value) - NOISE) / (full - NOISE), 0.0, 1.0)


def _moves(points: np.ndarray, ref: _Reference) -> dict[str, np.ndarray]:
    """Each measure's move from rest, in the resting mouth's frame and widths, head motion taken out."""
    z = _complex(points[ref.used])
    a, b = similarity(z[:ref.still], ref.rest_still)
    move = ref.rows @ (a * ref.factor * z + (b - ref.origin) * ref.factor) - ref.at_rest
    return {name: move[at] for name, at in ref.slices.items()}


def _thickness(measures: dict[str, np.ndarray]) -> np.ndarray:
    """Both lips' thickness at each half (image-left, image-right); linear, so it also turns moves into changes."""
    return (measures["lower_outer"] - measures["lower_inner"] + measures["upper_inner"] - measures["upper_outer"]).imag


_SIDED = tuple(shape + side for shape in ("mouthSmile", "mouthFrown", "mouthStretch", "mouthPress", "mouthLowerDown",
                                          "mouthUpperUp") for side in ("Right", "Left"))  # image-left first


def mouth_weights(points: np.ndarray, rest: np.ndarray) -> dict[str, float]:
    """All 52 ARKit weights in [0, 1] for one frame's landmarks (K, 2), against the resting mouth (rest_mouth).
    Only the mouth and jaw shapes are measured; a frame without a face (non-finite points) is neutral, all 0.

    Moves are in resting mouth widths, head motion taken out; the *_FULL constants say what weighs 1.
    jawOpen: the chin's drop or the inner lips' gap beyond rest, whichever is more. mouthClose: how far the chin
    dropped beyond that gap (lips together on an open jaw), so jawOpen - mouthClose is the lips' aperture, as in
    ARKit. mouthFunnel / mouthPucker: the mouth narrowing with the lips parted / together. mouthSmile / mouthFrown:
    a corner rising / falling. mouthStretch: a corner moving outward, both lips' sideways shift (mouthLeft /
    mouthRight) taken out. mouthPress: the lips thinning. mouthUpperUp: the upper lip rising. mouthLowerDown: the
    lower lip dropping beyond the jaw under it (a lip the jaw carries is jawOpen's, not counted twice)."""
    ref = _reference(rest)
    if points.shape != rest.shape:
        raise ValueError(f"landmarks of shape {points.shape} against a resting mouth of shape {rest.shape}")
    weights = dict.fromkeys(ARKIT_NAMES, 0.0)
    if not np.isfinite(points).all():
        return weights
    move = _moves(points, ref)
    corners, (upper, lower) = move["corners"], move["inner_middle"]
    gap, shift = (lower - upper).imag, move["outer_middle"][0].real
    scalars = [move["chin"][0].imag, gap, (corners[0] - corners[1]).real, gap, shift, -shift]
    sided = [-corners.imag, corners.imag, (corners.real - shift) * np.array([-1.0, 1.0]), -_thickness(move),
             (move["lower_outer"] - move["jaw_under"]).imag, -move["upper_outer"].imag]
    units = _unit(np.concatenate([scalars, *sided]), ref.fulls).tolist()
    jaw, aperture, narrowing, parted, left, right = units[:6]
    weights.update(jawOpen=max(jaw, aperture), mouthClose=max(jaw - aperture, 0.0),
                   mouthFunnel=narrowing * parted, mouthPucker=narrowing * (1 - parted), mouthLeft=left,
                   mouthRight=right)
    weights.update(zip(_SIDED, units[6:]))
    return weights


def live_link_timecode(frame: int, fps: int) -> str:
    """HH:MM:SS:FF.mmm of a frame counted from 0 at `fps` (the sub-frame part is always 000)."""
    seconds, ff = divmod(frame, fps)
    minutes, ss = divmod(seconds, 60)
    hh, mm = divmod(minutes, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}.000"


def live_link_name(arkit: str) -> str:
    """The CSV's PascalCase name of an ARKit name (jawOpen -> JawOpen)."""
    return arkit[0].upper() + arkit[1:]


def write_live_link_csv(path: Path | str, rows: Iterable[dict[str, float]], fps: int = 25) -> Path:
    """A Live Link Face CSV, one row per frame from 00:00:00:00.000: each row's ARKit weights in their columns by
    name, head and eye rotations 0. Written to a scratch file and published (core/scratch.py), so a killed writer
    leaves no half file; a row with a name ARKit does not have is an error, not a silently empty column."""
    arkit = {live_link_name(name): name for name in ARKIT_NAMES}
    names = [arkit.get(column) for column in LIVE_LINK_COLUMNS[2:]]  # None: a head or eye rotation
    known = set(ARKIT_NAMES)
    with written(path) as scratch, open(scratch, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(LIVE_LINK_COLUMNS)
        for frame, row in enumerate(rows):
            unknown = set(row) - known
            if unknown:
                raise ValueError(f"frame {frame}: {', '.join(sorted(unknown))} not ARKit blendshape names")
            values = [f"{0.0 if name is None else float(row.get(name, 0.0)):.10f}" for name in names]
            writer.writerow([live_link_timecode(frame, fps), LIVE_LINK_VALUES, *values])
    return Path(path)
