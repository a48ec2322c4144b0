"""Audio inputs. Each feeds 16 kHz mono float32 into an AudioBuffer; the engine's clock takes from it."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from audio.decode import AudioError
from core.threads import Worker
from core.timebase import SAMPLE_RATE

log = logging.getLogger("engine.render.sources")
MERGE_BELOW = SAMPLE_RATE // 50  # a pushed chunk joins a queued one of the same utterance shorter than 20 ms
SPANS_KEPT = 10 * SAMPLE_RATE    # how far back interrupt() can find rendered speech: past any latency target


@dataclass(frozen=True)
class Arrival:
    """Timeline samples [start, end) came from input that arrived at `at` (monotonic seconds)."""
    start: int
    end: int
    at: float


@dataclass(frozen=True)
class Mark:
    """Where an utterance starts or ends on the timeline (absolute sample position)."""
    position: int
    kind: str          # "start" | "end"
    tag: object


class AudioBuffer:
    """Thread-safe FIFO of samples. The live clock takes fixed slices; what is missing is silence.

    Audio pushed with a tag is an utterance: take() records where its first sample and (once close(tag) was
    called) its last sample land on the timeline, so the engine can say when it is actually shown. Every chunk is
    stamped when it arrives, and take() records where it lands, so the engine can measure input-to-screen latency."""

    def __init__(self):
        self._chunks: deque[tuple[np.ndarray, object, float]] = deque()  # (samples, tag, arrival time)
        self._size = 0
        self._per_tag: dict = {}            # samples still queued per utterance tag
        self._lock = threading.Lock()
        self._taken = 0                     # samples handed to the timeline so far, silence included
        self._started: set = set()
        self._closed: set = set()
        self._marks: list[Mark] = []
        self._arrivals: list[Arrival] = []
        self._spans: deque = deque()        # (start, end, tag): where recent input landed on the timeline
        self.ended = threading.Event()      # no more input will come (files done)

    def push(self, pcm: np.ndarray, tag: object = None) -> None:
        """Queue samples, finite and within full scale: NaN becomes silence and anything past ±1 is clipped, as
        the encoders' 16 bits would (whatever a source did before, the timeline and the mel stay finite). A chunk
        shorter than 20 ms joins the queued one before it when both belong to the same utterance, so a client
        sending one sample at a time costs a queue entry per 20 ms, not per sample."""
        pcm = np.clip(np.nan_to_num(np.asarray(pcm, np.float32).reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0),
                      -1.0, 1.0)
        if pcm.size:
            with self._lock:
                now = time.monotonic()
                if self._chunks and self._chunks[-1][1] == tag and self._chunks[-1][0].size < MERGE_BELOW:
                    tail, _, _ = self._chunks.pop()
                    pcm = np.concatenate([tail, pcm])
                    self._size -= tail.size
                    self._per_tag[tag] -= tail.size
                self._chunks.append((pcm, tag, now))
                self._size += pcm.size
                self._per_tag[tag] = self._per_tag.get(tag, 0) + pcm.size

    def close(self, tag: object) -> None:
        """Utterance `tag` is complete: its end is marked when its last sample is taken (now, if it was). An
        utterance that never had audio starts and ends here, so its owner hears of it and nothing keeps it."""
        with self._lock:
            if tag not in self._started and tag not in self._per_tag:
                self._marks.append(Mark(self._taken, "start", tag))
                self._marks.append(Mark(self._taken, "end", tag))
                return
            self._closed.add(tag)
            if tag in self._started and tag not in self._per_tag:
                self._end(tag, self._taken)

    def _end(self, tag: object, position: int) -> None:
        self._marks.append(Mark(position, "end", tag))
        self._started.discard(tag)
        self._closed.discard(tag)

    @property
    def available(self) -> int:
        return self._size

    def queued(self, tags: Iterable) -> int:
        """Samples still queued from these utterances."""
        with self._lock:
            return sum(self._per_tag.get(tag, 0) for tag in tags)

    @property
    def queued_tags(self) -> list:
        with self._lock:
            return [t for t in self._per_tag if t is not None]

    def take(self, n: int) -> np.ndarray:
        """n samples: what is queued, then zeros (a gap in the input is silence on the timeline)."""
        out = np.zeros(n, np.float32)
        filled = 0
        with self._lock:
            while filled < n and self._chunks:
                chunk, tag, arrived = self._chunks[0]
                if tag is not None and tag not in self._started:
                    self._started.add(tag)
                    self._marks.append(Mark(self._taken + filled, "start", tag))
                used = min(n - filled, chunk.size)
                out[filled:filled + used] = chunk[:used]
                self._arrivals.append(Arrival(self._taken + filled, self._taken + filled + used, arrived))
                self._spans.append((self._taken + filled, self._taken + filled + used, tag))
                filled += used
                self._size -= used
                self._per_tag[tag] -= used
                if not self._per_tag[tag]:
                    del self._per_tag[tag]
                if used == chunk.size:
                    self._chunks.popleft()
                    if tag in self._closed and tag not in self._per_tag:
                        self._end(tag, self._taken + filled)
                else:
                    self._chunks[0] = (chunk[used:], tag, arrived)
            self._taken += n
            while self._spans and self._spans[0][1] < self._taken - SPANS_KEPT:
                self._spans.popleft()
        return out

    def pop_marks(self) -> list[Mark]:
        with self._lock:
            marks, self._marks = self._marks, []
        return marks

    def pop_arrivals(self) -> list[Arrival]:
        """Where the input taken since the last call landed on the timeline, and when it arrived."""
        with self._lock:
            arrivals, self._arrivals = self._arrivals, []
        return arrivals

    def interrupt(self, tags: Optional[Iterable] = None) -> tuple[list, list]:
        """Drop what is queued now, all of it or only the utterances `tags`: (the timeline spans [start, end) taken
        lately from what was dropped, which frames already rendered may have heard; the tags dropped or cut short).
        Other utterances keep their queued and their rendered speech."""
        with self._lock:
            if tags is None:
                hit = lambda tag: True  # noqa: E731
            else:
                wanted = set(tags)
                hit = lambda tag: tag in wanted  # noqa: E731
            dropped = list(dict.fromkeys([t for t in self._per_tag if t is not None and hit(t)]
                                         + [t for t in self._started if hit(t)]))
            spans = [(start, end) for start, end, tag in self._spans if hit(tag)]
            kept = deque(c for c in self._chunks if not hit(c[1]))
            for chunk, tag, _ in self._chunks:
                if hit(tag):
                    self._size -= chunk.size
                    self._per_tag.pop(tag, None)
            self._chunks = kept
            self._started.difference_update(dropped)
            self._closed.difference_update(dropped)
            return spans, dropped


class Feeder:
    """Pushes a stream of audio chunks into a buffer from its own thread, never more than `ahead` seconds before the
    clock takes them: an hour-long file is never held whole in memory, and short chunks with a small `ahead` arrive
    the way a streaming TTS or a network client sends them."""

    def __init__(self, buffer: AudioBuffer, chunks: Iterable[np.ndarray], utterance: object = None,
                 ahead_seconds: float = 10.0, ends_input: bool = True):
        self.buffer, self.chunks, self.utterance = buffer, chunks, utterance
        self.ahead = int(ahead_seconds * SAMPLE_RATE)
        self.ends_input = ends_input
        self._stop = threading.Event()
        self._thread = Worker(self._run, "feeder")

    def start(self) -> "Feeder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            poll = min(0.05, self.ahead / SAMPLE_RATE / 4)
            for chunk in self.chunks:
                while self.buffer.available > self.ahead:
                    if self._stop.wait(poll):
                        return
                self.buffer.push(chunk, self.utterance)
        except AudioError as exc:  # the files were checked before the start; a failure now ends the input early
            log.error("%s", exc)
        finally:
            if self.utterance is not None:
                self.buffer.close(self.utterance)
            if self.ends_input:
                self.buffer.ended.set()


class Microphone:
    """Pushes the microphone into a buffer (sounddevice, 16 kHz mono, 20 ms blocks)."""

    def __init__(self, buffer: AudioBuffer, device: Optional[str | int] = None):
        try:
            import sounddevice  # PortAudio may be missing: only when a sound device is used
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
