"""Run a Wav2Lip generator on cached face crops: reference pre/post-processing, fast inference plumbing.

predict(mel_windows, faces) does what the reference inference.py does per batch (lower half of the target zeroed,
the unmasked crop as reference in channels 3-5, BGR, /255, model(mel, x), *255, uint8 truncation) on an inference
copy of the model with BatchNorm folded into the convolutions, in channels-last layout, on the chosen device and dtype.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .blocks import ConvBN, Wav2Lip

log = logging.getLogger("models")


def pick_device(requested: Optional[str] = None) -> torch.device:
    """'auto'/None: CUDA when present, else CPU. An explicit 'cuda' without a GPU is an error, not a silent fallback."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but this torch build sees no CUDA GPU; use --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(device: torch.device, requested: Optional[str] = None) -> torch.dtype:
    """'auto': fp16 on CUDA, bf16 on CPUs that have it natively, else fp32."""
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if requested not in (None, "", "auto"):
        if requested not in names:
            raise ValueError(f"unknown dtype {requested!r}; use auto, fp32, fp16 or bf16")
        dtype = names[requested]
        if dtype == torch.float16 and device.type == "cpu":
            raise ValueError("fp16 is a GPU format here; on the CPU use fp32 or bf16")
        return dtype
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each wrapper's eval-mode BatchNorm into its (transposed) convolution, in place; returns the model.

    y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is again a convolution with per-output-channel scaled
    weights and a shifted bias, so inference skips one pass over every feature map.
    """
    for module in model.modules():
        if not isinstance(module, ConvBN) or isinstance(module.conv_block[1], nn.Identity):
            continue
        conv, bn = module.conv_block[0], module.conv_block[1]
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)  # out channels: dim 1 / dim 0
        with torch.no_grad():
            conv.weight.mul_(scale.reshape(shape))
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
        module.conv_block[1] = nn.Identity()
    return model


class LipSyncPredictor:
    """Turns (mel windows, cached face crops) into new mouths, in batches, on the best device available."""

    def __init__(self, model: Wav2Lip, device: Union[str, torch.device, None] = None,
                 dtype: Union[str, torch.dtype, None] = None, batch_size: int = 16, fold_bn: bool = True,
                 channels_last: bool = True):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(self.device, dtype)
        self.size = model.spec.size
        self.tanh_head = model.spec.head == "tanh"
        self.batch_size = batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net = copy.deepcopy(model).eval()
        if fold_bn:
            fold_batchnorm(net)
        self.net = net.to(self.device, self.dtype, memory_format=self.memory_format)
        log.info("predictor: %s on %s, %s%s%s", model.spec.name, self.device, str(self.dtype).replace("torch.", ""),
                 ", BatchNorm folded" if fold_bn else "", ", channels-last" if channels_last else "")

    def warm_up(self, batch: int = 1) -> None:
        """One dummy batch, so the first real frame does not pay for lazy initialisation (or cuDNN autotuning)."""
        self.predict(np.zeros((batch, 80, 16), np.float32), np.zeros((batch, self.size, self.size, 3), np.uint8))

    def predict(self, mel_windows: np.ndarray, faces_bgr: np.ndarray, landmarks: Optional[np.ndarray] = None
                ) -> np.ndarray:
        """mel_windows (B,80,16) float; faces_bgr (B,S,S,3) uint8 -> generated faces (B,S,S,3) uint8, BGR.

        `landmarks` is accepted for the engine's common interface and not needed: Wav2Lip sees only pixels."""
        if faces_bgr.ndim != 4 or faces_bgr.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"faces must be (B,{self.size},{self.size},3) for this {self.size}px model; got "
                             f"{faces_bgr.shape} (preprocess the video with --face_size {self.size})")
        if mel_windows.shape[1:] != (80, 16) or len(mel_windows) != len(faces_bgr):
            raise ValueError(f"mel windows must be (B,80,16) with one per face; got {mel_windows.shape}")
        out = [self._predict_batch(mel_windows[i:i + self.batch_size], faces_bgr[i:i + self.batch_size])
               for i in range(0, len(faces_bgr), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.size, self.size, 3), np.uint8)

    @torch.inference_mode()
    def _predict_batch(self, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
        ref = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device)
        ref = ref.permute(0, 3, 1, 2).to(self.dtype).div_(255.0)  # B,3,S,S BGR in [0,1]
        target = ref.clone()
        target[:, :, self.size // 2:] = 0  # the mouth half is what the model must fill in
        x = torch.cat([target, ref], dim=1).contiguous(memory_format=self.memory_format)
        mel = torch.from_numpy(np.ascontiguousarray(mels, np.float32)).to(self.device, self.dtype).unsqueeze(1)
        y = self.net(mel, x).float()
        if self.tanh_head:
            y = (y + 1) / 2
        y = (y.clamp_(0, 1) * 255).permute(0, 2, 3, 1)
        return y.to(torch.uint8).cpu().numpy()  # truncation, as the reference's astype(np.uint8)
