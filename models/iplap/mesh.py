"""The face-mesh geometry IP_LAP works on, without torch: preprocess/ stores IP_LAP's crops and landmarks with it,
and the engine and training draw its sketches (read in the reference's inference_single.py, draw_landmark.py and
preprocess/preprocess_video.py).

- Landmarks are MediaPipe face-mesh indices. The sketch is drawn from seven groups of mesh edges (lips, eyes,
  brows, face oval, nose): their 131 end points are the landmarks used. 74 of them carry the head pose (eyes, brows,
  nose and 8 oval points at the temples and cheeks), the other 57 are predicted from the audio: 17 jaw points of
  the oval and the 40 lip points, jaw first. Each group is ordered as in the reference's `ori_sequence_idx`.
- The face crop spans those 131 points plus 25 pixels each way (clipped to the frame); landmarks are given in
  the crop's [0, 1]. The sketch is drawn on a black canvas of the crop's aspect with its short side 128 (grey
  224 lines, one pixel, cv2's LINE_8), then resized to 128 x 128.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

FACE = 128            # the renderer's face size
T_FRAMES = 5          # frames per window; the renderer draws the middle one
EXPORT_CROPS = "iplap"                      # a training clip's folder of IP_LAP crops
EXPORT_LANDMARKS = "iplap_landmarks.npz"    # and its landmarks (pose, content, crop_size)
ORI_SEQUENCE = (162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288,
                361, 323, 454, 356, 389,
                70, 63, 105, 66, 107, 55, 65, 52, 53, 46,
                336, 296, 334, 293, 300, 276, 283, 282, 295, 285,
                168, 6, 197, 195, 5,
                48, 115, 220, 45, 4, 275, 440, 344, 278,
                33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7,
                362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382,
                61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146,
                78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
LIPS = frozenset([(61, 146), (146, 91), (91, 181), (181, 84), (84, 17), (17, 314), (314, 405), (405, 321),
                  (321, 375), (375, 291), (61, 185), (185, 40), (40, 39), (39, 37), (37, 0), (0, 267), (267, 269),
                  (269, 270), (270, 409), (409, 291), (78, 95), (95, 88), (88, 178), (178, 87), (87, 14), (14, 317),
                  (317, 402), (402, 318), (318, 324), (324, 308), (78, 191), (191, 80), (80, 81), (81, 82), (82, 13),
                  (13, 312), (312, 311), (311, 310), (310, 415), (415, 308)])
LEFT_EYE = frozenset([(263, 249), (249, 390), (390, 373), (373, 374), (374, 380), (380, 381), (381, 382),
                      (382, 362), (263, 466), (466, 388), (388, 387), (387, 386), (386, 385), (385, 384), (384, 398),
                      (398, 362)])
LEFT_EYEBROW = frozenset([(276, 283), (283, 282), (282, 295), (295, 285), (300, 293), (293, 334), (334, 296),
                          (296, 336)])
RIGHT_EYE = frozenset([(33, 7), (7, 163), (163, 144), (144, 145), (145, 153), (153, 154), (154, 155), (155, 133),
                       (33, 246), (246, 161), (161, 160), (160, 159), (159, 158), (158, 157), (157, 173),
                       (173, 133)])
RIGHT_EYEBROW = frozenset([(46, 53), (53, 52), (52, 65), (65, 55), (70, 63), (63, 105), (105, 66), (66, 107)])
FACE_OVAL = frozenset([(389, 356), (356, 454), (454, 323), (323, 361), (361, 288), (288, 397), (397, 365),
                       (365, 379), (379, 378), (378, 400), (400, 377), (377, 152), (152, 148), (148, 176),
                       (176, 149), (149, 150), (150, 136), (136, 172), (172, 58), (58, 132), (132, 93), (93, 234),
                       (234, 127), (127, 162)])
NOSE = frozenset([(168, 6), (6, 197), (197, 195), (195, 5), (5, 4), (4, 45), (45, 220), (220, 115), (115, 48),
                  (4, 275), (275, 440), (440, 344), (344, 278)])
SKETCH_EDGES = LIPS | LEFT_EYE | LEFT_EYEBROW | RIGHT_EYE | RIGHT_EYEBROW | FACE_OVAL | NOSE
TEMPLES_AND_CHEEKS = (162, 127, 234, 93, 389, 356, 454, 323)


def end_points(edges) -> set[int]:
    return {point for edge in edges for point in edge}


USED = end_points(SKETCH_EDGES)
POSE = tuple(sorted(end_points(NOSE | RIGHT_EYEBROW | RIGHT_EYE | LEFT_EYE | LEFT_EYEBROW) | set(TEMPLES_AND_CHEEKS),
                    key=ORI_SEQUENCE.index))
CONTENT = tuple(sorted(USED - set(POSE), key=ORI_SEQUENCE.index))
SKETCH_POINTS = POSE + CONTENT  # the mesh index of each of the 131 points the sketch is drawn from
POSE_POINTS, CONTENT_POINTS = len(POSE), len(CONTENT)  # 74 carry the head pose, 57 are drawn from the audio
UPPER_LIP, LOWER_LIP = 0, 17
MESH_POINTS = 478     # MediaPipe's face mesh with the refined eyes and lips
CROP_MARGIN = 25      # pixels around the landmarks
SKETCH_GREY = (224, 224, 224)
MEL_LAG = 2                # window frame k hears frame k - 2's mel window


def crop_box(points: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of the face crop: the sketch's points plus 25 pixels, clipped to the frame. points: the
    mesh in frame pixels (478, 2)."""
    used = points[list(USED)].astype(np.float64) / (width, height)
    x_min, y_min = used.min(axis=0)
    x_max, y_max = used.max(axis=0)
    x_min, x_max = max(x_min - CROP_MARGIN / width, 0), min(x_max + CROP_MARGIN / width, 1)
    y_min, y_max = max(y_min - CROP_MARGIN / height, 0), min(y_max + CROP_MARGIN / height, 1)
    return int(y_min * height), int(y_max * height), int(x_min * width), int(x_max * width)


