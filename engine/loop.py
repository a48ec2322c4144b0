"""The engine: audio timeline -> frame units -> batched lip sync on the cached faces -> composite -> sinks.

Stages are generators. A file render chains them directly (no clock: as fast as it goes). A live run puts each
stage in its own thread behind a bounded queue, advances the audio timeline in real time (a gap in the input is
silence) and presents frame k at t0 + k/25 + latency on one monotonic clock, with its own 40 ms of audio, so every
sink stays in sync by construction.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from .composite import Compositor
from .mel import mel_basis
from .presenter import Presenter, ping_pong
from .sinks import Sink
from .sources import AudioBuffer
from .timeline import FPS, LOOKAHEAD, FrameTimeline, FrameUnit

log = logging.getLogger("engine")
TICK = 320  # live timeline step: 20 ms of audio


@dataclass(frozen=True)
class EngineConfig:
    batch_size: int = 16           # frames per model call (file renders); live runs use live_batch_size
    live_batch_size: int = 2       # small batches keep latency low
    silence_db: float = -45.0      # below this RMS a frame's window counts as silence: no inference, untouched frame
    latency_ms: float = 400.0      # live: audio-in -> frame-out target (>= 212.5 ms of mel lookahead)
    start_frame: int = 0           # where in the cached loop to start


@dataclass
class Stats:
    frames: int = 0
    inferred: int = 0
    infer_seconds: float = 0.0     # time spent in the model and composite for inferred frames
    late: int = 0                  # live frames presented after their time
    max_late_ms: float = 0.0
    # live: actual - planned presentation time (s) of the last 10 minutes of frames
    present_offsets: deque = field(default_factory=lambda: deque(maxlen=FPS * 600))


def render(units: Iterable[FrameUnit], presenter: Presenter, lipsync, compositor: Compositor, batch_size: int,
           start_frame: int = 0, stats: Optional[Stats] = None,
           too_late: Callable[[FrameUnit, int], bool] = lambda unit, pending: False
           ) -> Iterator[tuple[FrameUnit, np.ndarray]]:
    """Yield (unit, frame) in order. Speech on a frame with a face goes through the model in batches; everything
    else is the cached frame, untouched (closed natural mouth in silence, faceless frames pass through).

    `lipsync` is anything with predict(mel_windows (B,80,16), faces (B,S,S,3) uint8, landmarks (B,K,2) in crop
    pixels) -> faces: models.predictor.LipSyncPredictor (Wav2Lip) or models.mouthwarp.MouthAnimator.
    `too_late(unit, pending)` lets a live run skip the model for a frame that would miss its presentation time if
    it joined the `pending` frames already batched."""
    stats = stats or Stats()
    batch: list[tuple[FrameUnit, int]] = []

    def flush():
        if not batch:
            return
        started = time.perf_counter()
        indices = [i for _, i in batch]
        faces = np.stack([presenter.face(i) for i in indices])
        landmarks = np.stack([presenter.crop_landmarks(i) for i in indices])
        mouths = lipsync.predict(np.stack([u.window for u, _ in batch]), faces, landmarks)
        frames = compositor.compose(indices, mouths)
        stats.infer_seconds += time.perf_counter() - started
        stats.inferred += len(batch)
        for (unit, _), frame in zip(batch, frames):
            yield unit, frame
        batch.clear()

    for unit in units:
        index = ping_pong(unit.index + start_frame, presenter.frames)
        if unit.speaking and presenter.has_face[index] and not too_late(unit, len(batch)):
            batch.append((unit, index))
            if len(batch) >= batch_size:
                yield from flush()
            continue
        yield from flush()
        yield unit, compositor.passthrough(index)
    yield from flush()


def render_file(audio: np.ndarray, presenter: Presenter, lipsync, compositor: Compositor, sinks: list[Sink],
                cfg: EngineConfig = EngineConfig(), progress: bool = True, stats: Optional[Stats] = None) -> Stats:
    """Whole audio known in advance: ceil(len/640) frames, as fast as possible, to non-live sinks (mp4).

    Interrupted (Ctrl-C), the sinks are still closed: the mp4 is finished with the frames rendered so far."""
    from tqdm import tqdm

    stats = stats if stats is not None else Stats()
    timeline = FrameTimeline(cfg.silence_db)
    units = (u for part in (timeline.push(audio), timeline.finish()) for u in part)
    total = -(-len(audio) // 640)
    for sink in sinks:
        sink.open(presenter.width, presenter.height)
    try:
        with tqdm(total=total, unit="frame", desc="render", disable=not progress) as bar:
            for unit, frame in render(units, presenter, lipsync, compositor, cfg.batch_size, cfg.start_frame, stats):
                for sink in sinks:
                    sink.write(frame, unit.audio, unit.pts)
                stats.frames += 1
                bar.update(1)
    finally:
        for sink in sinks:
            sink.close()
    return stats


def wait_until(deadline: float) -> float:
    """Sleep until a monotonic deadline; return how late we are (s, >= 0)."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    return max(0.0, time.monotonic() - deadline)


