"""ARKit-52 mouth and jaw weights for every frame the engine presents, for 3D avatars (VTube Studio, Unreal Live
Link, Unity): the WebSocket `blendshapes` event, `--blendshapes_csv`, `--blendshapes_only`.

The weights are measured on landmarks of the mouth the viewer sees (models/mouthwarp/blendshapes.py), against the
presenter's resting mouth in the cache. A frame the lip model drove is measured one of two ways:
- `pixels`: the face mesh read on the generated crop itself (preprocess.detect.CropMesh), as shown. The way for
  Wav2Lip, whose mouth nothing else knows; it costs a mesh run per frame (bench/blendshapes.py).
- `animator`: the mouth animator's own shape for that frame (its landmarks, drawn or taken from the presenter's
  recorded mouths), through a twin of its smoothing fed the same frames in the same order. Exactly the landmarks
  the animator warps its pixels to, at a fraction of the cost, and the only way with no pixels
  (`--blendshapes_only`).
Any other frame (silence, no face, skipped to stay on time) is measured on the cached frame: its cached landmarks,
or, reading pixels, the mesh on its cached crop.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import numpy as np

from models.mouthwarp.animator import MouthAnimator, MouthSmoother, audio_features
from models.mouthwarp.blendshapes import mouth_weights, rest_mouth
from models.mouthwarp.library import every_frames_landmarks, library_for


class BlendshapeMeter:
    """Owned by one engine's model stage (it keeps the smoothing or tracking state of that stream).

    `read_pixels`: landmarks of a face crop (a CropMesh), or None for the animator's shape. Reading pixels, every
    landmark comes from that one reader: the generated crops, the cached crops of frames shown as they are (each
    read once), and the resting mouth (read on REST_CROPS cached crops), so no offset between two detectors shows
    as a jump when speech starts or stops, and a cache made by another detector (sfd's 68 points) works too."""
    REST_CROPS = 25

    def __init__(self, presenter, animator: Optional[MouthAnimator] = None,
                 read_pixels: Optional[Callable[[np.ndarray], Optional[np.ndarray]]] = None):
        self.presenter = presenter
        self.read_pixels = read_pixels
        self.unread = 0  # crops where the mesh found no face (weighed as no face)
        if read_pixels is not None:
            self._cached: dict[int, Optional[np.ndarray]] = {}
            faces = np.flatnonzero(presenter.has_face)
            picks = faces[np.linspace(0, len(faces) - 1, min(self.REST_CROPS, len(faces))).round().astype(int)]
            read = [self._cached_points(int(i)) for i in picks]
            self.rest = rest_mouth(np.stack([r for r in read if r is not None] or [np.full((478, 2), np.nan)]))
            return
        self.rest = rest_mouth(every_frames_landmarks(presenter))
        if animator is None:
            animator = MouthAnimator(presenter.face_size, library=library_for(presenter))
        self.shaper = MouthAnimator(animator.size, animator.attack, animator.release,
                                    library=copy.copy(animator.library))  # its own choice among recorded mouths
        if self.shaper.library is not None:
            self.shaper.library.reset()
        self._smooth = MouthSmoother(animator.attack, animator.release)

    def driven(self, window: np.ndarray, index: int, face=None) -> dict[str, float]:
        """A frame the lip model drove, from its (80, 16) mel window and its generated crop `face` ((S, S, 3) uint8
        BGR, numpy or a device tensor; read only when measuring pixels); call in frame order."""
        if self.read_pixels is not None:
            return self._weigh(self._read(face if isinstance(face, np.ndarray) else face.cpu().numpy()))
        opening, rounding = self._smooth(*audio_features(window))
        points = self.presenter.crop_landmarks(index)
        return mouth_weights(self.shaper.shape(points, opening, rounding), self.rest)

    def still(self, index: int) -> dict[str, float]:
        """A frame shown as cached."""
        if not self.presenter.has_face[index]:
            return self._weigh(None)
        if self.read_pixels is not None:
            return self._weigh(self._cached_points(index))
        return mouth_weights(self.presenter.crop_landmarks(index), self.rest)

    def close(self) -> None:
        """Free the reader (mediapipe's graph), if it has one."""
        getattr(self.read_pixels, "close", lambda: None)()

    def _read(self, crop: np.ndarray) -> Optional[np.ndarray]:
        points = self.read_pixels(crop)
        self.unread += points is None
        return points

    def _cached_points(self, index: int) -> Optional[np.ndarray]:
        if index not in self._cached:
            self._cached[index] = self._read(self.presenter.face(index))
        return self._cached[index]

    def _weigh(self, points: Optional[np.ndarray]) -> dict[str, float]:
        return mouth_weights(np.full_like(self.rest, np.nan) if points is None else points, self.rest)
