"""What is behind the presenter in the output: the recorded video (default), nothing (alpha), or a key colour.

With a cache made by `preprocess --matte`, each output frame has the presenter's matte (the engine only changes
pixels inside the face, which the matte covers). `alpha` hands the sinks BGRA frames with that matte for formats that
carry it (ProRes 4444 .mov, VP9 .webm, the live WebM stream); a key colour fills the rest for those that cannot
(H.264, the virtual camera), with the key colour's tint taken out of the edge so OBS's chroma key cuts cleanly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

NAMED = {"green": "#00b140", "blue": "#0047bb"}  # the broadcast chroma-key paints
EDGE_PX = 3  # the band (pixels outside the matte's soft edge) whose key tint is removed


@dataclass(frozen=True)
class Backdrop:
    kind: str                                 # "video", "alpha" or "colour"
    colour: tuple[int, int, int] = (0, 0, 0)  # BGR, for "colour"

    @classmethod
    def parse(cls, text: str) -> "Backdrop":
        """video | alpha | green | blue | #rrggbb"""
        if text in ("video", "alpha"):
            return cls(text)
        value = NAMED.get(text, text)
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            raise ValueError(f"--background {text!r}: give video, alpha, green, blue or a colour as #rrggbb")
        red, green, blue = (int(value[k:k + 2], 16) for k in (1, 3, 5))
        return cls("colour", (blue, green, red))

    @property
    def needs_matte(self) -> bool:
        return self.kind != "video"

    def apply(self, frame: np.ndarray, matte: np.ndarray) -> np.ndarray:
        """The output frame for a BGR frame and its uint8 matte: BGRA (straight alpha) or BGR over the colour."""
        if self.kind == "alpha":
            return cv2.merge([*cv2.split(frame), matte])  # (np.dstack: 15 ms at 720p, this 2 ms)
        return keyed(frame, matte, self.colour)


def keyed(frame: np.ndarray, matte: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The frame over a flat key colour, cut where the matte crosses half: a chroma keyer decides per pixel, so a
    pixel that is half key colour would be kept green-tinted or cut in half. Kept pixels at and near the soft edge
    lose the part of their chroma that points towards the key's (spill suppression): mixed pixels turn neutral
    instead of key-tinted, so the keyer leaves no coloured fringe."""
    key = np.array(colour, np.float32)
    kept = on_chroma_blocks(matte >= 128)
    # OpenCV's fill and masked copy: numpy's broadcast fill and np.where take 10-50x longer
    out = cv2.rectangle(np.empty_like(frame), (0, 0), frame.shape[1::-1], tuple(map(int, colour)), -1)
    cv2.copyTo(frame, kept.view(np.uint8), out)
    soft = ((matte > 0) & (matte < 255)).astype(np.uint8)
    rows, columns = np.nonzero((cv2.dilate(soft, np.ones((2 * EDGE_PX + 1,) * 2, np.uint8)) > 0) & kept)
    if rows.size == 0:
        return out
    alpha = matte[rows, columns].astype(np.float32)[:, None] / 255  # only the edge band is mixed and de-spilled
    pixels = frame[rows, columns].astype(np.float32) * alpha + key * (1 - alpha)
    key_chroma = key - key.mean()
    norm = float(np.linalg.norm(key_chroma))
    if norm > 1e-6:
        direction = key_chroma / norm
        towards_key = np.maximum((pixels - pixels.mean(axis=1, keepdims=True)) @ direction, 0)
        pixels -= towards_key[:, None] * direction
    out[rows, columns] = np.clip(pixels + 0.5, 0, 255).astype(np.uint8)
    return out


def on_chroma_blocks(kept: np.ndarray) -> np.ndarray:
    """The cut moved onto the 2x2 blocks that share one chroma sample in 4:2:0 video (H.264, most virtual cameras):
    a block is kept when most of it is. A block holding both key and presenter pixels would average their chroma,
    and the encoder would paint a key-coloured rim on the presenter that no keyer can remove."""
    height, width = kept.shape
    padded = np.pad(kept, ((0, height % 2), (0, width % 2)), mode="edge").astype(np.uint8)
    blocks = padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2] >= 2
    return np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)[:height, :width]
