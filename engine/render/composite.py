"""Paste generated mouths back into the full frame, invisibly: feathered masks, optional colour match, and the
GFPGAN head path (enhance face | lip) through the cached upright head and its inverse affine."""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import cv2
import numpy as np

from core.masks import smoothstep

from .presenter import Presenter

ENHANCE_MODES = ("none", "lip", "face")


@lru_cache(maxsize=8)
def lower_face_mask(size: int) -> np.ndarray:
    """Soft mask over mouth, jaw and chin in a Wav2Lip crop (brows to chin), exactly 0 on the crop border.

    Eyes and brows stay the original pixels (the model redraws the whole crop but only the mouth matters), and
    the zero border means no box edge can ever show."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    ellipse = (((x - 0.5) / 0.40) ** 2 + ((y - 0.70) / 0.32) ** 2 <= 1).astype(np.float32)
    soft = cv2.GaussianBlur(ellipse, (0, 0), sigmaX=0.06 * size)
    # exactly 0 on the crop border and above 30% of its height (brows and eyes are never touched)
    border = smoothstep(x / 0.10) * smoothstep((1 - x) / 0.10) * smoothstep((y - 0.30) / 0.12) * smoothstep((1 - y) / 0.06)
    return (soft * border).astype(np.float32)


@lru_cache(maxsize=2)
def head_face_mask(size: int = 512) -> np.ndarray:
    """Soft face oval in the FFHQ-aligned head (eyes ~y 240, mouth ~y 371 at 512), exactly 0 on the head border,
    so the warped-back head square never shows an edge."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    ellipse = (((x - 0.5) / 0.30) ** 2 + ((y - 0.56) / 0.34) ** 2 <= 1).astype(np.float32)
    soft = cv2.GaussianBlur(ellipse, (0, 0), sigmaX=0.04 * size)
    border = smoothstep(x / 0.08) * smoothstep((1 - x) / 0.08) * smoothstep(y / 0.08) * smoothstep((1 - y) / 0.08)
    return (soft * border).astype(np.float32)


