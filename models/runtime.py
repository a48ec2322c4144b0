"""Where a Wav2Lip generator runs: torch (CPU or CUDA, fp32/fp16/bf16) or OpenVINO on the CPU.

OpenVINO runs the same network after a one-off conversion: in fp32 it equals torch to ~1e-6 and is ~1.6x faster
on a 2-core Xeon; in int8 (post-training quantisation calibrated on generic face crops and a speech clip, in about
3 s) it is ~1.5x faster than fp32 on a CPU without VNNI and more on CPUs with AVX512-VNNI/AVX-VNNI. An int8 model
is only used after it has been checked against fp32 on crops it was not calibrated on. Converted models are stored
per checkpoint (built in a temp folder, renamed when complete) so the next start skips both.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from core.timebase import MEL_SHAPE

from .openvino_cpu import OpenVinoRunner, OpenVinoStore, openvino_available

log = logging.getLogger("models")
RUNTIMES = ("auto", "torch", "openvino")
Batch = tuple[np.ndarray, np.ndarray]  # model inputs: mel (B,1,80,16) float32, faces (B,6,S,S) float32


@dataclass(frozen=True)
class Int8Check:
    """How far int8 may stray from fp32 on held-out crops, in 8-bit output levels; and below which spread of the
    fp32 output (overall, and with speech alone) the check says nothing."""
    max_mean_error: float = 2.0
    max_p99_error: float = 16.0
    min_spread: float = 4.0
    min_speech_spread: float = 0.5


def pick_runtime(device: torch.device, requested: Optional[str] = None) -> str:
    """'auto': OpenVINO on the CPU when it is installed, torch otherwise (always torch on CUDA)."""
    if requested not in (None, "", "auto"):
        if requested not in RUNTIMES:
            raise ValueError(f"unknown runtime {requested!r}; use {', '.join(RUNTIMES)}")
        if requested == "openvino" and device.type != "cpu":
            raise ValueError("--runtime openvino runs on the CPU; on a GPU use --runtime torch")
        if requested == "openvino" and not openvino_available():
            raise ValueError("--runtime openvino needs the openvino package (pip install -r requirements.txt)")
        return requested
    return "openvino" if device.type == "cpu" and openvino_available() else "torch"


class TorchRunner:
    """The generator in torch on its device and dtype. Float32 numpy arrays in and out, like OpenVinoRunner."""

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool,
                 compile_batches: Sequence[int] = ()):
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(device, dtype, memory_format=self.memory_format)
        self.device, self.dtype = device, dtype
        if compile_batches:  # eager until each batch size's compiled graph is ready (models/compiled.py)
            from .compiled import CompiledSwap
            size = net.spec.size
            self.net = CompiledSwap(self.net, lambda b: (
                torch.zeros(b, 1, *MEL_SHAPE, device=device, dtype=dtype),
                torch.zeros(b, 6, size, size, device=device, dtype=dtype).contiguous(memory_format=self.memory_format)),
                compile_batches, name=net.spec.name)

    @torch.inference_mode()
    def __call__(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        mel_t = torch.from_numpy(mel).to(self.device, self.dtype)
        faces_t = torch.from_numpy(faces).to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        return self.net(mel_t, faces_t).float().cpu().numpy()

    @torch.inference_mode()
    def run_tensors(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Tensors already on the device (any float dtype) in, the model's output tensor out: nothing crosses to
        the host."""
        return self.net(mel.to(self.dtype), faces.to(self.dtype).contiguous(memory_format=self.memory_format))


def weights_digest(net: nn.Module) -> str:
    """Identifies the weights (after any folding), so a stored conversion is never reused for other weights."""
    digest = hashlib.sha1()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def numpy_weights(net: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}


def convert(net: nn.Module):
    """A Wav2Lip generator -> OpenVINO model with a dynamic batch dimension, built from its layer table and weights
    (models/openvino_graph.py; no tracing, no usage report)."""
    from .openvino_graph import generator_graph
    return generator_graph(net.spec, numpy_weights(net))


def quantize_int8(net: nn.Module, calibration: Sequence[Batch], checked: Sequence[Batch] = ()):
    """Post-training int8 (per-tensor activations, per-channel weights) calibrated on real inputs: (an OpenVINO
    model built from the layer table (models/openvino_graph.py), the fp32 outputs of the `checked` batches)."""
    from .openvino_graph import int8_generator_graph
    return int8_generator_graph(net.spec, numpy_weights(net), calibration, checked)


