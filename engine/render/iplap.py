"""--model iplap: IP_LAP draws the presenter's mouth from the cache, and hands the engine the same crops Wav2Lip
does, so the feathered paste-back, GFPGAN and every sink stay as they are.

IP_LAP generates a face in its own crop (the mesh's extent plus 25 pixels, iplap_face/ in the cache). Its result is
warped into the Wav2Lip crop of the frame (body_face/, the padded box the compositor pastes), over the cached crop,
and the compositor resizes that crop into the frame: two resamplings, where the reference resizes its face into
its box once. Where its crop does not reach, the cached pixels stay. The cache is made at face_size 128, IP_LAP's
own size (the `iplap` preset does that), so the crop keeps the face's detail.
"""
from __future__ import annotations

import logging
from typing import Optional

import cv2
import numpy as np

from core.timebase import MEL_SHAPE
from models.iplap.mesh import FACE, T_FRAMES, crop_geometry, lip_openness
from models.iplap.prior import REFERENCE_FACES, FrameLandmarks, IplapGenerator, pick_references

from .presenter import Presenter

log = logging.getLogger("engine")


class IplapLipSync:
    """The engine's lip model for IP_LAP, a LipModel (models/contract.py): predict(windows (B, 5, 80, 16), crops
    (B, S, S, 3), landmarks, frames (B, 5) cache frames of each window) -> crops. `window_frames` tells the model
    stage to hand it each frame's window of five: the mel windows of frames f - 4 .. f (IP_LAP's frame k hears frame
    k - 2) and the cache frames shown at f - 2 .. f + 2. Both networks take the whole batch in one call."""
    name = "iplap"
    window_frames = T_FRAMES
    batch_size = None
    runtime = "torch"
    device_tensors = False  # its crops are warped with OpenCV on the host
    scheduled = False

    def __init__(self, generator: IplapGenerator, presenter: Presenter, references: int = REFERENCE_FACES):
        self.generator = generator
        self.presenter = presenter
        self.size = presenter.face_size
        self.device = generator.device
        width, height = presenter.width, presenter.height
        self.frames: dict[int, FrameLandmarks] = {}
        for i in np.flatnonzero(presenter.has_face):
            points = presenter.landmarks[i]
            self.frames[int(i)] = FrameLandmarks(*crop_geometry(points, presenter.iplap_box[i]),
                                                 lip_openness(points, width, height))
        faces = list(self.frames)
        self.references = pick_references([self.frames[i] for i in faces], lambda k: presenter.iplap_face(faces[k]),
                                          generator.device, face_count=references)
        log.info("IP_LAP: %d reference faces and 15 reference landmark sets from %d frames of %s", references,
                 len(faces), presenter.dir.name)

    def warm_up(self, batch: int = 1) -> None:
        """One generation, so that the first spoken frame does not pay for first-call allocations."""
        face = next(iter(self.frames))
        self.predict(np.zeros((batch, T_FRAMES, *MEL_SHAPE), np.float32), np.stack([self.presenter.face(face)] * batch),
                     None, np.full((batch, T_FRAMES), face))

    def predict(self, mel_windows: np.ndarray, faces: np.ndarray, landmarks: Optional[np.ndarray] = None,
                frames: Optional[np.ndarray] = None, due: float = float("inf")) -> np.ndarray:
        """frames (B, 5): the cache frames of each window, the middle one the frame drawn (it has a face; a
        neighbour without one lends the middle frame's landmarks). `landmarks` and `due` are the contract's, not
        needed: IP_LAP draws from its own landmarks, when called."""
        middles = frames[:, T_FRAMES // 2]
        window = [[self.frames.get(int(j), self.frames[int(m)]) for j in row] for row, m in zip(frames, middles)]
        generated = self.generator.generate(mel_windows, window, np.stack([self.presenter.iplap_face(int(m))
                                                                           for m in middles]), self.references)
        return np.stack([into_crop(crop, face, self.presenter.iplap_box[m], self.presenter.box[m])
                         for crop, face, m in zip(faces, generated, middles)])


def into_crop(crop: np.ndarray, face: np.ndarray, iplap_box, box) -> np.ndarray:
    """IP_LAP's 128 x 128 face, whose crop is iplap_box (y1, y2, x1, x2) of the frame, warped into the frame's
    Wav2Lip crop (box x1, y1, x2, y2, resized to crop's size) over the cached crop: pixel centres mapped through
    frame coordinates, one bilinear resampling."""
    y1, y2, x1, x2 = (float(v) for v in iplap_box)
    bx1, by1, bx2, by2 = (float(v) for v in box)
    size = crop.shape[0]
    sx, sy = (x2 - x1) / FACE * size / (bx2 - bx1), (y2 - y1) / FACE * size / (by2 - by1)
    tx = (x1 - bx1 + 0.5 * (x2 - x1) / FACE) * size / (bx2 - bx1) - 0.5
    ty = (y1 - by1 + 0.5 * (y2 - y1) / FACE) * size / (by2 - by1) - 0.5
    out = crop.copy()
    cv2.warpAffine(face, np.array([[sx, 0, tx], [0, sy, ty]], np.float64), (size, size), dst=out,
                   flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    return out
