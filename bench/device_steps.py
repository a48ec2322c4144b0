"""The device pipeline's per-frame steps alone: the head paste-back, and the model steps eager against CUDA graphs.

python bench/device_steps.py --data_dir CACHE [--device auto] [--frames 64] [--size 288]
CACHE: a presenter preprocessed with its upright heads (e.g. bench/cuda_check.sh prepare's 720p). The paste-back
is TorchCompositor's enhance-face path with the restored head taken as is (GFPGAN's own time is the model step):
the mouth into the head, then the head warped back into the frame, ms per frame, and the warp-back alone. The model
steps (random weights): Wav2Lip at --size, uint8 crops and mel windows in and crops out, and GFPGAN, uint8 heads in
and out, each eager and (on CUDA) replayed from captured CUDA graphs (models/graphed.py), ms per call.
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

from core.timebase import MEL_SHAPE  # noqa: E402
from engine.render.presenter import Presenter  # noqa: E402
from engine.render.resident import load_resident  # noqa: E402
from engine.render.torch_composite import TorchCompositor  # noqa: E402
from models import wav2lip96, wav2lip288, wav2lip384  # noqa: E402
from models.blocks import Wav2Lip  # noqa: E402
from models.graphed import GraphedStep  # noqa: E402
from models.predictor import LipSyncPredictor, pick_device  # noqa: E402

SPECS = {96: wav2lip96.GENERATOR, 288: wav2lip288.GENERATOR, 384: wav2lip384.GENERATOR}


class AsIs:
    """The restored head is the head: the paste-back's time without GFPGAN's."""
    realtime = True

    @staticmethod
    def enhance_tensors(heads: torch.Tensor) -> torch.Tensor:
        return heads


def per_call_ms(call, device: torch.device, repeats: int) -> float:
    call()  # warm
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - started) / repeats


def paste_back(presenter: Presenter, device: torch.device, frames: int) -> None:
    compositor = TorchCompositor(presenter, load_resident(presenter, device, with_heads=True), "face", AsIs())
    indices = [int(i) for i in np.flatnonzero(presenter.has_face)][:frames]
    faces = compositor.faces(indices)
    heads = torch.stack([compositor._head_with_mouth(i, f) for i, f in zip(indices, faces)])
    whole = per_call_ms(lambda: compositor.compose(indices, faces), device, 3) / len(indices)
    warp = per_call_ms(lambda: [compositor._paste_head(i, h) for i, h in zip(indices, heads)], device, 3) / len(indices)
    print(f"paste-back, enhance face, {presenter.width}x{presenter.height}, {len(indices)} frames: "
          f"{whole:.2f} ms a frame (mouth into the head, head back into the frame), warp-back alone {warp:.2f} ms",
          flush=True)


def model_steps(size: int, device: torch.device, batches: list[int], repeats: int) -> None:
    graphs = device.type == "cuda"
    predictor = LipSyncPredictor(Wav2Lip(SPECS[size]).eval(), device, "auto", batch_size=max(batches), runtime="torch")
    steps = {"Wav2Lip-%d (%s)" % (size, str(predictor.precision).replace("torch.", "")): (
        predictor._device_step, lambda b: (torch.zeros(b, *MEL_SHAPE, device=device),
                                           torch.zeros(b, size, size, 3, dtype=torch.uint8, device=device)))}
    if graphs:  # GFPGAN on a CPU takes seconds a head: timed on CUDA only
        from models.gfpgan import GfpganEnhancer
        from models.gfpgan.arch import build_gfpgan
        enhancer = GfpganEnhancer(build_gfpgan(), device)
        steps[f"GFPGAN ({str(enhancer.dtype).replace('torch.', '')})"] = (
            enhancer._step, lambda b: (torch.zeros(b, 512, 512, 3, dtype=torch.uint8, device=device),))
    for name, (step, example) in steps.items():
        graphed = GraphedStep(step, example, batches, device, name) if graphs else None
        for batch in batches:
            inputs = example(batch)
            with torch.inference_mode():
                eager = per_call_ms(lambda: step(*inputs), device, repeats)
                line = f"{name}, batch {batch}: eager {eager:.2f} ms a call ({eager / batch:.3f} a frame)"
                if graphed is not None:
                    replay = per_call_ms(lambda: graphed(*inputs), device, repeats)
                    line += f", CUDA graph {replay:.2f} ms ({replay / batch:.3f} a frame, {eager / replay:.1f}x)"
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="a presenter cache with its upright heads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--frames", type=int, default=64, help="frames for the paste-back")
    parser.add_argument("--size", type=int, default=288, choices=sorted(SPECS))
    parser.add_argument("--batches", default="1,2,16", help="model batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(header())
    device = pick_device(args.device)
    presenter = Presenter(args.data_dir, args.size, load_heads=True)
    paste_back(presenter, device, args.frames)
    model_steps(args.size, device, [int(b) for b in args.batches.split(",")], args.repeats)


if __name__ == "__main__":
    main()
