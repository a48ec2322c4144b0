"""The presenter's images decoded once into tensors, for the device pipeline.

On a GPU host the per-frame JPEG decodes of the cache (a few ms each, on host threads) are what starves the card,
so the device pipeline decodes every background, face crop and (with enhancement) upright head once at load, as
uint8, into GPU memory. Where that would not fit (a setting, and a check against the free memory), the images go
into pinned host memory instead and each one is uploaded asynchronously when used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .presenter import Presenter

log = logging.getLogger("engine.render.resident")


def resident_bytes(presenter: Presenter, with_heads: bool) -> int:
    """What the decoded images take: every background, a face crop per frame, and a head per frame if asked."""
    per_frame = presenter.width * presenter.height * 3 + presenter.face_size ** 2 * 3
    per_frame += presenter.head_size ** 2 * 3 if with_heads else 0
    return per_frame * presenter.frames


@dataclass
class ResidentFrames:
    """(N,H,W,3) backgrounds, (N,S,S,3) face crops and optionally (N,512,512,3) heads, uint8 BGR, in `storage`
    (the device itself, or pinned host memory); frames without a face have zero crops and heads."""
    backgrounds: torch.Tensor
    faces: torch.Tensor
    heads: Optional[torch.Tensor]
    device: torch.device

    def _there(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True) if images.device != self.device else images

    def background(self, index: int) -> torch.Tensor:
        return self._there(self.backgrounds[index])

    def face_batch(self, indices: list[int]) -> torch.Tensor:
        return self._there(self.faces[indices])

    def head(self, index: int) -> torch.Tensor:
        return self._there(self.heads[index])


def load_resident(presenter: Presenter, device: torch.device, with_heads: bool,
                  max_gib: float = 24.0) -> ResidentFrames:
    """Decode the presenter's images into `device` memory, or pinned host memory when they would not fit: more
    than `max_gib`, or more than 80% of the GPU memory free now."""
    need = resident_bytes(presenter, with_heads)
    storage = device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > max_gib * 2 ** 30 or need > 0.8 * free:
            storage = torch.device("cpu")
            log.info("presenter images: %.1f GiB would not fit on %s (limit %.0f GiB, %.1f GiB free); pinned host "
                     "memory with asynchronous uploads instead", need / 2 ** 30, device, max_gib, free / 2 ** 30)
    pin = storage.type == "cpu" and device.type == "cuda"

    def stack(shape: tuple[int, ...], decode) -> torch.Tensor:
        images = torch.zeros((presenter.frames, *shape), dtype=torch.uint8, pin_memory=pin)
        for i in range(presenter.frames):
            image = decode(i)
            if image is not None:
                images[i] = torch.from_numpy(image)
        return images.to(storage)

    faces = set(np.flatnonzero(presenter.has_face).tolist())
    size = presenter.face_size
    frames = ResidentFrames(
        stack((presenter.height, presenter.width, 3), presenter.background),
        stack((size, size, 3), lambda i: presenter.face(i) if i in faces else None),
        stack((presenter.head_size, presenter.head_size, 3), lambda i: presenter.head(i) if i in faces else None)
        if with_heads else None,
        device)
    log.info("presenter images decoded once into %s: %.2f GiB for %d frames", "pinned host memory" if pin else storage,
             need / 2 ** 30, presenter.frames)
    return frames
