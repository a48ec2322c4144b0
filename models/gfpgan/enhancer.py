"""Load a released GFPGAN file and restore cached 512x512 upright heads (no detection, no alignment, no download)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..graphed import GraphedStep
from ..predictor import pick_device
from ..registry import GFPGAN, Family, describe_difference, load, shapes_of, what_is_it

log = logging.getLogger("models")

WHERE_FROM = "GFPGANv1.3.pth or GFPGANv1.4.pth, from the GFPGAN project's releases"
HEAD_SIZE = 512


def what_gfpgan_is_not(state: dict, container: str) -> str:
    """What a state dict that is not GFPGANv1Clean 512 is, as far as its keys tell."""
    found = what_is_it(state, container)
    if found is not None and found[0] != "gfpgan":
        return f"this is {found[1]}; expected a GFPGAN checkpoint ({WHERE_FROM})"
    return (f"not a GFPGAN v1.3/v1.4 (GFPGANv1Clean, 512 px) checkpoint: "
            f"{describe_difference(shapes_of(state), GFPGAN.signature)}")


FAMILY = Family((GFPGAN,), WHERE_FROM, what_gfpgan_is_not, where_always=False)


def load_gfpgan(path: Union[str, Path], trust_pickle: bool = False) -> torch.nn.Module:
    """GFPGANv1Clean from a released file ({'params_ema': ...}, else 'params'), on the CPU in eval mode."""
    return load(path, FAMILY, trust_pickle).model


def gfpgan_dtype(device: torch.device, requested: Union[str, torch.dtype, None]) -> torch.dtype:
    """'auto'/None: fp16 on CUDA (measured on an H100 against CPU fp32 on the same weights: mean 0.06, max 1 level
    of 255, issue 17), fp32 on the CPU; or fp32 / fp16 / bf16 as asked."""
    if isinstance(requested, torch.dtype):
        return requested
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if requested in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested not in names:
        raise ValueError(f"--gfpgan_dtype {requested!r}: auto, fp32, fp16 or bf16")
    if names[requested] == torch.float16 and device.type == "cpu":
        raise ValueError("--gfpgan_dtype fp16 is a GPU format; on the CPU use fp32 or bf16")
    return names[requested]


class GfpganEnhancer:
    """Restores upright 512x512 heads in batches. Uses the checkpoint's fixed noise maps, so the same head gives
    the same result on every frame (upstream draws fresh noise per call, which flickers in video)."""

    def __init__(self, model: torch.nn.Module, device: Union[str, torch.device, None] = None,
                 dtype: Union[str, torch.dtype, None] = None, batch_size: int = 4, compile_batches: tuple = (),
                 graph_batches: tuple = ()):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = gfpgan_dtype(self.device, dtype)
        self.batch_size = batch_size
        self.net = model.eval().to(self.device, self.dtype)
        if compile_batches:  # eager until each batch size's compiled graph is ready (models/compiled.py)
            from ..compiled import CompiledSwap
            self.net = CompiledSwap(self.net, lambda b: (torch.zeros(b, 3, HEAD_SIZE, HEAD_SIZE, device=self.device,
                                                                     dtype=self.dtype),),
                                    compile_batches, name="GFPGAN",
                                    call_kwargs={"return_rgb": False, "randomize_noise": False})
        self.step = GraphedStep(self._step, lambda b: (torch.zeros(b, HEAD_SIZE, HEAD_SIZE, 3, dtype=torch.uint8,
                                                                   device=self.device),),
                                graph_batches, self.device, "GFPGAN") if graph_batches else self._step
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

    def _enhance_batch(self, heads: np.ndarray) -> np.ndarray:
        return self.enhance_tensors(torch.from_numpy(np.ascontiguousarray(heads)).to(self.device)).cpu().numpy()

    @torch.inference_mode()
    def enhance_tensors(self, heads: torch.Tensor) -> torch.Tensor:
        """(B,512,512,3) uint8 BGR tensor on the enhancer's device -> restored heads there, nothing through the
        host."""
        return torch.cat([self.step(heads[i:i + self.batch_size]) for i in range(0, len(heads), self.batch_size)])

    def _step(self, heads: torch.Tensor) -> torch.Tensor:
        """GFPGANer's pre- and post-processing (RGB, [-1,1], clamp, rounding) on the device around the network: uint8
        heads in and out (what a CUDA graph holds)."""
        x = heads.flip(-1).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1  # RGB
        y = self.net(x.contiguous(), return_rgb=False, randomize_noise=False)[0].float().clamp_(-1, 1)
        return ((y + 1) * 127.5).round_().permute(0, 2, 3, 1).to(torch.uint8).flip(-1)
