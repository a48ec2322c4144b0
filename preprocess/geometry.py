"""Crop boxes and the upright head alignment used by GFPGAN."""
from __future__ import annotations

from typing import Optional

import numpy as np

# GFPGAN / FFHQ five-point template for a 512x512 aligned face (eyes, nose tip, mouth corners).
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)


def padded_box(box: np.ndarray, pads: tuple[int, int, int, int], width: int, height: int) -> Optional[np.ndarray]:
    """Wav2Lip's crop rule: pads are (top, bottom, left, right) pixels, then clip to the image; integer box.

    None when less than 2x2 pixels of it remain inside the image (a face that has left the frame).
    """
    top, bottom, left, right = pads
    x1, y1, x2, y2 = box
    out = np.array([max(0, int(x1) - left), max(0, int(y1) - top),
                    min(width, int(x2) + right), min(height, int(y2) + bottom)], np.int32)
    if out[2] - out[0] < 2 or out[3] - out[1] < 2:
        return None
    return out


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src points onto dst (Umeyama), as a 2x3 matrix.

    Least squares over all five points keeps the head steady from frame to frame, where RANSAC/LMEDS would jump
    between point subsets.
    """
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
    m = np.zeros((2, 3), np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - m[:, :2] @ src_mean
    return m


def head_alignment(points5: np.ndarray, head_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Frame->head and head->frame affine matrices that bring the face upright onto the FFHQ template."""
    template = FFHQ_TEMPLATE_512 * (head_size / 512.0)
    forward = similarity_transform(points5.astype(np.float64), template.astype(np.float64))
    inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))[:2]
    return forward.astype(np.float32), inverse.astype(np.float32)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def box_in_head(box: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """The frame face box carried into the upright head: same centre (mapped) and size (scaled), axis-aligned."""
    x1, y1, x2, y2 = box
    centre = apply_affine(forward, np.array([[(x1 + x2) / 2, (y1 + y2) / 2]], np.float32))[0]
    scale = float(np.sqrt(abs(np.linalg.det(forward[:, :2]))))
    half_w, half_h = (x2 - x1) * scale / 2, (y2 - y1) * scale / 2
    return np.array([centre[0] - half_w, centre[1] - half_h, centre[0] + half_w, centre[1] + half_h], np.float32)


def crop_landmarks(landmarks: np.ndarray, box: np.ndarray, face_size: int) -> np.ndarray:
    """Frame landmarks in the pixels of its face crop (the padded `box` resized to face_size x face_size)."""
    x1, y1, x2, y2 = np.asarray(box, np.float32)
    scale = np.array([face_size / (x2 - x1), face_size / (y2 - y1)], np.float32)
    return (np.asarray(landmarks, np.float32) - np.array([x1, y1], np.float32)) * scale