def output_error(reference: Callable, candidate: Callable, batches: Sequence[Batch], windows: int = 1) -> dict:
    """How far `candidate` is from `reference` (mean, p99, max absolute difference) and how much the reference's
    own output varies (`spread`: its standard deviation over all checked pixels; `speech_spread`: the mean
    per-pixel standard deviation over the `windows` consecutive rows that share a face and differ only in speech),
    all in 8-bit levels. An error is only meaningful next to a spread well above it."""
    diffs, outputs = [], []
    for mel, faces in batches:
        expected = reference(mel, faces)
        outputs.append(expected)
        diffs.append(np.abs(expected - candidate(mel, faces)).ravel() * 255)
    diff, out = np.concatenate(diffs), np.concatenate(outputs) * 255
    grouped = out[: len(out) // windows * windows].reshape(-1, windows, *out.shape[1:])
    return {"mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)), "max": float(diff.max()),
            "spread": float(out.std()), "speech_spread": float(grouped.std(axis=1).mean()) if windows > 1 else 0.0}


def build_openvino(net: nn.Module, int8: bool,
                   calibration: Optional[Callable[[], tuple[list[Batch], list[Batch], int]]] = None,
                   store: Optional[OpenVinoStore] = None, check: Int8Check = Int8Check(),
                   progress: Callable[[str], None] = lambda step: None) -> tuple[OpenVinoRunner, str]:
    """An OpenVINO runner for `net` and the precision it really got ('int8', or 'fp32' when int8 failed its check).

    `calibration()` returns (calibration batches, check batches, speech windows per checked face); it is only
    called when no stored int8 model exists for these weights. `progress(step)` is told each step as it starts
    (convert, calibrate, check, save)."""
    name, digest = net.spec.name, weights_digest(net)

    def fp32_model():
        """The converted fp32 model, stored (it is what runs), or the one stored before."""
        key = f"{name}-{digest}-fp32"
        model, _ = store.load(key) if store else (None, None)
        if model is not None:
            log.info("using the stored fp32 conversion %s", store.folder / key)
        else:
            progress("convert")
            log.info("converting %s to OpenVINO (once per checkpoint)…", name)
            model = convert(net)
            if store:
                store.save(key, model, {"precision": "fp32"})
        return model

    if not int8:
        return keyed(OpenVinoRunner(fp32_model()), f"{name}-{digest}-fp32"), "fp32"
    int8_key = f"{name}-{digest}-int8"
    model, info = store.load(int8_key) if store else (None, None)
    runner = None
    if model is not None:
        log.info("using the stored int8 conversion %s", store.folder / int8_key)
    else:
        if calibration is None:
            raise ValueError("int8 needs calibration data")
        started = time.perf_counter()
        calibrate, checked, windows = calibration()
        progress("calibrate")
        log.info("calibrating int8 on %d face crops (once per checkpoint)…",
                 sum(len(m) for m, _ in calibrate))
        model, expected = quantize_int8(net, calibrate, checked)
        progress("check")
        runner = OpenVinoRunner(model)
        fp32_outputs = iter(expected)  # recorded in batch order by the calibration's fp32 pass
        error = output_error(lambda mel, faces: next(fp32_outputs), runner, checked, windows)
        info = {"precision": "int8", "error_levels": error, "calibration_seconds": time.perf_counter() - started}
        if store:
            progress("save")
            store.save(int8_key, model, info)
    error = info["error_levels"]
    if error["mean"] > check.max_mean_error or error["p99"] > check.max_p99_error:
        log.warning("int8 strays too far from fp32 on held-out crops (mean %.2f, p99 %.1f of 255 levels; limits "
                    "%.1f / %.1f): running fp32", error["mean"], error["p99"], check.max_mean_error, check.max_p99_error)
        return keyed(OpenVinoRunner(fp32_model()), f"{name}-{digest}-fp32"), "fp32"
    spread, speech = error.get("spread", 0.0), error.get("speech_spread", 0.0)
    log.info("int8 against fp32 on held-out crops: error mean %.2f, p99 %.1f of 255 levels; fp32 output spread "
             "%.1f levels, of which speech moves %.1f", error["mean"], error["p99"], spread, speech)
    if spread < check.min_spread or speech < check.min_speech_spread:
        log.warning("the int8 check cannot tell anything here: the fp32 output hardly varies (spread %.1f levels, "
                    "speech %.2f) — random or untrained weights? int8 is used, its error being within bounds",
                    spread, speech)
    return keyed(runner or OpenVinoRunner(model), int8_key), "int8"


def keyed(runner: OpenVinoRunner, key: str) -> OpenVinoRunner:
    """The runner, remembering which stored conversion it runs (models/stored.py indexes checkpoints by it)."""
    runner.key = key
    return runner