def threaded(items: Iterable, maxsize: int, name: str, stop: threading.Event) -> Iterator:
    """Run a generator in its own thread, handing items over through a bounded queue (back-pressure)."""
    q: queue.Queue = queue.Queue(maxsize)
    done = object()
    failure: list[BaseException] = []

    def work():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            failure.append(exc)
        finally:
            q.put(done)

    threading.Thread(target=work, name=name, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            if failure:
                raise failure[0]
            return
        yield item


class LiveEngine:
    """Real-time loop. Feed audio with push() (or a Microphone into .buffer); frames go to live sinks on time."""

    def __init__(self, presenter: Presenter, lipsync, compositor: Compositor, sinks: list[Sink],
                 cfg: EngineConfig = EngineConfig()):
        if cfg.latency_ms < 1000 * LOOKAHEAD / 16000 + 40:
            raise ValueError(f"latency_ms must be at least {1000 * LOOKAHEAD / 16000 + 40:.0f} (mel lookahead + a frame)")
        self.presenter, self.lipsync, self.compositor, self.sinks, self.cfg = presenter, lipsync, compositor, sinks, cfg
        self.buffer = AudioBuffer()
        self.stats = Stats()
        self._stop = threading.Event()
        mel_basis()  # builds librosa's filter bank now (a 2 s import), not while the clock runs

    def push(self, pcm: np.ndarray) -> None:
        """Queue 16 kHz mono float audio to be spoken after what is already queued."""
        self.buffer.push(pcm)

    def stop(self) -> None:
        self._stop.set()

    def _timeline_units(self, t0: float) -> Iterator[FrameUnit]:
        """The audio timeline advancing in real time: every 20 ms, the next 20 ms of input or silence."""
        timeline = FrameTimeline(self.cfg.silence_db)
        position = 0
        while not self._stop.is_set():
            if self.buffer.ended.is_set() and self.buffer.available == 0:
                yield from timeline.finish()
                return
            wait_until(t0 + (position + TICK) / 16000)
            yield from timeline.push(self.buffer.take(TICK))
            position += TICK

    def run(self, max_seconds: Optional[float] = None) -> Stats:
        """Until stop(), the end of ended input, or max_seconds of output."""
        latency = self.cfg.latency_ms / 1000
        for sink in self.sinks:
            sink.open(self.presenter.width, self.presenter.height)
        t0 = time.monotonic()
        stats = self.stats

        def too_late(unit: FrameUnit, pending: int) -> bool:
            """Would this frame, batched behind `pending` others, miss its time at the measured model speed?"""
            per_frame = stats.infer_seconds / stats.inferred if stats.inferred else 0.0
            return time.monotonic() + per_frame * (pending + 1) > t0 + unit.pts + latency - 0.5 / FPS

        units = threaded(self._timeline_units(t0), 8, "timeline", self._stop)
        frames = threaded(render(units, self.presenter, self.lipsync, self.compositor, self.cfg.live_batch_size,
                                 self.cfg.start_frame, self.stats, too_late=too_late), 8, "render", self._stop)
        try:
            for unit, frame in frames:
                planned = t0 + unit.pts + latency
                late = wait_until(planned)
                for sink in self.sinks:
                    sink.write(frame, unit.audio, unit.pts)
                self.stats.frames += 1
                self.stats.present_offsets.append(time.monotonic() - planned)
                if late > 0.5 / FPS:
                    self.stats.late += 1
                    self.stats.max_late_ms = max(self.stats.max_late_ms, late * 1000)
                if max_seconds is not None and unit.pts >= max_seconds:
                    break
        finally:
            self._stop.set()
            for sink in self.sinks:
                sink.close()
        if self.stats.late:
            log.warning("%d of %d frames were late (worst %.0f ms): this machine cannot keep up in real time with "
                        "these settings", self.stats.late, self.stats.frames, self.stats.max_late_ms)
        return self.stats
