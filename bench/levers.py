"""Runtime levers for Wav2Lip-96 on the CPU that were tried and not kept, measured against eager fp32.

python bench/levers.py [--batch 16] [--seconds 5]
- TorchScript: trace, freeze, optimize_for_inference;
- torch.compile (default mode): its compile time, then its speed;
- ONNX Runtime fp32 and static int8 (QDQ, calibrated on random inputs): needs `onnx` and `onnxruntime`, which are
  not in requirements.txt (onnx wants protobuf >= 6 and mediapipe 0.10.21 pins protobuf < 5), so they are
  measured in a separate environment: `python -m venv /tmp/ort && /tmp/ort/bin/pip install torch==2.13.0 numpy
  onnx onnxruntime && /tmp/ort/bin/python bench/levers.py`. Without them that row says so and is skipped.
Model only, random weights, reference pre-processing (float32 NCHW inputs); frames/s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from models import wav2lip96  # noqa: E402
from models.blocks import Wav2Lip  # noqa: E402


def per_second(run, batch: int, seconds: float) -> float:
    run()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        run()
        calls += 1
    return batch * calls / (time.perf_counter() - start)


def onnx_rows(model: torch.nn.Module, mel: torch.Tensor, faces: torch.Tensor, batch: int, seconds: float) -> list:
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    except ImportError as exc:
        return [("ONNX Runtime fp32 / int8", f"skipped: {exc}; see this script's docstring for the separate venv")]
    work = Path(tempfile.mkdtemp(prefix="bench-levers-"))
    fp32, int8 = work / "wav2lip96.onnx", work / "wav2lip96-int8.onnx"
    torch.onnx.export(model, (mel, faces), str(fp32), input_names=["mel", "faces"], output_names=["out"],
                      opset_version=17, dynamo=False)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.items = iter([{"mel": rng.normal(size=mel.shape).astype(np.float32),
                                "faces": rng.random(faces.shape, dtype=np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(int8), Calibration(), quant_format=QuantFormat.QDQ)
    feed = {"mel": mel.numpy(), "faces": faces.numpy()}
    rows = []
    for label, path in (("ONNX Runtime fp32", fp32), ("ONNX Runtime int8 (static QDQ)", int8)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rows.append((label, per_second(lambda: session.run(None, feed), batch, seconds)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(header())
    torch.manual_seed(0)
    model = Wav2Lip(wav2lip96.GENERATOR).eval()
    mel, faces = torch.randn(args.batch, 1, 80, 16), torch.rand(args.batch, 6, 96, 96)
    rows = []
    with torch.inference_mode():
        rows.append(("eager fp32", per_second(lambda: model(mel, faces), args.batch, args.seconds)))
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, (mel, faces))))
        rows.append(("TorchScript trace + freeze + optimize_for_inference",
                     per_second(lambda: scripted(mel, faces), args.batch, args.seconds)))
        compiled = torch.compile(model)
        started = time.perf_counter()
        compiled(mel, faces)
        compile_seconds = time.perf_counter() - started
        rows.append((f"torch.compile (first call {compile_seconds:.0f} s)",
                     per_second(lambda: compiled(mel, faces), args.batch, args.seconds)))
    rows += onnx_rows(model, mel, faces, args.batch, args.seconds)
    eager = rows[0][1]
    print(f"Wav2Lip-96, batch {args.batch}, fp32 inputs, model only")
    print("lever | frames/s | vs eager")
    for label, value in rows:
        print(f"{label} | {value:.1f} | {value / eager:.2f}x" if isinstance(value, float) else f"{label} | {value} |")


if __name__ == "__main__":
    main()
