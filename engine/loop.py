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
from .mel import N_FFT, mel_basis
from .presenter import Presenter, ping_pong
from .sinks import Sink
from .sources import AudioBuffer
from .timeline import FPS, LOOKAHEAD, SAMPLES_PER_FRAME as SAMPLES, FrameTimeline, FrameUnit, frame_units

log = logging.getLogger("engine")
TICK = SAMPLES  # live timeline step: one frame of audio (40 ms); a frame's window completes exactly on a tick


@dataclass(frozen=True)
class EngineConfig:
    batch_size: int = 16           # frames per model call (file renders); live runs use live_batch_size
    live_batch_size: int = 1       # one frame per call: a batch would wait 40 ms per extra frame
    silence_db: float = -45.0      # below this RMS a frame's window counts as silence: no inference, untouched frame
    latency_ms: float = 300.0      # live: audio-in -> frame-out target (>= 212.5 ms of mel lookahead)
    start_frame: int = 0           # where in the cached loop to start


@dataclass
class Stats:
    frames: int = 0
    speech: int = 0                # frames with speech and a face: the ones that want the model
    inferred: int = 0
    infer_seconds: float = 0.0     # time spent in the model stage (crops + model) for inferred frames
    recent_costs: deque = field(default_factory=lambda: deque(maxlen=16))  # s per inferred frame, latest calls
    late: int = 0                  # live frames presented after their time
    max_late_ms: float = 0.0
    # live: actual - planned presentation time (s) of the last 10 minutes of frames
    present_offsets: deque = field(default_factory=lambda: deque(maxlen=FPS * 600))


@dataclass
class Mouths:
    """Frames leaving the model stage: cache frames `indices` for `units`, with generated crops, or None (the
    cached frame as it is: silence, no face, or too late for the model)."""
    units: list[FrameUnit]
    indices: list[int]
    faces: Optional[np.ndarray]


