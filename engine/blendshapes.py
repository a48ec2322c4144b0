"""ARKit-52 mouth and jaw weights for every frame the engine presents, for 3D avatars (VTube Studio, Unreal Live
Link, Unity): the WebSocket `blendshapes` event, `--blendshapes_csv`, `--blendshapes_only`.

The weights are measured on landmarks of the mouth the viewer sees (models/mouthwarp/blendshapes.py), against the
presenter's resting mouth in the cache:
- a frame the mouth animator drives: the animator's own shape for that frame (its landmarks, drawn or taken from
  the presenter's recorded mouths), through a twin of its smoothing fed the same frames in the same order, so the
  weights follow the pixels without drawing them twice;
- any other frame (silence, no face, skipped to stay on time): the cached frame's own landmarks, as shown.
With a Wav2Lip checkpoint the driven frames get the animator's shape for the same audio: Wav2Lip's pixels are not
measured (a face mesh on its output would cost a detector run per frame).
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np

from models.mouthwarp.animator import MouthAnimator, MouthSmoother, audio_features
from models.mouthwarp.blendshapes import mouth_weights, rest_mouth
from models.mouthwarp.library import every_frames_landmarks, library_for


class BlendshapeMeter:
    """Owned by one engine's model stage (it keeps the smoothing state of that stream)."""

    def __init__(self, presenter, animator: Optional[MouthAnimator] = None):
        if animator is None:
            animator = MouthAnimator(presenter.face_size, library=library_for(presenter))
        self.presenter = presenter
        self.shaper = MouthAnimator(animator.size, animator.attack, animator.release,
                                    library=copy.copy(animator.library))  # its own choice among recorded mouths
        if self.shaper.library is not None:
            self.shaper.library.reset()
        self._smooth = MouthSmoother(animator.attack, animator.release)
        self.rest = rest_mouth(every_frames_landmarks(presenter))

    def driven(self, window: np.ndarray, index: int) -> dict[str, float]:
        """A frame the lip model drove, from its (80, 16) mel window; call in frame order."""
        opening, rounding = self._smooth(*audio_features(window))
        points = self.presenter.crop_landmarks(index)
        return mouth_weights(self.shaper.shape(points, opening, rounding), self.rest)

    def still(self, index: int) -> dict[str, float]:
        """A frame shown as cached."""
        if not self.presenter.has_face[index]:
            return mouth_weights(np.full_like(self.rest, np.nan), self.rest)
        return mouth_weights(self.presenter.crop_landmarks(index), self.rest)