def blend(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """dst = mask * src + (1 - mask) * dst, in place, rounding to uint8."""
    m = mask[..., None]
    dst[:] = np.clip(src.astype(np.float32) * m + dst.astype(np.float32) * (1 - m) + 0.5, 0, 255).astype(np.uint8)


def match_colour(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift the generated crop's per-channel mean inside the mask to the original's (fixes a tinted mouth region)."""
    weight = mask[..., None]
    total = weight.sum() + 1e-6
    shift = ((original.astype(np.float32) - generated.astype(np.float32)) * weight).sum((0, 1)) / total
    return np.clip(np.rint(generated.astype(np.float32) + shift), 0, 255).astype(np.uint8)


def head_footprint(presenter: Presenter, index: int, size: int) -> Optional[tuple[int, int, int, int]]:
    """x1, y1, x2, y2 of the frame pixels the upright head of frame `index` covers when warped back (None: none)."""
    inverse = presenter.head_affine_inv[index].astype(np.float64)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    x1, y1 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x2, y2 = np.minimum(np.ceil(corners.max(0)).astype(int), [presenter.width, presenter.height])
    return (int(x1), int(y1), int(x2), int(y2)) if x2 > x1 and y2 > y1 else None


class CompositeSteps:
    """The order of a composite, whatever holds the pixels (numpy here, torch tensors in torch_composite.py):
    colour match, then either the crop pasted into the frame, or the mouth into the upright head, GFPGAN (only where
    the mouth changed, in lip mode) and the head warped back. Subclasses supply the steps."""

    def __init__(self, presenter: Presenter, enhance: str = "none", enhancer=None, colour_match: bool = False):
        if enhance not in ENHANCE_MODES:
            raise ValueError(f"--enhance must be one of {', '.join(ENHANCE_MODES)}")
        if enhance != "none" and enhancer is None:
            raise ValueError(f"--enhance {enhance} needs a GFPGAN model (--gfpgan_path)")
        self.presenter = presenter
        self.enhance = enhance
        self.enhancer = enhancer
        self.colour_match = colour_match

    def compose(self, indices: list[int], faces):
        """Frames for cache frames `indices` with generated crops `faces` (B, S, S, 3) pasted in."""
        if self.colour_match:
            faces = self._colour_matched(indices, faces)
        if self.enhance == "none":
            return [self._paste_crop(i, f) for i, f in zip(indices, faces)]
        heads = self._stack([self._head_with_mouth(i, f) for i, f in zip(indices, faces)])
        restored = self._restore(heads)
        if self.enhance == "lip":  # keep the enhanced pixels only where the mouth changed
            restored = self._stack([self._lip_only(i, h, r) for i, h, r in zip(indices, heads, restored)])
        return [self._paste_head(i, r) for i, r in zip(indices, restored)]


class Compositor(CompositeSteps):
    """Builds the output frame for one cache frame from a generated face crop (or passes the frame through), with
    numpy and cv2 on host threads: the CPU path."""

    def __init__(self, presenter: Presenter, enhance: str = "none", enhancer=None, colour_match: bool = False):
        super().__init__(presenter, enhance, enhancer, colour_match)
        self.crop_mask = lower_face_mask(presenter.face_size)

    def faces(self, indices: list[int]) -> np.ndarray:
        """The cached crops the lip model starts from."""
        return np.stack([self.presenter.face(i) for i in indices])

    def passthrough(self, index: int) -> np.ndarray:
        return self.presenter.background(index)

    _stack = staticmethod(np.stack)

    def _restore(self, heads: np.ndarray) -> np.ndarray:
        return self.enhancer.enhance(heads)

    def _colour_matched(self, indices: list[int], faces: np.ndarray) -> np.ndarray:
        return np.stack([match_colour(f, self.presenter.face(i), self.crop_mask) for i, f in zip(indices, faces)])

    def _paste_crop(self, index: int, face: np.ndarray) -> np.ndarray:
        return self._blend_face(self.presenter.background(index), self.presenter.box[index], face)

    def _head_with_mouth(self, index: int, face: np.ndarray) -> np.ndarray:
        return self._blend_face(self.presenter.head(index), self.presenter.head_box[index], face)

    def _blend_face(self, image: np.ndarray, box, face: np.ndarray) -> np.ndarray:
        """The crop resized into its box of `image` under the feathered lower-face mask (in place)."""
        x1, y1, x2, y2 = box
        size = (int(x2 - x1), int(y2 - y1))
        blend(image[y1:y2, x1:x2], cv2.resize(face, size, interpolation=cv2.INTER_LINEAR),
              cv2.resize(self.crop_mask, size, interpolation=cv2.INTER_LINEAR))
        return image

    def _lip_only(self, index: int, head: np.ndarray, restored: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = self.presenter.head_box[index]
        mask = np.zeros(head.shape[:2], np.float32)
        mask[y1:y2, x1:x2] = cv2.resize(self.crop_mask, (int(x2 - x1), int(y2 - y1)))
        out = head.copy()
        blend(out, restored, mask)
        return out

    def _paste_head(self, index: int, head: np.ndarray) -> np.ndarray:
        """Warp the head back through the inverse affine, only over its footprint in the frame."""
        frame = self.presenter.background(index)
        size = head.shape[0]
        footprint = head_footprint(self.presenter, index, size)
        if footprint is None:
            return frame
        x1, y1, x2, y2 = footprint
        shifted = self.presenter.head_affine_inv[index].astype(np.float64)
        shifted[:, 2] -= (x1, y1)
        region = (int(x2 - x1), int(y2 - y1))
        warped = cv2.warpAffine(head, shifted, region, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.warpAffine(head_face_mask(size), shifted, region, flags=cv2.INTER_LINEAR, borderValue=0)
        blend(frame[y1:y2, x1:x2], warped, mask)
        return frame
