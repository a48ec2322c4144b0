"""Where a Wav2Lip generator runs: torch (CPU or CUDA, fp32/fp16/bf16) or OpenVINO on the CPU.

OpenVINO runs the same network after a one-off conversion: in fp32 it equals torch to ~1e-6 and is ~1.6x faster
on a 2-core Xeon; in int8 (post-training quantisation calibrated on the presenter's own face crops and a speech
clip) it is ~3.5x faster on CPUs with AVX512-VNNI/AVX-VNNI. An int8 model is only used after it has been checked
against fp32 on crops it was not calibrated on. Converted models are stored (built in a temp folder, renamed when
complete) so the next start takes a second, not the ~20 s a calibration costs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from core.scratch import make_scratch, publish, remove

log = logging.getLogger("models")
RUNTIMES = ("auto", "torch", "openvino")
Batch = tuple[np.ndarray, np.ndarray]  # model inputs: mel (B,1,80,16) float32, faces (B,6,S,S) float32


@dataclass(frozen=True)
class Int8Check:
    """How far int8 may stray from fp32 on held-out crops, in 8-bit output levels."""
    max_mean_error: float = 2.0
    max_p99_error: float = 16.0


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo cannot be read."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return frozenset(word for line in lines if line.startswith("flags") for word in line.split(":", 1)[1].split())


def cpu_has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX), where int8 pays off."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


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
                torch.zeros(b, 1, 80, 16, device=device, dtype=dtype),
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


class OpenVinoRunner:
    """A compiled OpenVINO model on the CPU: (mel (B,1,80,16), faces (B,6,S,S)) float32 -> (B,3,S,S) float32."""

    def __init__(self, model, threads: Optional[int] = None):
        import openvino as ov
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                  "INFERENCE_PRECISION_HINT": "f32"}  # never a silent bf16 on AMX CPUs
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer([mel, faces])[0])


def weights_digest(net: nn.Module) -> str:
    """Identifies the weights (after any folding), so a stored conversion is never reused for other weights."""
    digest = hashlib.sha1()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def convert(net: nn.Module, size: int):
    """torch -> OpenVINO model with a dynamic batch dimension."""
    import openvino as ov
    example = (torch.zeros(2, 1, 80, 16), torch.zeros(2, 6, size, size))
    with torch.no_grad():
        return ov.convert_model(net.float().cpu().eval(), example_input=example)


def quantize_int8(model, calibration: Sequence[Batch]):
    """Post-training int8 quantisation (NNCF, per-channel weights, fast bias correction) on real inputs."""
    import nncf
    samples = sum(len(mel) for mel, _ in calibration)
    return nncf.quantize(model, nncf.Dataset(list(calibration)), subset_size=samples, fast_bias_correction=True)


def output_error(reference: Callable, candidate: Callable, batches: Sequence[Batch]) -> dict:
    """Mean and 99th-percentile absolute difference of two runners' outputs, in 8-bit levels."""
    diffs = []
    for mel, faces in batches:
        diffs.append(np.abs(reference(mel, faces) - candidate(mel, faces)).ravel() * 255)
    diff = np.concatenate(diffs)
    return {"mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)), "max": float(diff.max())}


class OpenVinoStore:
    """Converted models on disk: <folder>/<name>-<weights>-<precision>/model.xml|bin + info.json."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def load(self, key: str):
        import openvino as ov
        path = self.folder / key
        if not (path / "info.json").exists():
            return None, None
        return ov.Core().read_model(str(path / "model.xml")), json.loads((path / "info.json").read_text())

    def save(self, key: str, model, info: dict) -> None:
        import openvino as ov
        partial = make_scratch(self.folder, key)
        try:
            ov.save_model(model, str(partial / "model.xml"), compress_to_fp16=False)
            (partial / "info.json").write_text(json.dumps(info, indent=1))
            publish(partial, self.folder / key)
        finally:
            remove(partial)


def build_openvino(net: nn.Module, name: str, size: int, int8: bool,
                   calibration: Optional[Callable[[], tuple[list[Batch], list[Batch]]]] = None,
                   store: Optional[OpenVinoStore] = None, check: Int8Check = Int8Check()) -> tuple[OpenVinoRunner, str]:
    """An OpenVINO runner for `net` and the precision it really got ('int8', or 'fp32' when int8 failed its check).

    `calibration()` returns (calibration batches, held-out batches) of model inputs; it is only called when no
    stored int8 model exists for these weights."""
    digest = weights_digest(net)

    def fp32_model():
        """Converted (or stored) fp32 model; only read or built when something needs it."""
        key = f"{name}-{digest}-fp32"
        model, _ = store.load(key) if store else (None, None)
        if model is None:
            model = convert(net, size)
            if store:
                store.save(key, model, {"precision": "fp32"})
        return model

    if not int8:
        return OpenVinoRunner(fp32_model()), "fp32"
    int8_key = f"{name}-{digest}-int8"
    model, info = store.load(int8_key) if store else (None, None)
    runner = None
    if model is None:
        if calibration is None:
            raise ValueError("int8 needs calibration data (the presenter's face crops)")
        started = time.perf_counter()
        calibrate, held_out = calibration()
        log.info("calibrating int8 on %d face crops (once per model and presenter)…", sum(len(m) for m, _ in calibrate))
        reference = fp32_model()
        model = quantize_int8(reference, calibrate)
        runner = OpenVinoRunner(model)
        error = output_error(OpenVinoRunner(reference), runner, held_out)
        info = {"precision": "int8", "error_levels": error, "calibration_seconds": time.perf_counter() - started}
        if store:
            store.save(int8_key, model, info)
    error = info["error_levels"]
    if error["mean"] > check.max_mean_error or error["p99"] > check.max_p99_error:
        log.warning("int8 strays too far from fp32 on held-out crops (mean %.2f, p99 %.1f of 255 levels; limits "
                    "%.1f / %.1f): running fp32", error["mean"], error["p99"], check.max_mean_error, check.max_p99_error)
        return OpenVinoRunner(fp32_model()), "fp32"
    log.info("int8 model within tolerance of fp32: mean %.2f, p99 %.1f of 255 levels", error["mean"], error["p99"])
    return runner or OpenVinoRunner(model), "int8"
