"""Does a model call in a new thread pay a cold start on CUDA, after the warm-up in the main thread?

python bench/thread_cold_start.py   (needs a CUDA GPU)
Wav2Lip-288 (random weights, fp16, batch 1): the first calls in the main thread, then the first two calls in each
of two new threads (the second started after the first ended), then three calls with the faces as a device tensor
(the device pipeline's path) in a third. The engine's model stage is such a new thread: what its first call costs
is what SkipPolicy.cold_calls leaves out of its cost estimate.
"""
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

from models import wav2lip288  # noqa: E402
from models.blocks import Wav2Lip  # noqa: E402
from models.predictor import LipSyncPredictor  # noqa: E402


def main() -> None:
    print(header())
    predictor = LipSyncPredictor(Wav2Lip(wav2lip288.GENERATOR).eval(), "cuda", "fp16", batch_size=1, runtime="torch")
    windows = np.zeros((1, 80, 16), np.float32)
    host_faces = np.zeros((1, 288, 288, 3), np.uint8)
    device_faces = torch.zeros((1, 288, 288, 3), dtype=torch.uint8, device="cuda")

    def timed(label: str, faces) -> None:
        started = time.perf_counter()
        predictor.predict(windows, faces)
        torch.cuda.synchronize()
        print(f"{label}: {1000 * (time.perf_counter() - started):.1f} ms", flush=True)

    timed("main first", host_faces)
    timed("main second", host_faces)
    predictor.warm_up(1)
    timed("main after warm_up", host_faces)

    def in_thread(calls) -> None:
        thread = threading.Thread(target=lambda: [timed(label, faces) for label, faces in calls])
        thread.start()
        thread.join()

    for tag in ("thread A", "thread B (after A exited)"):
        in_thread([(f"{tag} first", host_faces), (f"{tag} second", host_faces)])
    in_thread([(f"thread C tensor faces call {i}", device_faces) for i in range(3)])


if __name__ == "__main__":
    main()
