"""Load a released GFPGAN file and restore cached 512x512 upright heads (no detection, no alignment, no download)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..loader import CheckpointError, describe_difference, read_checkpoint, shapes_of, what_is_it
from ..predictor import pick_device
from .arch import build_gfpgan, gfpgan_signature

log = logging.getLogger("models")

WHERE_FROM = "GFPGANv1.3.pth or GFPGANv1.4.pth, from the GFPGAN project's releases"
HEAD_SIZE = 512


def load_gfpgan(path: Union[str, Path], trust_pickle: bool = False) -> torch.nn.Module:
    """GFPGANv1Clean from a released file ({'params_ema': ...}, else 'params'), on the CPU in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file ({WHERE_FROM})")
    state, extra = read_checkpoint(path, trust_pickle)
    shapes = shapes_of(state)
    if shapes != gfpgan_signature():
        found = what_is_it(state, extra.get("_container", ""))
        if found is not None and found[0] != "gfpgan":
            raise CheckpointError(f"{path}: this is {found[1]}; expected a GFPGAN checkpoint ({WHERE_FROM})")
        raise CheckpointError(f"{path}: not a GFPGAN v1.3/v1.4 (GFPGANv1Clean, 512 px) checkpoint: "
                              f"{describe_difference(shapes, gfpgan_signature())}")
    model = build_gfpgan()
    model.load_state_dict(state, strict=True)
    log.info("loaded %s: GFPGANv1Clean 512 (%d tensors, %.1f M parameters)", path.name, len(state),
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model.eval()


class GfpganEnhancer:
    """Restores upright 512x512 heads in batches. Uses the checkpoint's fixed noise maps, so the same head gives
    the same result on every frame (upstream draws fresh noise per call, which flickers in video)."""

    def __init__(self, model: torch.nn.Module, device: Union[str, torch.device, None] = None,
                 dtype: torch.dtype = torch.float32, batch_size: int = 4):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.net = model.eval().to(self.device, dtype)
        self.realtime = self.device.type == "cuda"
        if not self.realtime:
            log.warning("GFPGAN runs on the CPU at about 4 s per head here: fine for a file render, far too slow for "
                        "live output. Live enhancement needs a CUDA GPU.")

    def enhance(self, heads_bgr: np.ndarray) -> np.ndarray:
        """(B,512,512,3) uint8 BGR -> restored heads, same shape and colour order."""
        if heads_bgr.ndim != 4 or heads_bgr.shape[1:] != (HEAD_SIZE, HEAD_SIZE, 3):
            raise ValueError(f"heads must be (B,{HEAD_SIZE},{HEAD_SIZE},3) uint8; got {heads_bgr.shape}")
        return np.concatenate([self._enhance_batch(heads_bgr[i:i + self.batch_size])
                               for i in range(0, len(heads_bgr), self.batch_size)])

    @torch.inference_mode()
    def _enhance_batch(self, heads: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(heads[..., ::-1])).to(self.device)  # RGB, as GFPGAN was trained
        x = x.permute(0, 3, 1, 2).contiguous().to(self.dtype) / 127.5 - 1
        y = self.net(x, return_rgb=False, randomize_noise=False)[0].float().clamp_(-1, 1)
        y = ((y + 1) * 127.5).round_().permute(0, 2, 3, 1)
        return y.to(torch.uint8).cpu().numpy()[..., ::-1].copy()
