"""The lip-model contract: what the engine's model stage may know of a lip model, declared by every model it runs
(Wav2Lip's predictors, the mouth animator, IP_LAP's engine adapter, a server's shared model), so the loop reads
fields instead of probing attributes. No torch here: a stored OpenVINO model and the animator run without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol, Union, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HostDevice:
    """The `device` of a model that never loads torch: it runs on the host CPU."""
    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


@runtime_checkable
class LipModel(Protocol):
    """Face crops with new mouths from mel windows, in batches. Every field is declared by the model:

    - name: what it is ("wav2lip96", "mouthwarp", "iplap", ...);
    - size: the side of the square face crops it takes and gives, in pixels;
    - window_frames: mel windows per frame, 1, or IP_LAP's 5: each frame's window with the four before it, and the
      cache frames shown around it (`frames`);
    - batch_size: frames per network call (predict splits a longer batch); None when one call takes any batch;
    - device: where it runs, a torch.device, or HostDevice for a model that never loads torch;
    - runtime: "torch", "openvino" or "numpy" (the animator: numpy and OpenCV on the host);
    - device_tensors: predict also takes the crops as uint8 tensors on `device` and gives tensors there (the
      device pipeline);
    - scheduled: True only for a model shared between sessions, which batches every session's frames by `due`.
    """
    name: str
    size: int
    window_frames: int
    batch_size: Optional[int]
    device: Union["torch.device", HostDevice]
    runtime: str
    device_tensors: bool
    scheduled: bool

    def predict(self, mel_windows: np.ndarray, faces, landmarks: Optional[np.ndarray] = None,
                frames: Optional[np.ndarray] = None, due: float = float("inf")):
        """mel_windows (B, 80, 16), or (B, window_frames, 80, 16); faces (B, S, S, 3) uint8 BGR; landmarks (B, K, 2)
        in crop pixels; frames (B, window_frames): the cache frames of each window, given when window_frames > 1;
        due: the monotonic time the first frame is shown -> new crops (B, S, S, 3) uint8 BGR, or None from a
        scheduled model whose frames could not make `due`."""
