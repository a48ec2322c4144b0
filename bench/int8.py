"""int8 for the CPU: our quantisation built into the OpenVINO graph, against fp32 (and NNCF's, where installed).

python bench/int8.py [--size 96] [--seed 0]
A random-weight Wav2Lip generator (BatchNorm folded) and the engine's own calibration data (32 generic crops, then
8 held-out crops with 4 spoken windows each). Printed: the time to quantise, the error against fp32 on the held-out
crops beside the fp32 output's spread (models/runtime.output_error), and frames/s at batch 16 for fp32 and int8.
NNCF is no longer a dependency; when it is importable (`pip install nncf`), its `nncf.quantize` on 1, 2 and 4
calibration batches is measured the same way, its import time included in the first.
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

from models.blocks import Wav2Lip  # noqa: E402
from models.loader import GENERATORS  # noqa: E402
from models.openvino_cpu import OpenVinoRunner  # noqa: E402
from models.predictor import LipSyncPredictor, fold_batchnorm  # noqa: E402
from models.runtime import convert, output_error, quantize_int8  # noqa: E402


def frames_per_second(runner: OpenVinoRunner, size: int, calls: int = 5) -> float:
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(16, 1, 80, 16)).astype(np.float32)
    faces = rng.uniform(size=(16, 6, size, size)).astype(np.float32)
    runner(mel, faces)
    started = time.perf_counter()
    for _ in range(calls):
        runner(mel, faces)
    return 16 * calls / (time.perf_counter() - started)


def report(name: str, seconds: float, fp32: OpenVinoRunner, model, checked, windows: int, size: int) -> None:
    runner = OpenVinoRunner(model)
    error = output_error(fp32, runner, checked, windows)
    speed = frames_per_second(runner, size)
    print(f"{name}: quantised in {seconds:.1f} s; error mean {error['mean']:.2f}, p99 {error['p99']:.1f}, max "
          f"{error['max']:.0f} of 255 levels (fp32 spread {error['spread']:.1f}); {speed:.1f} frames/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, choices=sorted({s.size for s in GENERATORS}))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(header())
    torch.manual_seed(args.seed)
    spec = next(s for s in GENERATORS if s.size == args.size)
    net = fold_batchnorm(Wav2Lip(spec).eval())
    shaped = LipSyncPredictor.__new__(LipSyncPredictor)  # only its calibration data: no runtime is built
    shaped.size = args.size
    calibrate, checked, windows = shaped.calibration_batches()
    fp32 = OpenVinoRunner(convert(net))
    print(f"{spec.name}, fp32: {frames_per_second(fp32, args.size):.1f} frames/s")
    started = time.perf_counter()
    model, _ = quantize_int8(net, calibrate)
    report("ours", time.perf_counter() - started, fp32, model, checked, windows, args.size)
    try:
        started = time.perf_counter()
        import nncf
    except ImportError:
        print("nncf: not installed")
        return
    for batches in (1, 2, 4):
        model = nncf.quantize(convert(net), nncf.Dataset(calibrate[:batches]), subset_size=batches,
                              fast_bias_correction=True)
        report(f"nncf, {batches} batches", time.perf_counter() - started, fp32, model, checked, windows, args.size)
        started = time.perf_counter()


if __name__ == "__main__":
    main()
