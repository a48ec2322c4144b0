"""Decode any audio ffmpeg can read (mp3, wav, m4a, a video's track; any rate, any channels) to 16 kHz mono float32."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class AudioError(RuntimeError):
    """An audio input that cannot be used; the message says why, in one line."""


def rms(samples: np.ndarray) -> float:
    """Root-mean-square level of float samples (1.0 = full scale)."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def load_audio(path: Path | str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if shutil.which("ffmpeg") is None:
        raise AudioError("ffmpeg is not installed; run scripts/setup.sh")
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(sample_rate),
           "-f", "f32le", "-"]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"{path}: not a readable audio file ({reason[-1] if reason else 'ffmpeg failed'})")
    wav = np.frombuffer(result.stdout, np.float32)
    if wav.size == 0:
        raise AudioError(f"{path}: holds no audio samples")
    return wav.copy()
