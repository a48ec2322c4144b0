"""Model-only speed: Wav2Lip 96/288/384 frames/s per batch size and dtype, and GFPGAN ms per 512 head.

python bench/models.py [--sizes 96 288 384] [--device auto|cpu|cuda] [--seconds 3] [--skip_gfpgan]
Random weights (speed does not depend on them). 'eager' is the reference way (plain fp32 model, NCHW); the
others are our predictor (BatchNorm folded, uint8 pre/post-processing included) per runtime and precision:
torch (channels-last) and, on the CPU, OpenVINO fp32 and int8 (calibrated on the generic crops of models/calibration.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from models import wav2lip96, wav2lip288, wav2lip384  # noqa: E402
from models.blocks import Wav2Lip  # noqa: E402
from models.predictor import LipSyncPredictor, pick_device  # noqa: E402
from models.openvino_cpu import cpu_has_native_bf16, cpu_has_vnni, openvino_available  # noqa: E402

SPECS = {96: wav2lip96.GENERATOR, 288: wav2lip288.GENERATOR, 384: wav2lip384.GENERATOR}
BATCHES = {"cpu": {96: (1, 8, 16, 32), 288: (1, 4), 384: (1, 4)},
           "cuda": {96: (1, 16, 64, 128, 256), 288: (1, 16, 32, 64), 384: (1, 8, 16, 32)}}


def timed(run, seconds: float, device: torch.device) -> float:
    """Seconds per call: one warm-up call, then calls until `seconds` have passed (at least two)."""
    run()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        run()
        calls += 1
    sync()
    return (time.perf_counter() - start) / calls


def variants(device: torch.device) -> list[tuple[str, str]]:
    """(runtime, dtype) pairs this device runs."""
    if device.type == "cuda":
        return [("torch", "fp32"), ("torch", "fp16"), ("torch", "bf16")]
    found = [("torch", "fp32"), ("torch", "bf16")]
    return found + ([("openvino", "fp32"), ("openvino", "int8")] if openvino_available() else [])


def bench_wav2lip(size: int, device: torch.device, seconds: float) -> list[tuple]:
    model = Wav2Lip(SPECS[size]).eval()
    rows = []
    for batch in BATCHES[device.type][size]:
        rng = np.random.default_rng(0)
        mels = rng.normal(size=(batch, 80, 16)).astype(np.float32)
        faces = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        eager = model.to(device)
        x, mel = torch.rand(batch, 6, size, size, device=device), torch.randn(batch, 1, 80, 16, device=device)
        with torch.inference_mode():
            per_call = timed(lambda: eager(mel, x), seconds, device)
        rows.append(report(size, batch, "eager fp32", batch / per_call))
        for runtime, dtype in variants(device):
            predictor = LipSyncPredictor(model, device, dtype, batch_size=batch, runtime=runtime)
            per_call = timed(lambda: predictor.predict(mels, faces), seconds, device)
            rows.append(report(size, batch, f"{runtime} {predictor.precision}".replace("torch.", ""), batch / per_call))
    return rows


def report(*row) -> tuple:
    print(*(f"{v:.1f}" if isinstance(v, float) else v for v in row), sep=" | ", flush=True)
    return row


def bench_gfpgan(device: torch.device, seconds: float) -> float:
    from models.gfpgan import GfpganEnhancer
    from models.gfpgan.arch import build_gfpgan
    enhancer = GfpganEnhancer(build_gfpgan(), device)
    head = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)
    return timed(lambda: enhancer.enhance(head), seconds, device) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 288, 384], choices=sorted(SPECS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent per measurement")
    parser.add_argument("--skip_gfpgan", action="store_true")
    args = parser.parse_args()
    print(header())
    device = pick_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; CPU native bf16: {cpu_has_native_bf16()}, "
          f"int8 VNNI: {cpu_has_vnni()}")
    print("size | batch | variant | frames/s")
    for size in args.sizes:
        bench_wav2lip(size, device, args.seconds)
    if not args.skip_gfpgan:
        print(f"\nGFPGANv1Clean 512, batch 1, fp32: {bench_gfpgan(device, args.seconds):.0f} ms per head")


if __name__ == "__main__":
    main()
