"""OpenVINO on the CPU without torch: the runner, the store of converted models, the CPU's features, and the
switch that keeps OpenVINO's and NNCF's usage reporting off.

A render whose checkpoint was converted before needs nothing else: it never imports torch (2.6 s and some
300 MB saved at start-up), see models/stored.py."""
from __future__ import annotations

import json
import os
import platform
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from core.scratch import make_scratch, publish, remove


def openvino_available() -> bool:
    try:
        import_openvino()
    except ImportError:
        return False
    return True


def import_openvino():
    """The openvino module. Importing it sends a usage event unless our process says CI (no_usage_reporting)."""
    with no_usage_reporting():
        import openvino
    return openvino


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo cannot be read."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return frozenset(word for line in lines if line.startswith("flags") for word in line.split(":", 1)[1].split())


def int8_by_default() -> bool:
    """`auto` runs int8 on x86 CPUs: measured there to run 1.5-2x fp32 even without VNNI (bench/int8.py). Elsewhere
    (ARM) OpenVINO's int8 is not measured here, so fp32 stays the default."""
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX): int8 runs fastest there."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


class OpenVinoRunner:
    """A compiled OpenVINO model on the CPU: (mel (B,1,80,16), faces (B,6,S,S)) float32 -> (B,3,S,S) float32."""

    def __init__(self, model, threads: Optional[int] = None):
        ov = import_openvino()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or physical_cores(),
                  "INFERENCE_PRECISION_HINT": "f32"}  # never a silent bf16 on AMX CPUs
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer([mel, faces])[0])


@contextmanager
def no_usage_reporting():
    """`import openvino` and openvino.convert_model send usage events to an analytics service unless the user opted
    out (with no consent file present, openvino-telemetry counts it as consent). It is off in CI (`disable_in_ci`):
    we say CI=true in our own process's environment while openvino sets its telemetry up, so nothing is reported,
    and the user's consent file and other tools are left alone."""
    previous = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = previous


def default_runtime_cache() -> Path:
    """Where converted models live unless --runtime_cache says otherwise: one per user, shared by all presenters."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stream-wav2lip" / "runtime"


class OpenVinoStore:
    """Converted models on disk: <folder>/<name>-<weights>-<precision>/model.xml|bin + info.json."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def load(self, key: str):
        ov = import_openvino()
        path = self.folder / key
        if not (path / "info.json").exists():
            return None, None
        return ov.Core().read_model(str(path / "model.xml")), json.loads((path / "info.json").read_text())

    def save(self, key: str, model, info: dict) -> None:
        ov = import_openvino()
        partial = make_scratch(self.folder, key)
        try:
            ov.save_model(model, str(partial / "model.xml"), compress_to_fp16=False)
            (partial / "info.json").write_text(json.dumps(info, indent=1))
            publish(partial, self.folder / key)
        finally:
            remove(partial)


def physical_cores() -> int:
    """Threads for OpenVINO: one per physical core (as torch picks by default)."""
    import psutil
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
