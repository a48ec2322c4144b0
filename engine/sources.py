"""Audio inputs. Each feeds 16 kHz mono float32 into an AudioBuffer; the engine's clock takes from it."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .audio import AudioError, load_audio
from .mel import SAMPLE_RATE


@dataclass(frozen=True)
class Mark:
    """Where an utterance starts or ends on the timeline (absolute sample position)."""
    position: int
    kind: str          # "start" | "end"
    tag: object


class AudioBuffer:
    """Thread-safe FIFO of samples. The live clock takes fixed slices; what is missing is silence.

    Audio pushed with a tag is an utterance: take() records where its first sample and (once close(tag) was
    called) its last sample land on the timeline, so the engine can say when it is actually shown."""

    def __init__(self):
        self._chunks: list[tuple[np.ndarray, object]] = []
        self._size = 0
        self._lock = threading.Lock()
        self._taken = 0                     # samples handed to the timeline so far, silence included
        self._started: set = set()
        self._closed: set = set()
        self._marks: list[Mark] = []
        self.ended = threading.Event()      # no more input will come (files done)

    def push(self, pcm: np.ndarray, tag: object = None) -> None:
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        if pcm.size:
            with self._lock:
                self._chunks.append((pcm, tag))
                self._size += pcm.size

    def close(self, tag: object) -> None:
        """Utterance `tag` is complete: its end is marked when its last sample is taken (now, if it was)."""
        with self._lock:
            self._closed.add(tag)
            if tag in self._started and not any(t == tag for _, t in self._chunks):
                self._end(tag, self._taken)

    def _end(self, tag: object, position: int) -> None:
        self._marks.append(Mark(position, "end", tag))
        self._started.discard(tag)
        self._closed.discard(tag)

    @property
    def available(self) -> int:
        return self._size

    @property
    def queued_tags(self) -> list:
        with self._lock:
            return list(dict.fromkeys(t for _, t in self._chunks if t is not None))

    def take(self, n: int) -> np.ndarray:
        """n samples: what is queued, then zeros (a gap in the input is silence on the timeline)."""
        out = np.zeros(n, np.float32)
        filled = 0
        with self._lock:
            while filled < n and self._chunks:
                chunk, tag = self._chunks[0]
                if tag is not None and tag not in self._started:
                    self._started.add(tag)
                    self._marks.append(Mark(self._taken + filled, "start", tag))
                used = min(n - filled, chunk.size)
                out[filled:filled + used] = chunk[:used]
                filled += used
                self._size -= used
                if used == chunk.size:
                    self._chunks.pop(0)
                    if tag in self._closed and not any(t == tag for _, t in self._chunks):
                        self._end(tag, self._taken + filled)
                else:
                    self._chunks[0] = (chunk[used:], tag)
            self._taken += n
        return out

    def pop_marks(self) -> list[Mark]:
        with self._lock:
            marks, self._marks = self._marks, []
        return marks

    def interrupt(self) -> tuple[int, list]:
        """Drop everything queued now: (timeline position at the cut, the tags dropped or cut short)."""
        with self._lock:
            dropped = list(dict.fromkeys([t for _, t in self._chunks if t is not None] + list(self._started)))
            self._chunks.clear()
            self._size = 0
            self._started.clear()
            self._closed.difference_update(dropped)
            return self._taken, dropped


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