def crop_landmarks(points: np.ndarray, box: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The pose (2, 74) and content (2, 57) landmarks of a frame, x and y in the crop's [0, 1]."""
    y1, y2, x1, x2 = box
    scaled = (points.astype(np.float64) - (x1, y1)) / (x2 - x1, y2 - y1)
    return scaled[list(POSE)].T.astype(np.float32), scaled[list(CONTENT)].T.astype(np.float32)


def crop_geometry(points: np.ndarray, box: Sequence[int]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A frame as IP_LAP's crop holds it: its pose and content landmarks (crop_landmarks) and the crop's (height,
    width) in frame pixels, which the sketch's aspect needs."""
    y1, y2, x1, x2 = (int(v) for v in box)
    return (*crop_landmarks(points, box), (y2 - y1, x2 - x1))


def lip_openness(points: np.ndarray, width: int, height: int) -> float:
    dx, dy = (points[UPPER_LIP] - points[LOWER_LIP]) / (width, height)
    return float(np.hypot(dx, dy))


def draw_sketch(pose: np.ndarray, content: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """(128, 128, 3) float32 in [0, 1]: the mesh edges between the 131 points (given in the crop's [0, 1]), drawn on
    a canvas of the crop's aspect and resized. A point outside [0, 1] is not drawn, nor are its edges."""
    shortest = min(crop_height, crop_width)  # h * 128 / m, in this order: the reference's rounding
    canvas = np.zeros((int(crop_height * FACE / shortest), int(crop_width * FACE / shortest), 3))
    rows, cols = canvas.shape[:2]
    points = np.concatenate([pose, content], axis=1).T.astype(np.float64)
    pixels = {}
    for index, (x, y) in zip(SKETCH_POINTS, points):
        if inside_unit(x) and inside_unit(y):
            pixels[index] = (min(math.floor(x * cols), cols - 1), min(math.floor(y * rows), rows - 1))
    for start, end in SKETCH_EDGES:
        if start in pixels and end in pixels:
            cv2.line(canvas, pixels[start], pixels[end], SKETCH_GREY, 1)
    return (cv2.resize(canvas, (FACE, FACE)) / 255.0).astype(np.float32)


def inside_unit(value: float) -> bool:
    """mediapipe drawing_utils' test: in [0, 1], with 1 itself taken as within."""
    return (value > 0 or value == 0) and (value < 1 or math.isclose(1, value))
