"""IP_LAP's pre- and post-processing around the two networks: its landmark selections, face crop, sketches and
choice of reference frames, and one frame's generation (read in the reference's inference_single.py and
draw_landmark.py).

- Landmarks are MediaPipe face-mesh indices. The sketch is drawn from seven groups of mesh edges (lips, eyes,
  brows, face oval, nose): their 131 end points are the landmarks used. 74 of them carry the head pose (eyes, brows,
  nose and 8 oval points at the temples and cheeks), the other 57 are predicted from the audio: 17 jaw points of
  the oval and the 40 lip points, jaw first. Each group is ordered as in the reference's `ori_sequence_idx`.
- The face crop spans those 131 points plus 25 pixels each way (clipped to the frame); landmarks are given in
  the crop's [0, 1]. The sketch is drawn on a black canvas of the crop's aspect with its short side 128 (grey
  224 lines, one pixel, cv2's LINE_8), then resized to 128 x 128.
- References: the frames sorted by lip openness (the distance between mesh points 0 and 17 in the frame's
  normalised coordinates), Nl = 15 and N = 25 of them taken at torch.linspace positions of that order.
- Each frame is generated from a window of T = 5 frames centred on it. Frame k of the window hears the mel window
  of frame k - 2 (clamped at 0): the reference's `mel_chunks[max(0, k - 2)]`, so frame f hears frames f - 4 .. f.
  The renderer redraws the middle frame from its upper half, the five sketches, the references and the middle
  frame's mel; the face comes back as (x * 255) cast to uint8, resized to the crop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from .arch import CONTENT_POINTS, FACE, POSE_POINTS, T_FRAMES, LandmarkGenerator, Renderer

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
assert len(POSE) == POSE_POINTS and len(CONTENT) == CONTENT_POINTS
UPPER_LIP, LOWER_LIP = 0, 17
MESH_POINTS = 478     # MediaPipe's face mesh with the refined eyes and lips
CROP_MARGIN = 25      # pixels around the landmarks
SKETCH_GREY = (224, 224, 224)
REFERENCE_LANDMARKS = 15   # Nl
REFERENCE_FACES = 25       # N
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


def lip_openness(points: np.ndarray, width: int, height: int) -> float:
    dx, dy = (points[UPPER_LIP] - points[LOWER_LIP]) / (width, height)
    return float(np.hypot(dx, dy))


def spread_by_openness(openness: Sequence[float], count: int) -> list[int]:
    """Positions of `count` frames spread from the most closed mouth to the most open: the order sorted by openness
    (stable), sampled at torch.linspace(0, n - 1, count) truncated to int, as the reference picks."""
    order = sorted(range(len(openness)), key=lambda i: openness[i])
    return [order[int(i)] for i in torch.linspace(0, len(openness) - 1, steps=count)]


def draw_sketch(pose: np.ndarray, content: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """(128, 128, 3) float32 in [0, 1]: the mesh edges between the 131 points (given in the crop's [0, 1]), drawn on
    a canvas of the crop's aspect and resized. A point outside [0, 1] is not drawn, nor are its edges."""
    scale = FACE / min(crop_height, crop_width)
    canvas = np.zeros((int(crop_height * scale), int(crop_width * scale), 3))
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


def face_tensor(faces: np.ndarray, device: torch.device) -> torch.Tensor:
    """(..., 128, 128, 3) uint8 BGR -> (..., 3, 128, 128) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(faces)).to(device).float().div(255).movedim(-1, -3)


@dataclass
class References:
    """What the presenter's own frames give every generated frame: N reference faces with their sketches (the
    renderer's appearance prior) and Nl frames' landmarks (the landmark generator's prior)."""
    faces: torch.Tensor       # (1, N, 3, 128, 128)
    sketches: torch.Tensor    # (1, N, 3, 128, 128)
    pose: torch.Tensor        # (1, Nl, 2, 74)
    content: torch.Tensor     # (1, Nl, 2, 57)


@dataclass
class FrameLandmarks:
    """One frame of the presenter, as IP_LAP sees it."""
    pose: np.ndarray          # (2, 74) in the crop's [0, 1]
    content: np.ndarray       # (2, 57)
    crop_size: tuple[int, int]  # (height, width) of the crop in frame pixels
    openness: float


def pick_references(frames: Sequence[FrameLandmarks], faces: Sequence[np.ndarray], device: torch.device,
                    landmark_count: int = REFERENCE_LANDMARKS, face_count: int = REFERENCE_FACES) -> References:
    """The reference frames: landmarks of `landmark_count` and faces (128 x 128 BGR uint8) with sketches of
    `face_count`, spread over the range of lip openness."""
    openness = [f.openness for f in frames]
    landmark_picks = spread_by_openness(openness, landmark_count)
    face_picks = spread_by_openness(openness, face_count)
    sketches = np.stack([draw_sketch(frames[i].pose, frames[i].content, *frames[i].crop_size) for i in face_picks])
    return References(
        faces=face_tensor(np.stack([faces[i] for i in face_picks]), device)[None],
        sketches=torch.from_numpy(sketches).to(device).permute(0, 3, 1, 2)[None],
        pose=torch.from_numpy(np.stack([frames[i].pose for i in landmark_picks])).to(device)[None],
        content=torch.from_numpy(np.stack([frames[i].content for i in landmark_picks])).to(device)[None])


class IplapGenerator:
    """Both networks on one device, batched over frames: generate() is the reference's per-frame loop body."""

    def __init__(self, landmarks: LandmarkGenerator, renderer: Renderer):
        self.landmarks = landmarks.eval()
        self.renderer = renderer.eval()
        self.device = next(renderer.parameters()).device

    @torch.inference_mode()
    def generate(self, mels: np.ndarray, window: Sequence[Sequence[FrameLandmarks]], faces: np.ndarray,
                 references: References) -> np.ndarray:
        """mels (B, 5, 80, 16): each window frame's mel (already lagged, see MEL_LAG); window: B lists of the 5
        frames' landmarks; faces (B, 128, 128, 3) uint8 BGR: the middle frames' crops -> (B, 128, 128, 3) uint8,
        cast as the reference casts (x * 255, truncated)."""
        drawn = self.render(mels, window, faces, references)
        return (drawn.permute(0, 2, 3, 1) * 255).to(torch.uint8).cpu().numpy()

    @torch.inference_mode()
    def render(self, mels: np.ndarray, window: Sequence[Sequence[FrameLandmarks]], faces: np.ndarray,
               references: References) -> torch.Tensor:
        """generate() before the cast: (B, 3, 128, 128) float in [0, 1] on the device."""
        batch = len(faces)
        mel = torch.from_numpy(np.ascontiguousarray(mels, np.float32)).to(self.device)[:, :, None]  # (B,5,1,80,16)
        pose = torch.from_numpy(np.stack([[f.pose for f in frames] for frames in window])).to(self.device)
        content = self.landmarks(mel, pose, references.pose.expand(batch, -1, -1, -1),
                                 references.content.expand(batch, -1, -1, -1)).cpu().numpy()  # (B*5, 2, 57)
        sketches = np.stack([draw_sketch(frame.pose, content[b * T_FRAMES + t], *frame.crop_size)
                             for b, frames in enumerate(window) for t, frame in enumerate(frames)])
        sketches = torch.from_numpy(sketches).to(self.device).permute(0, 3, 1, 2).reshape(batch, T_FRAMES, 3, FACE,
                                                                                            FACE)
        middle = T_FRAMES // 2
        drawn, _ = self.renderer(face_tensor(faces, self.device)[:, None], sketches,
                                 references.faces.expand(batch, -1, -1, -1, -1),
                                 references.sketches.expand(batch, -1, -1, -1, -1), mel[:, middle:middle + 1])
        return drawn
