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
Any other frame (silence, no face, skipped to stay on time) is measured on the cached frame's own landmarks.
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

    `read_pixels`: landmarks of a generated crop (a CropMesh), or None for the animator's shape."""

    def __init__(self, presenter, animator: Optional[MouthAnimator] = None,
                 read_pixels: Optional[Callable[[np.ndarray], Optional[np.ndarray]]] = None):
        self.presenter = presenter
        self.read_pixels = read_pixels
        self.unread = 0  # generated crops where the mesh found no face (weighed as no face)
        self.rest = rest_mouth(every_frames_landmarks(presenter))
        if read_pixels is not None:
            return
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
            points = self.read_pixels(face if isinstance(face, np.ndarray) else face.cpu().numpy())
            if points is None:
                self.unread += 1
                points = np.full_like(self.rest, np.nan)
            return mouth_weights(points, self.rest)
        opening, rounding = self._smooth(*audio_features(window))
        points = self.presenter.crop_landmarks(index)
        return mouth_weights(self.shaper.shape(points, opening, rounding), self.rest)

    def still(self, index: int) -> dict[str, float]:
        """A frame shown as cached."""
        if not self.presenter.has_face[index]:
            return mouth_weights(np.full_like(self.rest, np.nan), self.rest)
        return mouth_weights(self.presenter.crop_landmarks(index), self.rest)
