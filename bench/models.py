"""Model-only speed: Wav2Lip 96/288/384 frames/s per batch size and dtype, GFPGAN ms per 512 head, and IP_LAP
frames/s per batch size and number of reference faces.

python bench/models.py [--sizes [96 288 384]] [--device auto|cpu|cuda] [--seconds 3] [--skip_gfpgan]
                       [--iplap_references 1 5 25] [--skip_iplap]
Random weights (speed does not depend on them). 'eager' is the reference way (plain fp32 model, NCHW); the
others are our predictor (BatchNorm folded, uint8 pre/post-processing included) per runtime and precision:
torch (channels-last) and, on the CPU, OpenVINO fp32 and int8 (calibrated on the generic crops of
models/calibration.py). IP_LAP is timed as the engine calls it per frame (models/iplap/prior.py IplapGenerator.generate: the landmark
generator over the 5-frame window, the five sketches drawn, the renderer, the uint8 cast), fp32.
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


IPLAP_BATCHES = {"cpu": (1,), "cuda": (1, 8, 16)}


def bench_iplap(device: torch.device, seconds: float, references: list[int]) -> list[tuple]:
    from models.iplap.arch import LandmarkGenerator, Renderer
    from models.iplap.prior import FrameLandmarks, IplapGenerator, References
    generator = IplapGenerator(LandmarkGenerator().to(device), Renderer().to(device))
    rng = np.random.default_rng(0)
    frame = FrameLandmarks(rng.uniform(0.1, 0.9, (2, 74)).astype(np.float32),
                           rng.uniform(0.1, 0.9, (2, 57)).astype(np.float32), (300, 260), 0.02)
    rows = []
    for count in references:
        refs = References(torch.rand(1, count, 3, 128, 128, device=device),
                          torch.rand(1, count, 3, 128, 128, device=device),
                          torch.rand(1, 15, 2, 74, device=device), torch.rand(1, 15, 2, 57, device=device))
        for batch in IPLAP_BATCHES[device.type]:
            mels = rng.normal(size=(batch, 5, 80, 16)).astype(np.float32)
            faces = rng.integers(0, 256, (batch, 128, 128, 3), dtype=np.uint8)
            per_call = timed(lambda: generator.generate(mels, [[frame] * 5] * batch, faces, refs), seconds, device)
            rows.append(report("iplap", batch, f"{count} reference faces, fp32", f"{batch / per_call:.3f}",
                               f"{per_call / batch:.2f} s a frame"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[96, 288, 384], choices=sorted(SPECS),
                        help="Wav2Lip sizes to time (none: --sizes alone)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent per measurement")
    parser.add_argument("--skip_gfpgan", action="store_true")
    parser.add_argument("--iplap_references", type=int, nargs="+", default=[1, 5, 25],
                        help="IP_LAP: reference faces per frame to time (the reference uses 25)")
    parser.add_argument("--skip_iplap", action="store_true")
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
    if not args.skip_iplap:
        print("\nmodel | batch | variant | frames/s | time")
        bench_iplap(device, args.seconds, args.iplap_references)


if __name__ == "__main__":
    main()
