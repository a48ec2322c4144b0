"""Audio inputs. Each feeds 16 kHz mono float32 into an AudioBuffer; the engine's clock takes from it."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from .audio import AudioError, load_audio
from .mel import SAMPLE_RATE


class AudioBuffer:
    """Thread-safe FIFO of samples. The live clock takes fixed slices; what is missing is silence."""

    def __init__(self):
        self._chunks: list[np.ndarray] = []
        self._size = 0
        self._lock = threading.Lock()
        self.ended = threading.Event()  # no more input will come (files done)

    def push(self, pcm: np.ndarray) -> None:
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        if pcm.size:
            with self._lock:
                self._chunks.append(pcm)
                self._size += pcm.size

    @property
    def available(self) -> int:
        return self._size

    def take(self, n: int) -> np.ndarray:
        """n samples: what is queued, then zeros (a gap in the input is silence on the timeline)."""
        out = np.zeros(n, np.float32)
        filled = 0
        with self._lock:
            while filled < n and self._chunks:
                chunk = self._chunks[0]
                used = min(n - filled, chunk.size)
                out[filled:filled + used] = chunk[:used]
                filled += used
                self._size -= used
                if used == chunk.size:
                    self._chunks.pop(0)
                else:
                    self._chunks[0] = chunk[used:]
        return out


def load_files(paths: list[Path | str]) -> np.ndarray:
    """Several audio files back to back, as one 16 kHz mono timeline."""
    if not paths:
        raise AudioError("no audio file given (--audio_files a.wav b.mp3 …)")
    return np.concatenate([load_audio(p) for p in paths])


class Microphone:
    """Pushes the microphone into a buffer (sounddevice, 16 kHz mono, 20 ms blocks)."""

    def __init__(self, buffer: AudioBuffer, device: Optional[str | int] = None):
        try:
            import sounddevice
        except OSError as exc:  # PortAudio missing
            raise AudioError(f"sounddevice cannot load PortAudio ({exc}); run scripts/setup.sh") from exc
        try:
            self._stream = sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                                                   blocksize=SAMPLE_RATE // 50, device=device,
                                                   callback=lambda data, frames, t, status: buffer.push(data[:, 0]))
        except Exception as exc:  # sounddevice raises ValueError/PortAudioError for bad devices
            raise AudioError(f"no microphone {device!r}: {exc} (list devices with `python -m sounddevice`)") from exc

    def start(self) -> None:
        self._stream.start()

    def stop(self) -> None:
        self._stream.stop()
        self._stream.close()
