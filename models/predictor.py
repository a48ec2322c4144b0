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

from core.errors import UserError
from core.timebase import MEL_SHAPE

from .blocks import ConvBN, Wav2Lip
from .graphed import GraphedStep
from .openvino_cpu import OpenVinoStore, cpu_has_native_bf16, int8_by_default
from .runtime import TorchRunner, build_openvino, pick_runtime
from .stored import HostPredictor

log = logging.getLogger("models")


class DeviceError(UserError):
    """A --device that this machine does not have."""


def pick_device(requested: Optional[str] = None) -> torch.device:
    """'auto'/None: CUDA when present, else CPU. An explicit 'cuda' without a GPU is an error, not a silent fallback."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DeviceError(f"--device {requested!r}: not a device name (auto, cpu, cuda, cuda:1 …)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {requested} was asked for, but this torch build sees no CUDA GPU; use "
                          f"--device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {requested}: only cpu and cuda are supported")
    return device


def pick_dtype(device: torch.device, requested: Optional[str] = None, runtime: str = "torch") -> Union[torch.dtype, str]:
    """'auto': fp16 on CUDA; on an x86 CPU int8 under OpenVINO (1.5-2x fp32 without VNNI, more with it; its
    calibration costs about 3 s once per checkpoint), else bf16 where the CPU has it natively, else fp32. 'int8' is
    returned as the string, since only OpenVINO runs it."""
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "int8": "int8"}
    if requested not in (None, "", "auto"):
        if requested not in names:
            raise ValueError(f"unknown dtype {requested!r}; use auto, fp32, fp16, bf16 or int8")
        dtype = names[requested]
        if dtype == torch.float16 and device.type == "cpu":
            raise ValueError("fp16 is a GPU format here; on the CPU use fp32, bf16 or int8")
        if dtype == "int8" and runtime != "openvino":
            raise ValueError("int8 runs under OpenVINO on the CPU (--runtime openvino)")
        if dtype == torch.bfloat16 and runtime == "openvino":
            raise ValueError("bf16 runs under torch (--runtime torch); OpenVINO here runs fp32 or int8")
        return dtype
    if device.type == "cuda":
        return torch.float16
    if runtime == "openvino":
        return "int8" if int8_by_default() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each wrapper's eval-mode BatchNorm into its (transposed) convolution, in place; returns the model.

    y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is again a convolution with per-output-channel scaled
    weights and a shifted bias, so inference skips one pass over every feature map.
    """
    for module in model.modules():
        if not isinstance(module, ConvBN) or len(module.conv_block) < 2 or isinstance(module.conv_block[1], nn.Identity):
            continue
        conv, bn = module.conv_block[0], module.conv_block[1]
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)  # out channels: dim 1 / dim 0
        with torch.no_grad():
            conv.weight.mul_(scale.reshape(shape))
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
        module.conv_block[1] = nn.Identity()
    return model


