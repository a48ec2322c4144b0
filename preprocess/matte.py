"""The presenter's matte (alpha) per frame, for output without the recorded background (preprocess --matte).

mediapipe's selfie segmentation (its landscape model, which ships in the mediapipe wheel: no download) gives a
person probability at low resolution. A guided filter with the frame as guide then pulls that soft edge onto the
frame's own edges, which is where hair and the head's outline are; a zero-phase [1, 2, 1] filter over time steadies
the edge without lagging behind the motion (the cache is made offline, so each frame can see the next).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

MODEL = "selfie_segmentation_landscape.tflite"
GUIDE_EPS = 1e-3   # guided filter regularisation (intensities in [0, 1]): larger keeps more of the segmenter's edge


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float = GUIDE_EPS) -> np.ndarray:
    """He et al.'s guided filter: `source` smoothed, but following the edges of `guide` (both float32, same size)."""
    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1))
    mean_guide, mean_source = mean(guide), mean(source)
    slope = (mean(guide * source) - mean_guide * mean_source) / (mean(guide * guide) - mean_guide ** 2 + eps)
    offset = mean_source - slope * mean_guide
    return mean(slope) * guide + mean(offset)


class PersonMatte:
    """raw(frame) -> float32 (H, W) matte in [0, 1] for a BGR frame; one per preprocess run (it holds the model)."""

    def __init__(self):
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
        model = Path(mp.__file__).parent / "modules" / "selfie_segmentation" / MODEL
        if not model.is_file():
            raise RuntimeError(f"{model} is missing: this mediapipe wheel does not ship the selfie segmentation model "
                               f"(mediapipe 0.10.21 does; run scripts/setup.sh)")
        self._mp = mp
        self._segmenter = vision.ImageSegmenter.create_from_options(vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(model)), output_confidence_masks=True,
            output_category_mask=False))

    def raw(self, frame: np.ndarray) -> np.ndarray:
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame[..., ::-1]))
        person = self._segmenter.segment(image).confidence_masks[0].numpy_view().astype(np.float32)
        guide = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
        radius = max(2, round(min(frame.shape[:2]) / 90))  # 4 px at 360p, 8 at 720p: about a hair strand's blur
        return np.clip(guided_filter(guide, person, radius), 0, 1)

    def close(self) -> None:
        self._segmenter.close()


class MatteWriter:
    """Mattes of a frame sequence in display order, smoothed over (before, it, after) with weights 1, 2, 1 and
    handed to `write(sub, index, uint8 matte)` one frame late (it needs the next); the ends count their only
    neighbour twice. At 50 fps the sequence is frame i, in-between i, frame i + 1, so each smooths with its true
    neighbours in time."""

    def __init__(self, write: Callable[[str, int, np.ndarray], None]):
        self._write = write
        self._matte = PersonMatte()
        self._before: Optional[np.ndarray] = None
        self._held: Optional[tuple[str, int, np.ndarray]] = None

    def add(self, sub: str, index: int, frame: np.ndarray) -> None:
        matte = self._matte.raw(frame)
        if self._held is not None:
            self._emit(after=matte)
        self._held = (sub, index, matte)

    def finish(self) -> None:
        if self._held is not None:
            self._emit(after=None)
            self._held = None

    def close(self) -> None:
        self._matte.close()

    def _emit(self, after: Optional[np.ndarray]) -> None:
        sub, index, matte = self._held
        before = self._before if self._before is not None else (after if after is not None else matte)
        after = after if after is not None else before
        self._before = matte
        self._write(sub, index, to_levels(0.25 * before + 0.5 * matte + 0.25 * after))


def to_levels(matte: np.ndarray) -> np.ndarray:
    """A [0, 1] matte as the 8-bit alpha the cache and the outputs carry."""
    return np.clip(matte * 255 + 0.5, 0, 255).astype(np.uint8)