def lip_sync(units: Iterable[FrameUnit], presenter: Presenter, lipsync, batch_size: int, start_frame: int = 0,
             stats: Optional[Stats] = None, too_late: Callable[[FrameUnit, int], bool] = lambda unit, pending: False
             ) -> Iterator[Mouths]:
    """The model stage, in frame order. Speech on a frame with a face goes through the model in batches;
    everything else passes as None.

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
        spent = time.perf_counter() - started
        stats.infer_seconds += spent
        stats.inferred += len(batch)
        stats.recent_costs.extend([spent / len(batch)] * len(batch))
        yield Mouths([u for u, _ in batch], indices, mouths)
        batch.clear()

    for unit in units:
        index = ping_pong(unit.index + start_frame, presenter.frames)
        wanted = bool(unit.speaking and presenter.has_face[index])
        stats.speech += wanted
        if wanted and not too_late(unit, len(batch)):
            batch.append((unit, index))
            if len(batch) >= batch_size:
                yield from flush()
            continue
        yield from flush()
        yield Mouths([unit], [index], None)
    yield from flush()


def composite(stream: Iterable[Mouths], compositor: Compositor, watched: Callable[[], bool] = lambda: True
              ) -> Iterator[tuple[FrameUnit, Optional[np.ndarray]]]:
    """The paste-back stage: (unit, full frame) in order. Runs in its own thread, beside the model.

    While `watched()` is False no sink needs pixels (a server nobody views): the frame is None and nothing is
    decoded or pasted, which keeps an idle server idle."""
    for item in stream:
        if not watched():
            yield from ((unit, None) for unit in item.units)
        elif item.faces is None:
            yield item.units[0], compositor.passthrough(item.indices[0])
        else:
            yield from zip(item.units, compositor.compose(item.indices, item.faces))


def render(units: Iterable[FrameUnit], presenter: Presenter, lipsync, compositor: Compositor, batch_size: int,
           start_frame: int = 0, stats: Optional[Stats] = None,
           too_late: Callable[[FrameUnit, int], bool] = lambda unit, pending: False,
           stop: Optional[threading.Event] = None, watched: Callable[[], bool] = lambda: True
           ) -> Iterator[tuple[FrameUnit, Optional[np.ndarray]]]:
    """Yield (unit, frame) in order: the model stage and the composite stage overlapped in two threads."""
    stop = stop or threading.Event()
    mouths = threaded(lip_sync(units, presenter, lipsync, batch_size, start_frame, stats, too_late), 4, "model", stop)
    return threaded(composite(mouths, compositor, watched), 8, "composite", stop)


def render_file(audio: np.ndarray | Iterable[np.ndarray], presenter: Presenter, lipsync, compositor: Compositor,
                sinks: list[Sink], cfg: EngineConfig = EngineConfig(), progress: bool = True,
                stats: Optional[Stats] = None, total_samples: Optional[int] = None) -> Stats:
    """Whole audio known in advance (an array, or a stream of chunks with `total_samples` for the progress bar):
    ceil(samples/640) frames, as fast as possible, to non-live sinks (mp4). A stream is consumed as it renders,
    so an hour of audio takes the memory of a minute.

    Interrupted (Ctrl-C, SIGTERM), the sinks are still closed: the mp4 is finished with the frames rendered so far."""
    from tqdm import tqdm

    stats = stats if stats is not None else Stats()
    if isinstance(audio, np.ndarray):
        total_samples = len(audio)
    total = -(-total_samples // SAMPLES) if total_samples is not None else None
    stop = threading.Event()
    for sink in sinks:
        sink.open(presenter.width, presenter.height)
    try:
        with tqdm(total=total, unit="frame", desc="render", disable=not progress) as bar:
            for unit, frame in render(frame_units(audio, cfg.silence_db), presenter, lipsync, compositor,
                                      cfg.batch_size, cfg.start_frame, stats, stop=stop):
                for sink in sinks:
                    sink.write(frame, unit.audio, unit.pts)
                stats.frames += 1
                bar.update(1)
    finally:
        stop.set()
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
        self.on_event: Optional[Callable[[dict], None]] = None  # called from the presenting thread
        self.started_at: Optional[float] = None                 # monotonic t0 of the running clock
        self._stop = threading.Event()
        self._marks: deque = deque()    # (frame index, kind, tag) waiting for their frame to be shown
        self._marks_lock = threading.Lock()
        self._mute_before = 0           # frames whose window starts before this sample were cut by interrupt()
        self._last_shown = -1
        mel_basis()  # builds librosa's filter bank now (a 2 s import), not while the clock runs

    def push(self, pcm: np.ndarray, utterance: object = None) -> None:
        """Queue 16 kHz mono float audio to be spoken after what is already queued. Audio pushed with an
        `utterance` id reports speech_started/speech_ended events (see close())."""
        self.buffer.push(pcm, utterance)

    def close(self, utterance: object) -> None:
        """Utterance complete: its speech_ended event comes when its last frame is shown."""
        self.buffer.close(utterance)

    def interrupt(self) -> list:
        """Drop queued speech now: frames already rendered from it are replaced by the closed-mouth cached frame
        and muted from the next frame on. Returns the utterances dropped or cut short."""
        position, dropped = self.buffer.interrupt()
        self._mute_before = position + N_FFT // 2  # frame k hears from sample 640 k - 400 on
        with self._marks_lock:
            self._marks = deque(m for m in self._marks if m[2] not in dropped)
        closed_from = self._last_shown + 1  # the first frame shown from now on has the mouth closed
        for tag in dropped:
            self._emit({"type": "speech_interrupted", "utterance": tag, "frame": closed_from,
                        "pts": closed_from / FPS})
        return dropped

    def stop(self) -> None:
        self._stop.set()

    def _watched(self) -> bool:
        """Does any sink want pixels now? A sink may say no (`wants_frames`), as WebRTC does with no viewer."""
        return any(getattr(sink, "wants_frames", True) for sink in self.sinks)

    def _emit(self, event: dict) -> None:
        if self.on_event:
            try:
                self.on_event(event)
            except Exception:  # a listener's failure must never stop the clock
                log.exception("event listener failed")

    def _take(self, samples: int) -> np.ndarray:
        """The next samples of the timeline, noting on which frames utterances start and end."""
        pcm = self.buffer.take(samples)
        marks = [(m.position // SAMPLES if m.kind == "start" else max(m.position - 1, 0) // SAMPLES, m.kind, m.tag)
                 for m in self.buffer.pop_marks()]
        with self._marks_lock:
            self._marks.extend(marks)
        return pcm

    def _show_marks(self, unit: FrameUnit, shown_at: float) -> None:
        while True:
            with self._marks_lock:
                if not self._marks or self._marks[0][0] > unit.index:
                    return
                _, kind, tag = self._marks.popleft()
            self._emit({"type": f"speech_{'started' if kind == 'start' else 'ended'}", "utterance": tag,
                        "frame": unit.index, "pts": unit.pts, "shown_at": shown_at})

    def _timeline_units(self, t0: float) -> Iterator[FrameUnit]:
        """The audio timeline advancing in real time: every 40 ms, the next 40 ms of input or silence.

        The first step is shorter (200 samples) so that ticks fall exactly where frame windows complete
        (640 k + 3400): no frame waits for the rest of a tick, and one frame leaves per tick. Audio that arrives
        between ticks is placed at the start of the next step, so a finer tick would not show it sooner."""
        timeline = FrameTimeline(self.cfg.silence_db)
        position, step = 0, LOOKAHEAD % TICK or TICK
        while not self._stop.is_set():
            if self.buffer.ended.is_set() and self.buffer.available < step:  # the input's last samples, unpadded
                yield from timeline.push(self._take(self.buffer.available))
                yield from timeline.finish()
                return
            wait_until(t0 + (position + step) / 16000)
            yield from timeline.push(self._take(step))
            position, step = position + step, TICK

    def run(self, max_seconds: Optional[float] = None) -> Stats:
        """Until stop(), the end of ended input, or max_seconds of output."""
        latency = self.cfg.latency_ms / 1000
        for sink in self.sinks:
            sink.open(self.presenter.width, self.presenter.height)
        t0 = self.started_at = time.monotonic()
        stats = self.stats

        skipped = 0

        def too_late(unit: FrameUnit, pending: int) -> bool:
            """Would this frame, batched behind `pending` others, miss its time at the recent model speed?

            After a second of skipped frames one is tried anyway, so a slow call (a cold start, a busy moment)
            cannot stop the model for good."""
            nonlocal skipped
            per_frame = float(np.median(stats.recent_costs)) if stats.recent_costs and skipped < FPS else 0.0
            late = time.monotonic() + per_frame * (pending + 1) > t0 + unit.pts + latency - 0.5 / FPS
            skipped = skipped + 1 if late else 0
            return late

        units = threaded(self._timeline_units(t0), 8, "timeline", self._stop)
        frames = render(units, self.presenter, self.lipsync, self.compositor, self.cfg.live_batch_size,
                        self.cfg.start_frame, self.stats, too_late, self._stop, self._watched)
        try:
            for unit, frame in frames:
                planned = t0 + unit.pts + latency
                audio = unit.audio
                if unit.index * SAMPLES < self._mute_before:  # rendered from speech that interrupt() dropped
                    frame = self.compositor.passthrough(ping_pong(unit.index + self.cfg.start_frame,
                                                                  self.presenter.frames)) if frame is not None else None
                    audio = np.zeros_like(audio)
                late = wait_until(planned)
                for sink in self.sinks:
                    sink.write(frame, audio, unit.pts)
                self._last_shown = unit.index
                self._show_marks(unit, time.time())
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
