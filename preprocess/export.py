"""LRS2-style training export: one folder per clip with numbered face crops and audio.wav, plus train/val lists.

The layout is what Rudrabha's, primepake's and stream-wav2lip's training scripts read: frames named by their
index (frames without a face are simply absent, as in the reference preprocess), and filelists of folder names.
The crops are the padded Wav2Lip crops the engine feeds the model, so a model trained on them sees at training
time exactly what it gets live. For IP_LAP (python -m models.iplap.train) each clip also gets its 128 x 128 crops
(`iplap/`) and its landmarks in those crops (`iplap_landmarks.npz`: pose, content, crop_size).
"""
from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np

from core.scratch import make_scratch, publish, remove
from models.iplap.mesh import CONTENT, EXPORT_CROPS, EXPORT_LANDMARKS, POSE, crop_geometry

from . import cache

VAL_EVERY = 10  # about one clip in ten goes to val.txt (stable: decided by the clip name)


def export_training_clip(cache_dir: Path, train_dir: Path) -> Path:
    cache_dir, train_dir = Path(cache_dir), Path(train_dir)
    target = train_dir / cache_dir.name
    tmp = make_scratch(train_dir, cache_dir.name)
    try:
        for crop in sorted((cache_dir / "body_face").glob("*.jpg")):
            shutil.copy2(crop, tmp / crop.name)
        crops = sorted((cache_dir / "iplap_face").glob("*.jpg"))
        if crops:
            (tmp / EXPORT_CROPS).mkdir()
            for crop in crops:
                shutil.copy2(crop, tmp / EXPORT_CROPS / crop.name)
            write_iplap_landmarks(cache.read_face_det(cache_dir), tmp / EXPORT_LANDMARKS)
        if (cache_dir / cache.AUDIO).is_file():
            shutil.copy2(cache_dir / cache.AUDIO, tmp / cache.AUDIO)
        return publish(tmp, target)
    finally:
        remove(tmp)


def write_iplap_landmarks(det: dict, path: Path) -> None:
    """Every frame's pose and content landmarks in its IP_LAP crop (NaN without one) and the crop's size."""
    frames = len(det["has_face"])
    pose = np.full((frames, 2, len(POSE)), np.nan, np.float32)
    content = np.full((frames, 2, len(CONTENT)), np.nan, np.float32)
    size = np.zeros((frames, 2), np.int32)
    for i in np.flatnonzero(det["iplap_box"].any(axis=1)):
        pose[i], content[i], size[i] = crop_geometry(det["landmarks"][i], det["iplap_box"][i])
    np.savez(path, pose=pose, content=content, crop_size=size)


def write_filelists(train_dir: Path) -> tuple[list[str], list[str]]:
    """(Re)write train.txt and val.txt from every clip folder present, so batches can add clips over time."""
    clips = sorted(p.name for p in Path(train_dir).iterdir()
                   if p.is_dir() and not p.name.startswith(".") and (p / cache.AUDIO).is_file())
    val = [c for c in clips if zlib.crc32(c.encode()) % VAL_EVERY == 0] or clips[-1:]
    train = [c for c in clips if c not in val] or val  # a single clip serves both lists
    (Path(train_dir) / "train.txt").write_text("".join(f"{c}\n" for c in train))
    (Path(train_dir) / "val.txt").write_text("".join(f"{c}\n" for c in val))
    return train, val
