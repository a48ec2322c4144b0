"""IP_LAP's choice of reference frames and one frame's generation around the two networks (read in the
reference's inference_single.py); the mesh geometry they use is mesh.py.

- References: the frames sorted by lip openness (the distance between mesh points 0 and 17 in the frame's
  normalised coordinates), Nl = 15 and N = 25 of them taken at torch.linspace positions of that order.
- Each frame is generated from a window of T = 5 frames centred on it. Frame k of the window hears the mel window
  of frame k - 2 (clamped at 0): the reference's `mel_chunks[max(0, k - 2)]`, so frame f hears frames f - 4 .. f.
  The renderer redraws the middle frame from its upper half, the five sketches, the references and the middle
  frame's mel; the face comes back as (x * 255) cast to uint8, resized to the crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .arch import LandmarkGenerator, Renderer
from .mesh import FACE, T_FRAMES, draw_sketch

REFERENCE_LANDMARKS = 15   # Nl
REFERENCE_FACES = 25       # N


def spread_by_openness(openness: Sequence[float], count: int) -> list[int]:
    """Positions of `count` frames spread from the most closed mouth to the most open: the order sorted by openness
    (stable), sampled at torch.linspace(0, n - 1, count) truncated to int, as the reference picks."""
    order = sorted(range(len(openness)), key=lambda i: openness[i])
    return [order[int(i)] for i in torch.linspace(0, len(openness) - 1, steps=count)]


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


def pick_references(frames: Sequence[FrameLandmarks], face_of: Callable[[int], np.ndarray], device: torch.device,
                    landmark_count: int = REFERENCE_LANDMARKS, face_count: int = REFERENCE_FACES) -> References:
    """The reference frames: landmarks of `landmark_count` and faces with sketches of `face_count`, spread over the
    range of lip openness. face_of(i): frame i's 128 x 128 BGR uint8 crop, read for the picked frames only."""
    openness = [f.openness for f in frames]
    landmark_picks = spread_by_openness(openness, landmark_count)
    face_picks = spread_by_openness(openness, face_count)
    sketches = np.stack([draw_sketch(frames[i].pose, frames[i].content, *frames[i].crop_size) for i in face_picks])
    return References(
        faces=face_tensor(np.stack([face_of(i) for i in face_picks]), device)[None],
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
