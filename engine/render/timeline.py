"""From an audio timeline to video-frame units: each 25 fps frame gets its 40 ms of audio, its mel window and a
speech flag. Works the same on a whole file (finish() at the end) and on a never-ending live stream."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np

from audio.decode import rms
from audio.mel import StreamingMel
from core.timebase import FPS, LOOKAHEAD, N_FFT, SAMPLE_RATE, SAMPLES_PER_FRAME, frame_pts, frames_for


@dataclass
class FrameUnit:
    index: int               # output frame number; presentation time = index / 25 s
    audio: np.ndarray        # the 640 samples (float32, 16 kHz mono) shown with this frame
    window: np.ndarray       # (80, 16) Wav2Lip mel window
    speaking: bool           # speech in the window's span: run the model; else show the cached frame untouched
    # live runs only, set by the timeline stage and carried with the frame to the presenting thread:
    heard_at: Optional[float] = None   # monotonic arrival of the input chunk holding the window's last sample
    marks: list = field(default_factory=list)  # (kind, utterance) that start or end on this frame
    blendshapes: Optional[dict] = None  # ARKit weights of the mouth shown, when a BlendshapeMeter is on (model stage)

    @property
    def pts(self) -> int:
        """In core.timebase.TIME_BASE (audio samples)."""
        return frame_pts(self.index)


class FrameTimeline:
    """push() audio in any chunk size, get FrameUnits as soon as each frame's window is complete (212.5 ms later)."""

    def __init__(self, silence_db: float = -45.0):
        self.silence_rms = 10 ** (silence_db / 20)
        self._mel = StreamingMel(FPS)
        self._audio = np.zeros(0, np.float32)  # samples kept, starting at absolute sample _base
        self._base = 0
        self._received = 0
        self._next = 0
        self._pending: list[np.ndarray] = []  # windows out of the mel stream not yet paired with their audio
        self._last_window: Optional[np.ndarray] = None

    def push(self, pcm: np.ndarray) -> list[FrameUnit]:
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        self._audio = np.concatenate([self._audio, pcm])
        self._received += pcm.size
        self._pending += self._mel.push(pcm)
        return self._emit(final=False)

    def finish(self) -> list[FrameUnit]:
        """End of the audio: every remaining frame, ceil(samples / 640) in all (the last windows repeat the tail)."""
        self._pending += self._mel.finish()
        units = self._emit(final=True)
        total = frames_for(self._received)
        while self._next < total:
            units.append(self._unit(self._last_window))
        return units

    def _emit(self, final: bool) -> list[FrameUnit]:
        units = []
        while self._pending:
            end = (self._next + 1) * SAMPLES_PER_FRAME
            if not final and end > self._received:
                break
            units.append(self._unit(self._pending.pop(0)))
        return units

    def _unit(self, window: np.ndarray) -> FrameUnit:
        k = self._next
        start = k * SAMPLES_PER_FRAME
        audio = self._slice(start, start + SAMPLES_PER_FRAME)
        # what the window hears: mel frames 3.2k .. 3.2k+15, each centred on its hop with half an FFT either side
        span = self._slice(start - N_FFT // 2, start + LOOKAHEAD)
        speaking = rms(span) > self.silence_rms
        self._next += 1
        self._last_window = window
        self._drop_before(self._next * SAMPLES_PER_FRAME - N_FFT // 2)
        return FrameUnit(k, audio, window, speaking)

    def _slice(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) of the timeline; zeros before its start or after what has arrived."""
        out = np.zeros(end - start, np.float32)
        lo, hi = max(start, self._base), min(end, self._received)
        if hi > lo:
            out[lo - start:hi - start] = self._audio[lo - self._base:hi - self._base]
        return out

    def _drop_before(self, sample: int) -> None:
        if sample > self._base:
            cut = min(sample, self._received) - self._base
            self._audio = self._audio[cut:]
            self._base += cut


def frame_units(audio: np.ndarray | Iterable[np.ndarray], silence_db: float = -45.0) -> Iterator[FrameUnit]:
    """Every frame of a finite audio stream (an array or chunks of one), as it completes: the memory used is that of
    one chunk, not of the whole audio."""
    timeline = FrameTimeline(silence_db)
    chunks = np.array_split(audio, range(SAMPLE_RATE, len(audio), SAMPLE_RATE)) if isinstance(audio, np.ndarray) \
        else audio
    for chunk in chunks:
        yield from timeline.push(chunk)
    yield from timeline.finish()
