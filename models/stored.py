"""A checkpoint converted before, found by the hash of its file and run without torch.

Importing torch, loading the checkpoint, folding BatchNorm and hashing the weights cost a render several seconds and
some 400 MB before its first frame. None of it is needed once the checkpoint has been converted: the runtime cache
keeps an index from the checkpoint file's hash to its stored conversion, with the few facts the engine needs (name,
face size, output head). HostPredictor holds the reference pre/post-processing in numpy, shared by LipSyncPredictor
(models/predictor.py) and StoredPredictor here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from core.scratch import make_scratch, remove
from core.timebase import MEL_SHAPE

from .contract import HostDevice
from .openvino_cpu import OpenVinoRunner, OpenVinoStore, int8_by_default

log = logging.getLogger("models")


class HostPredictor:
    """(mel windows, face crops) -> new faces with numpy around a runner, as the reference inference.py does: a
    LipModel (models/contract.py). Subclasses set `runner`, `name`, `size`, `tanh_head`, `batch_size`, `device`
    and `runtime`."""
    runner = None
    size: int
    tanh_head: bool
    batch_size: int
    window_frames = 1
    device_tensors = False
    scheduled = False

    def warm_up(self, batch: int = 1) -> None:
        """One dummy batch, so the first real frame does not pay for lazy initialisation (or cuDNN autotuning)."""
        self.predict(np.zeros((batch, *MEL_SHAPE), np.float32), np.zeros((batch, self.size, self.size, 3), np.uint8))

    def predict(self, mel_windows: np.ndarray, faces_bgr: np.ndarray, landmarks: Optional[np.ndarray] = None,
                frames: Optional[np.ndarray] = None, due: float = float("inf")):
        """mel_windows (B,80,16) float; faces_bgr (B,S,S,3) uint8 -> generated faces (B,S,S,3) uint8, BGR.
        `landmarks`, `frames` and `due` are the contract's (models/contract.py), not needed: Wav2Lip sees only
        pixels, one window per frame, and runs when called."""
        if faces_bgr.ndim != 4 or faces_bgr.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"faces must be (B,{self.size},{self.size},3) for this {self.size}px model; got "
                             f"{faces_bgr.shape} (preprocess the video with --face_size {self.size})")
        if mel_windows.shape[1:] != MEL_SHAPE or len(mel_windows) != len(faces_bgr):
            raise ValueError(f"mel windows must be (B,80,16) with one per face; got {mel_windows.shape}")
        out = [self._predict_batch(mel_windows[i:i + self.batch_size], faces_bgr[i:i + self.batch_size])
               for i in range(0, len(faces_bgr), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.size, self.size, 3), np.uint8)

    def _inputs(self, mels: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The reference preprocessing: BGR /255, the target's lower half zeroed, the unmasked crop as reference.

        Done in numpy: torch ops here would wake torch's spinning OpenMP threads and slow an OpenVINO model
        that shares the same cores (measured: 19 ms model calls became 45 ms)."""
        ref = np.ascontiguousarray(faces.transpose(0, 3, 1, 2), np.float32) / np.float32(255)  # B,3,S,S BGR
        target = ref.copy()
        target[:, :, self.size // 2:] = 0  # the mouth half is what the model must fill in
        mel = np.ascontiguousarray(mels, np.float32)[:, None]
        return mel, np.concatenate([target, ref], axis=1)

    def _predict_batch(self, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
        y = self.runner(*self._inputs(mels, faces))
        if self.tanh_head:
            y = (y + 1) / 2
        y = np.clip(y, 0, 1) * 255
        return y.transpose(0, 2, 3, 1).astype(np.uint8)  # truncation, as the reference's astype(np.uint8)


def file_digest(path: Union[str, Path]) -> str:
    """The checkpoint file's SHA-1 (16 hex digits): a second for a 400 MB file, no torch."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class CheckpointIndex:
    """<runtime cache>/checkpoints/<file hash>.json: for each precision asked for, the stored conversion that runs
    (an int8 request that failed its check runs fp32) and the model's name, face size and output head."""

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder) / "checkpoints"

    def find(self, checkpoint: Union[str, Path], *wanted: str) -> Optional[dict]:
        """The stored conversion of the first of the `wanted` precisions that has one (the file hashed once)."""
        path = self.folder / f"{file_digest(checkpoint)}.json"
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        runs = entry.get("runs", {})
        return next(({**entry, "key": runs[w]} for w in wanted if w in runs), None)

    def remember(self, checkpoint: Union[str, Path], name: str, size: int, tanh_head: bool, wanted: str,
                 key: str) -> None:
        digest = file_digest(checkpoint)
        path = self.folder / f"{digest}.json"
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            entry = {"name": name, "size": size, "tanh_head": tanh_head, "runs": {}}
        entry["runs"][wanted] = key
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = make_scratch(self.folder, digest)
        try:
            (partial / "entry.json").write_text(json.dumps(entry, indent=1))
            os.replace(partial / "entry.json", path)  # atomic: a reader sees the old entry or the new one
        finally:
            remove(partial)


class StoredPredictor(HostPredictor):
    """A stored OpenVINO conversion of a checkpoint, run with numpy around it: no torch in the process."""
    runtime = "openvino"
    device = HostDevice()

    def __init__(self, entry: dict, store: OpenVinoStore, batch_size: int = 16):
        model, info = store.load(entry["key"])
        if model is None:
            raise FileNotFoundError(entry["key"])
        self.runner = OpenVinoRunner(model)
        self.name, self.size, self.tanh_head = entry["name"], entry["size"], entry["tanh_head"]
        self.precision, self.batch_size = info["precision"], batch_size
        log.info("predictor: %s on cpu via openvino, %s, from the stored conversion %s (torch not loaded)",
                 self.name, self.precision, store.folder / entry["key"])


def wanted_precision(dtype: Optional[str]) -> Optional[str]:
    """The OpenVINO precision a CPU render asks for (auto: as models/predictor.pick_dtype), None if not an OpenVINO
    one."""
    if dtype in (None, "", "auto"):
        return "int8" if int8_by_default() else "fp32"
    return dtype if dtype in ("int8", "fp32") else None


def stored_predictor(checkpoint: Union[str, Path], store_folder: Union[str, Path], dtype: Optional[str],
                     batch_size: int, check_size: Callable[[int], None] = lambda size: None
                     ) -> Optional[StoredPredictor]:
    """The predictor for a checkpoint converted before for this precision, or None (then: convert). An int8 request
    finds what ran for it: the int8 model, or fp32 where int8 failed its check. `check_size(face size)` runs on the
    index entry, before the stored model is read and compiled."""
    wanted = wanted_precision(dtype)
    if wanted is None:
        return None
    entry = CheckpointIndex(store_folder).find(checkpoint, wanted)
    if entry is None:
        return None
    check_size(entry["size"])
    try:
        return StoredPredictor(entry, OpenVinoStore(Path(store_folder)), batch_size)
    except (FileNotFoundError, OSError, RuntimeError) as exc:  # removed or damaged since: convert again
        log.warning("the stored conversion %s cannot be used (%s): converting again", entry["key"], exc)
        return None


def remember_conversion(checkpoint: Union[str, Path], store_folder: Union[str, Path], predictor,
                        dtype: Optional[str]) -> None:
    """Index the stored conversion an OpenVINO predictor runs under its checkpoint file's hash (others: nothing)."""
    wanted, key = wanted_precision(dtype), getattr(predictor.runner, "key", None)
    if predictor.runtime == "openvino" and wanted and key:
        CheckpointIndex(store_folder).remember(checkpoint, predictor.name, predictor.size, predictor.tanh_head,
                                               wanted, key)
