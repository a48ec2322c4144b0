"""The per-video cache folder: layout, crash-safe writing (temp folder + rename) and reading.

cache/<name>/
  manifest.json   source file, hash, fps, frame count, sizes, detector, pads, format version
  bg/00000.jpg    every frame, 25 fps (the background the live loop plays)
  bg_mid/         with --fps 50: the optical-flow frame halfway between bg frame i and i+1, for 50 fps output
  matte/00000.png with --matte: the presenter's alpha per frame (8-bit grey PNG, lossless), for output without
                  the recorded background; matte_mid/ holds the in-between frames' (--fps 50 --matte)
  body_face/      Wav2Lip crop (padded box, resized to face_size) - only frames with a face
  heads/          512x512 upright head (FFHQ alignment) for GFPGAN - only frames with a face
  iplap_face/     IP_LAP's 128x128 face crop (its 131 mesh points plus 25 px) - frames with a face-mesh face
  audio.wav       16 kHz mono (absent when the source has no audio)
  face_det.npz    per-frame arrays, see FACE_DET_FIELDS
"""
from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.scratch import make_scratch, publish, remove

FORMAT_VERSION = 2  # 2: iplap_face/ and iplap_box (IP_LAP, --model iplap)
MANIFEST = "manifest.json"
FACE_DET = "face_det.npz"
AUDIO = "audio.wav"
IMAGE_DIRS = ("bg", "bg_mid", "body_face", "heads", "iplap_face", "matte", "matte_mid")
LOSSLESS_DIRS = ("matte", "matte_mid")  # PNG: an alpha must decode to the levels it was given
FACE_DET_FIELDS = {
    "has_face": "bool (N,): a face was found on the frame; frames without one pass through untouched",
    "box": "int32 (N,4): padded Wav2Lip crop box x1,y1,x2,y2 in frame pixels (zeros without a face)",
    "face_box": "float32 (N,4): smoothed face box x1,y1,x2,y2 before pads",
    "head_affine": "float32 (N,2,3): frame -> 512 upright head",
    "head_affine_inv": "float32 (N,2,3): upright head -> frame (paste-back)",
    "head_box": "int32 (N,4): face box x1,y1,x2,y2 inside the upright head",
    "points5": "float32 (N,5,2): eyes, nose tip, mouth corners in frame pixels",
    "landmarks": "float32 (N,K,2): all detector landmarks in frame pixels (NaN without a face)",
    "iplap_box": "int32 (N,4): IP_LAP's face crop y1,y2,x1,x2 in frame pixels (zeros without a face or without "
                 "MediaPipe's 478-point mesh)",
}


def frame_name(index: int, sub: str) -> str:
    return f"{index:05d}.{'png' if sub in LOSSLESS_DIRS else 'jpg'}"


@dataclass
class FrameRecord:
    has_face: bool
    box: np.ndarray
    face_box: np.ndarray
    head_affine: np.ndarray
    head_affine_inv: np.ndarray
    head_box: np.ndarray
    points5: np.ndarray
    landmarks: np.ndarray
    iplap_box: np.ndarray


class CacheWriter:
    """Writes one video's cache into a scratch folder beside it and swaps it into place only when complete: a
    reader finds the old cache or the new one, never none and never half of one."""

    def __init__(self, final_dir: Path, jpeg_quality: int = 95, workers: int = 2):
        self.final_dir = Path(final_dir)
        self.tmp_dir = make_scratch(self.final_dir.parent, self.final_dir.name)
        for sub in IMAGE_DIRS:
            (self.tmp_dir / sub).mkdir(parents=True)
        # q95 keeps JPEG blocks invisible. Face crops and heads keep full 4:4:4 chroma (lip and eye edges, model
        # input); full frames use 4:2:0 like the H.264 they end up in, which halves the cache.
        # Mattes are PNG (no parameters).
        self._params = {sub: [] if sub in LOSSLESS_DIRS else
                        [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                         cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420 if sub.startswith("bg")
                         else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
                        for sub in IMAGE_DIRS}
        self._pool = ThreadPoolExecutor(workers)
        self._pending: list[Future] = []
        self.records: list[FrameRecord] = []

    def write_image(self, sub: str, index: int, image: np.ndarray) -> None:
        self._pending.append(self._pool.submit(self._encode, self.tmp_dir / sub / frame_name(index, sub), image,
                                               self._params[sub]))
        if len(self._pending) > 64:  # bound memory: wait for the oldest writes
            self._drain(keep=32)

    @staticmethod
    def _encode(path: Path, image: np.ndarray, params: list[int]) -> None:
        ok, data = cv2.imencode(path.suffix, image, params)
        if not ok:
            raise OSError(f"could not encode {path}")
        path.write_bytes(data.tobytes())

    def _drain(self, keep: int = 0) -> None:
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def add_record(self, record: FrameRecord) -> None:
        self.records.append(record)

    def finish(self, manifest: dict) -> Path:
        """Flush images, write arrays and manifest, then atomically swap the folder into place."""
        self._drain()
        self._pool.shutdown()
        arrays = {field: np.stack([getattr(r, field) for r in self.records]) for field in FACE_DET_FIELDS}
        np.savez(self.tmp_dir / FACE_DET, **arrays)
        (self.tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return publish(self.tmp_dir, self.final_dir)

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        remove(self.tmp_dir)


def read_manifest(cache_dir: Path) -> dict | None:
    """The manifest of a complete cache, or None when the folder is missing or unfinished."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def read_face_det(cache_dir: Path) -> dict[str, np.ndarray]:
    with np.load(Path(cache_dir) / FACE_DET) as data:
        return {k: data[k] for k in data.files}