class LipSyncPredictor(HostPredictor):
    """Turns (mel windows, cached face crops) into new mouths, in batches, on the best device and runtime available.

    int8 calibrates on generic face crops (models/calibration.py), or on `calibration_faces` (N,S,S,3) uint8 when
    given; `store_dir` keeps converted OpenVINO models between runs (one conversion per checkpoint);
    `compile_batches` (torch runtime) compiles the model for those batch sizes in the background while it runs
    eagerly (models/compiled.py); `graph_batches` (torch on CUDA) captures the device pipeline's whole step as
    CUDA graphs for those batch sizes (models/graphed.py)."""

    def __init__(self, model: Wav2Lip, device: Union[str, torch.device, None] = None,
                 dtype: Union[str, torch.dtype, None] = None, batch_size: int = 16, fold_bn: bool = True,
                 channels_last: bool = True, runtime: Optional[str] = None,
                 calibration_faces: Optional[np.ndarray] = None, store_dir: Union[str, Path, None] = None,
                 compile_batches: tuple[int, ...] = (), graph_batches: tuple[int, ...] = (),
                 progress=lambda step: None, own_model: bool = False):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.runtime = pick_runtime(self.device, runtime)
        self.device_tensors = self.runtime == "torch"
        precision = dtype if isinstance(dtype, torch.dtype) else pick_dtype(self.device, dtype, self.runtime)
        self.name, self.size = model.spec.name, model.spec.size
        self.tanh_head = model.spec.head == "tanh"
        self.batch_size = batch_size
        net = (model if own_model else copy.deepcopy(model)).eval()  # own_model: the caller drops it (one copy less)
        if fold_bn:
            fold_batchnorm(net)
        if self.runtime == "openvino":
            self.runner, self.precision = build_openvino(
                net, precision == "int8",
                lambda: self.calibration_batches(calibration_faces),
                OpenVinoStore(Path(store_dir)) if store_dir else None, progress=progress)
        else:
            self.runner = TorchRunner(net, self.device, precision, channels_last, compile_batches)
            self.precision = precision
        self.device_step = GraphedStep(self._device_step, lambda b: (
            torch.zeros(b, *MEL_SHAPE, device=self.device), torch.zeros(b, self.size, self.size, 3, dtype=torch.uint8,
                                                                        device=self.device)),
            graph_batches, self.device, self.name) if graph_batches and self.runtime == "torch" else self._device_step
        log.info("predictor: %s on %s via %s, %s%s%s", model.spec.name, self.device, self.runtime,
                 str(self.precision).replace("torch.", ""), ", BatchNorm folded" if fold_bn else "",
                 ", channels-last" if channels_last and self.runtime == "torch" else "")

    def calibration_batches(self, faces: Optional[np.ndarray] = None, held_out: int = 8, windows: int = 4):
        """Model inputs for int8: (calibration batches, check batches, speech windows per checked face).

        The faces are generic ones (models/calibration.py) unless given. Calibration pairs each face with a speech
        window of the bundled clip; the last `held_out` faces are kept apart, and each is checked with `windows`
        different spoken windows, so the check can see whether the output moves with speech at all."""
        from .calibration import generic_faces, loudest_windows, speech_windows
        faces = generic_faces(self.size) if faces is None else faces
        split = len(faces) - max(1, min(held_out, len(faces) // 4))
        mels = speech_windows()
        mels = mels[np.arange(split) % len(mels)]
        calibrate = [self._inputs(mels[i:i + 8], faces[i:min(i + 8, split)]) for i in range(0, split, 8)]
        spoken = loudest_windows(windows)
        checked = np.repeat(faces[split:], windows, axis=0)  # face-major: each face with every window in a row
        check_mels = np.tile(spoken, (len(faces) - split, 1, 1))
        check = [self._inputs(check_mels[i:i + 8], checked[i:i + 8]) for i in range(0, len(checked), 8)]
        return calibrate, check, windows

    def predict(self, mel_windows: np.ndarray, faces_bgr, landmarks: Optional[np.ndarray] = None,
                frames: Optional[np.ndarray] = None, due: float = float("inf")):
        """mel_windows (B,80,16) float; faces_bgr (B,S,S,3) uint8 -> generated faces (B,S,S,3) uint8, BGR.

        Faces as a numpy array give a numpy array (HostPredictor). Faces as a uint8 tensor on the predictor's device
        (the device pipeline, torch runtime: `device_tensors`) give a tensor there: pre- and post-processing run on
        the device too, and only the mel windows cross from the host."""
        if isinstance(faces_bgr, torch.Tensor):
            return self._predict_tensors(mel_windows, faces_bgr)
        return super().predict(mel_windows, faces_bgr, landmarks)

    @torch.inference_mode()
    def _predict_tensors(self, mel_windows: np.ndarray, faces: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.runner, TorchRunner):
            raise ValueError("device tensors need the torch runtime (--runtime torch)")
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (self.size, self.size, 3):
            raise ValueError(f"faces must be (B,{self.size},{self.size},3); got {tuple(faces.shape)}")
        outputs = []
        for i in range(0, len(faces), self.batch_size):
            mel = torch.from_numpy(np.ascontiguousarray(mel_windows[i:i + self.batch_size], np.float32))
            outputs.append(self.device_step(mel.to(faces.device, non_blocking=True), faces[i:i + self.batch_size]))
        return torch.cat(outputs) if outputs else faces.new_zeros((0, self.size, self.size, 3))

    def _device_step(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """The reference pre/post-processing of _inputs and _predict_batch on the device around the model: mel
        windows (B,80,16) float and crops (B,S,S,3) uint8 in, generated crops uint8 out (what a CUDA graph holds)."""
        ref = faces.permute(0, 3, 1, 2).float().div_(255)  # B,3,S,S BGR in [0,1]
        target = ref.clone()
        target[:, :, self.size // 2:] = 0
        y = self.runner.run_tensors(mel[:, None], torch.cat([target, ref], dim=1)).float()
        if self.tanh_head:
            y = (y + 1) / 2
        return y.clamp_(0, 1).mul_(255).to(torch.uint8).permute(0, 2, 3, 1)  # truncation, as numpy
