"""The engine: audio timeline -> frame units -> batched lip sync on the cached faces -> composite -> sinks.

Stages are generators. A file render chains them directly (no clock: as fast as it goes). A live run puts each
stage in its own thread behind a bounded queue, advances the audio timeline in real time (a gap in the input is
silence) and presents frame k at t0 + k/25 + latency on one monotonic clock, with its own 40 ms of audio (at
50 frames/s: frame k with the first 20 ms, the in-between frame 20 ms later with the rest), so every sink stays
in sync by construction.
"""
from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from audio.mel import mel_basis
from core.timebase import (FPS, IN_BETWEEN_OFFSET, LOOKAHEAD, N_FFT, OUTPUT_RATES, SAMPLE_RATE,
                           SAMPLES_PER_FRAME as SAMPLES, frames_for, interpolated, seconds)
from core.threads import Worker

from .composite import Compositor
from .backdrop import Backdrop
from .interpolate import InBetween, Midpoint, OutputFrame, interleaved, audio_share
from .presenter import Presenter, ping_pong
from .sink import Sink
from .sources import AudioBuffer
from .timeline import FrameTimeline, FrameUnit, frame_units

log = logging.getLogger("engine")
TICK = SAMPLES  # live timeline step: one frame of audio (40 ms); a frame's window completes exactly on a tick


@dataclass(frozen=True)
class EngineConfig:
    batch_size: int = 16           # frames per model call (file renders); live runs use live_batch_size
    live_batch_size: int = 1       # one frame per call: a batch would wait 40 ms per extra frame
    silence_db: float = -45.0      # below this RMS a frame's window counts as silence: no inference, untouched frame
    latency_ms: float = 300.0      # live: audio-in -> frame-out target (>= 212.5 ms of mel lookahead)
    start_frame: int = 0           # where in the cached loop to start
    fps: int = FPS                 # output frames/s: 25, or 50 with an optical-flow frame between each pair
    backdrop: Backdrop = Backdrop("video")  # behind the presenter: the recorded video, alpha, or a key colour
    interpolator: Optional[Midpoint] = None  # makes the in-between frames at 50 fps (RIFE); None: OpenCV's DIS flow


@dataclass
class Stats:
    """What a run did. Each field has one writer: the model stage (speech, inferred, infer_seconds, skipped), the
    output stage (between_seconds) or the presenting thread (the rest); other threads only read them."""
    frames: int = 0
    speech: int = 0                # frames with speech and a face: the ones that want the model
    inferred: int = 0
    infer_seconds: float = 0.0     # time spent in the model stage (crops + model) for inferred frames
    skipped: int = 0               # live: speech frames shown without the model because it would have been late
    presented: int = 0             # live frames the sinks got (twice `frames` at 50 frames/s)
    late: int = 0                  # of those, presented after their time
    max_late_ms: float = 0.0
    first_frame_at: Optional[float] = None  # monotonic time the first frame reached the sinks
    # live, the last 10 minutes of frames presented (at up to 50 frames/s): actual - planned presentation time (s)
    present_offsets: deque = field(default_factory=lambda: deque(maxlen=max(OUTPUT_RATES) * 600))
    # live, the last 10 minutes of frames with input: presentation time - arrival of the chunk that completed the
    # frame's mel window (s). It includes any wait behind speech queued before it; with input streaming in real
    # time it is the latency target minus the 212.5 ms of lookahead (the frame's own sound came that much earlier).
    input_latencies: deque = field(default_factory=lambda: deque(maxlen=FPS * 600))
    # --fps 50, the last 10 minutes: seconds each in-between frame took to make (it waits for the next frame too)
    between_seconds: deque = field(default_factory=lambda: deque(maxlen=FPS * 600))

    def latency_ms(self) -> dict:
        """Percentiles (ms) of the input-to-screen latency and of the pacing offset, as /status and logs give them."""
        def percentiles(values) -> dict:
            data = np.array(values, np.float64) * 1000
            return {"p50": float(np.percentile(data, 50)), "p95": float(np.percentile(data, 95)),
                    "frames": len(data)} if len(data) else {"p50": None, "p95": None, "frames": 0}
        return {"input": percentiles(list(self.input_latencies)),
                "pacing_offset": percentiles(list(self.present_offsets))}


@dataclass
class SkipPolicy:
    """Live runs: should a speech frame skip the model because the model would make it miss its time?

    It keeps the cost per frame of the last `window` model calls and skips a frame when, batched behind `pending`
    others at the median cost, it would be presented later than `margin` past its deadline. After `retry_after`
    skips in a row one frame is tried anyway, so one slow call (a busy moment) cannot switch the model off for good.
    The first `cold_calls` calls are not counted: the first model call in a new thread pays one-off costs (on an H200,
    Wav2Lip-288 at batch 1 took 95-134 ms there against 4-6 ms after), and counted it made a live run skip its first
    second of speech. Owned by the model stage."""
    window: int = 16
    margin: float = 0.5 / FPS  # half a frame
    retry_after: int = FPS
    cold_calls: int = 1

    def __post_init__(self):
        self._costs: deque = deque(maxlen=self.window)
        self._skipped_in_a_row = 0
        self._calls = 0

    def record(self, seconds: float, frames: int) -> None:
        self._calls += 1
        if self._calls > self.cold_calls:
            self._costs.extend([seconds / frames] * frames)

    def skip(self, now: float, deadline: float, pending: int) -> bool:
        per_frame = float(np.median(self._costs)) if self._costs and self._skipped_in_a_row < self.retry_after \
            else 0.0
        late = now + per_frame * (pending + 1) > deadline - self.margin
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if late else 0
        return late


@dataclass
class Mouths:
    """Frames leaving the model stage: cache frames `indices` for `units`, with generated crops, or None (the
    cached frame as it is: silence, no face, or too late for the model)."""
    units: list[FrameUnit]
    indices: list[int]
    faces: Optional[np.ndarray]


def lip_sync(units: Iterable[FrameUnit], presenter: Presenter, lipsync, batch_size: int, start_frame: int = 0,
             stats: Optional[Stats] = None, deadline: Optional[Callable[[FrameUnit], float]] = None,
             policy: Optional[SkipPolicy] = None, faces: Optional[Callable[[list[int]], object]] = None,
             meter=None) -> Iterator[Mouths]:
    """The model stage, in frame order. Speech on a frame with a face goes through the model in batches;
    everything else passes as None.

    `lipsync` is a models.contract.LipModel: predict(mel_windows (B,80,16), faces (B,S,S,3) uint8, landmarks (B,K,2)
    in crop pixels) -> faces (Wav2Lip, the mouth animator, IP_LAP, a session's shared model). A model with
    `window_frames` n > 1 (engine.render.iplap.IplapLipSync) gets each frame's last n mel windows (B,n,80,16) and the
    cache frames shown around it (B,n, `frames`); a `scheduled` one (shared between sessions, batching by deadline)
    the time the batch's first frame is shown (`due`).
    A live run gives each frame's presentation `deadline` (monotonic) and a SkipPolicy: a frame the model would
    make late is shown as the cached frame instead, and counted in stats.skipped. `faces(indices)` gives the
    cached crops the model starts from: numpy from the presenter, or device tensors from the device pipeline.
    A BlendshapeMeter (`meter`) gives each unit the ARKit weights of the mouth it will show; with no `lipsync`
    (blendshapes only) no pixel is made and the weights are those of the mouth the animator would show."""
    stats = stats or Stats()
    policy = policy or SkipPolicy()
    faces = faces or (lambda indices: np.stack([presenter.face(i) for i in indices]))
    batch: list[tuple[FrameUnit, int]] = []
    span = lipsync.window_frames if lipsync is not None else 1  # IP_LAP: each frame's window of 5
    recent: deque = deque(maxlen=span)  # the last `span` units' mel windows, this one last
    contexts: dict[int, np.ndarray] = {}

    def flush():
        if not batch:
            return
        started = time.perf_counter()
        indices = [i for _, i in batch]
        mouths = None  # with no lip model (blendshapes only), no model inputs are gathered either
        if lipsync is not None:
            landmarks = np.stack([presenter.crop_landmarks(i) for i in indices])
            if span > 1:
                windows = np.stack([contexts.pop(u.index) for u, _ in batch])
                shown = np.array([[ping_pong(max(0, u.index + d) + start_frame, presenter.frames)
                                   for d in range(-(span // 2), span // 2 + 1)] for u, _ in batch])
            else:
                windows, shown = np.stack([u.window for u, _ in batch]), None
            due = min(deadline(u) for u, _ in batch) if lipsync.scheduled and deadline is not None else float("inf")
            mouths = lipsync.predict(windows, faces(indices), landmarks, frames=shown, due=due)
        skipped = mouths is None and lipsync is not None  # the shared model could not make their time
        for k, (unit, index) in enumerate(batch):  # (a meter reading pixels costs time the policy must see)
            measure(unit, index, driven=not skipped, face=mouths[k] if mouths is not None else None)
        spent = time.perf_counter() - started
        policy.record(spent, len(batch))
        if skipped:  # the cached frames, as a skip
            stats.skipped += len(batch)
            yield from (Mouths([u], [i], None) for u, i in batch)
        else:
            stats.infer_seconds += spent
            stats.inferred += len(batch)
            yield Mouths([u for u, _ in batch], indices, mouths)
        batch.clear()

    def measure(unit: FrameUnit, index: int, driven: bool, face=None) -> None:
        if meter is not None:
            unit.blendshapes = meter.driven(unit.window, index, face) if driven else meter.still(index)

    for unit in units:
        index = ping_pong(unit.index + start_frame, presenter.frames)
        recent.append(unit.window)
        wanted = bool(unit.speaking and presenter.has_face[index])
        stats.speech += wanted
        skip = wanted and deadline is not None and policy.skip(time.monotonic(), deadline(unit), len(batch))
        stats.skipped += skip
        if wanted and not skip:
            batch.append((unit, index))
            if span > 1:  # before the first frames, the first window stands in (IP_LAP's max(0, k - 2))
                contexts[unit.index] = np.stack([recent[0]] * (span - len(recent)) + list(recent))
            if len(batch) >= batch_size:
                yield from flush()
            continue
        yield from flush()
        measure(unit, index, driven=False)
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
            yield from ((unit, compositor.passthrough(index)) for unit, index in zip(item.units, item.indices))
        else:
            yield from zip(item.units, compositor.compose(item.indices, item.faces))


def render(units: Iterable[FrameUnit], presenter: Presenter, lipsync, compositor: Compositor, batch_size: int,
           start_frame: int = 0, stats: Optional[Stats] = None, stop: Optional[threading.Event] = None,
           deadline: Optional[Callable[[FrameUnit], float]] = None, watched: Callable[[], bool] = lambda: True,
           meter=None) -> Iterator[tuple[FrameUnit, Optional[np.ndarray]]]:
    """Yield (unit, frame) in order: the model stage and the composite stage overlapped in two threads; with a
    device compositor a third stage brings each finished frame to the host (one copy, into pinned memory)."""
    stop = stop or threading.Event()
    mouths = threaded(lip_sync(units, presenter, lipsync, batch_size, start_frame, stats, deadline,
                               faces=compositor.faces, meter=meter), 4, "model", stop)
    frames = threaded(composite(mouths, compositor, watched), 8, "composite", stop)
    if getattr(compositor, "on_device", False):
        frames = threaded(((unit, to_host(frame)) for unit, frame in frames), 8, "download", stop)
    return frames


def to_host(frame) -> Optional[np.ndarray]:
    """A finished frame as numpy for the sinks: a device tensor is copied once, into pinned memory, on its own CUDA
    stream (so the copy overlaps the next frames' work on the GPU)."""
    if frame is None or isinstance(frame, np.ndarray):
        return frame
    if frame.device.type != "cuda":
        return frame.numpy()
    import torch  # torch: only for frames on a device
    host = torch.empty(frame.shape, dtype=torch.uint8, pin_memory=True)
    stream = _copy_stream(frame.device)
    stream.wait_stream(torch.cuda.default_stream(frame.device))
    with torch.cuda.stream(stream):
        host.copy_(frame, non_blocking=True)
    stream.synchronize()
    return host.numpy()


@lru_cache(maxsize=None)
def _copy_stream(device):
    import torch  # torch: only for frames on a device
    return torch.cuda.Stream(device)


def render_file(audio: np.ndarray | Iterable[np.ndarray], presenter: Presenter, lipsync, compositor: Compositor,
                sinks: list[Sink], cfg: EngineConfig = EngineConfig(), progress: bool = True,
                stats: Optional[Stats] = None, total_samples: Optional[int] = None, meter=None,
                blendshapes: Optional[list] = None) -> Stats:
    """Whole audio known in advance (an array, or a stream of chunks with `total_samples` for the progress bar):
    ceil(samples/640) frames, as fast as possible, to non-live sinks (mp4). A stream is consumed as it renders,
    so an hour of audio takes the memory of a minute.

    Interrupted (Ctrl-C, SIGTERM), the sinks are still closed: the mp4 is finished with the frames rendered so far.
    With a BlendshapeMeter each frame's weights are appended to `blendshapes`, in frame order; with no sink wanting
    pixels (blendshapes only) no frame is composited."""

    stats = stats if stats is not None else Stats()
    if isinstance(audio, np.ndarray):
        total_samples = len(audio)
    total = frames_for(total_samples) if total_samples is not None else None
    stop = threading.Event()
    for sink in sinks:
        sink.open(presenter.width, presenter.height)
    frames = render(frame_units(audio, cfg.silence_db), presenter, lipsync, compositor, cfg.batch_size,
                    cfg.start_frame, stats, stop=stop, meter=meter, watched=lambda: bool(sinks))
    try:
        with tqdm(total=total, unit="frame", desc="render", disable=not progress) as bar:
            def made() -> Iterator[tuple[tuple[np.ndarray, int], Optional[np.ndarray], int]]:
                for unit, frame in frames:
                    if blendshapes is not None:
                        blendshapes.append(unit.blendshapes)
                    if stats.first_frame_at is None:
                        stats.first_frame_at = time.monotonic()
                    stats.frames += 1
                    bar.update(1)
                    yield (unit.audio, unit.pts), frame, ping_pong(unit.index + cfg.start_frame, presenter.frames)

            for item in output_frames(made(), presenter, compositor, cfg):
                samples, pts = audio_share(*item.tag, item, cfg.fps)
                for sink in sinks:
                    sink.write(item.frame, samples, pts)
    finally:
        stop.set()
        frames.close()  # the stages' threads are joined before the caller closes the meter or the model
        stopping = isinstance(sys.exc_info()[1], KeyboardInterrupt)
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # stopped before its first frame: nothing to finish, and the stop is the news
                if not stopping:
                    raise
                log.info("stopped: %s", exc)
    return stats


def output_frames(frames: Iterable[tuple[object, Optional[np.ndarray], int]], presenter: Presenter,
                  compositor: Compositor, cfg: EngineConfig, stats: Optional[Stats] = None) -> Iterator[OutputFrame]:
    """(tag, frame, cache frame) as the engine makes them -> what the sinks show: at cfg.fps (an optical-flow frame
    between each pair at 50; its cost goes to stats.between_seconds), over cfg.backdrop (the recorded video, alpha
    or a key colour, from the cache's matte)."""
    if not interpolated(cfg.fps):
        stream = (OutputFrame(tag, frame, index, index, False) for tag, frame, index in frames)
    else:
        in_between = InBetween(presenter, heads=compositor.enhance != "none", interpolator=cfg.interpolator)

        def between(a: np.ndarray, b: np.ndarray, i: int, j: int) -> np.ndarray:
            started = time.perf_counter()
            middle = in_between(a, b, i, j)
            if stats is not None:
                stats.between_seconds.append(time.perf_counter() - started)
            return middle
        stream = interleaved(frames, between)
    for item in stream:
        yield item._replace(frame=over_backdrop(item.frame, presenter, cfg.backdrop, item.cache_from,
                                                item.cache_to))


def over_backdrop(frame: Optional[np.ndarray], presenter: Presenter, backdrop: Backdrop, i: int, j: int
                  ) -> Optional[np.ndarray]:
    if frame is None or not backdrop.needs_matte:
        return frame
    return backdrop.apply(frame, presenter.matte(i, j))


def wait_until(deadline: float, stop: Optional[threading.Event] = None) -> float:
    """Sleep until a monotonic deadline (or `stop`); return how late we are (s, >= 0)."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        if stop is None:
            time.sleep(remaining)
        else:
            stop.wait(remaining)
    return max(0.0, time.monotonic() - deadline)


def threaded(items: Iterable, maxsize: int, name: str, stop: threading.Event) -> Iterator:
    """Run a generator in its own thread, handing items over through a bounded queue (back-pressure).

    When the consumer stops early (an error, Ctrl-C, SIGTERM) `stop` is set; either way the thread is joined before
    this generator returns: no stage is left running a model call while the interpreter shuts down (OpenVINO aborts the
    process if one is)."""
    q: queue.Queue = queue.Queue(maxsize)
    done = object()
    failure: list[BaseException] = []

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not offer(item):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            failure.append(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator upstream is closed here, in this thread, not left to the collector
                close()
            offer(done)

    thread = Worker(work, name)
    thread.start()
    finished = False
    try:
        while True:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set() and not thread.is_alive():
                    return
                continue
            if item is done:
                finished = True
                if failure:
                    raise failure[0]
                return
            yield item
    finally:
        if not finished:  # the consumer left early: the stages upstream stop too
            stop.set()
        thread.join(timeout=30)


class LiveEngine:
    """Real-time loop. Feed audio with push() (or a Microphone into .buffer); frames go to live sinks on time.

    Five threads, each owning its state: the timeline stage (the audio clock, where utterances start and end, when
    input arrived), the model stage (batches, the skip policy), the composite stage, the output stage (in-between
    frames at 50 frames/s, the backdrop) and the presenting thread (the caller of run(): pacing, events, muting
    after an interrupt). Frames carry what the presenting thread needs
    from the timeline; interrupt() sends it a message; nothing else is shared but the input buffer and Stats."""

    def __init__(self, presenter: Presenter, lipsync, compositor: Compositor, sinks: list[Sink],
                 cfg: EngineConfig = EngineConfig(), meter=None):
        between = interpolated(cfg.fps)
        floor_ms = 1000 * seconds(LOOKAHEAD + SAMPLES + (IN_BETWEEN_OFFSET if between else 0))
        if cfg.latency_ms < floor_ms:
            raise ValueError(f"latency_ms must be at least {floor_ms:.0f} (mel lookahead + a frame"
                             f"{', + 20 ms for the in-between frame' if between else ''})")
        self.presenter, self.lipsync, self.compositor, self.sinks, self.cfg = presenter, lipsync, compositor, sinks, cfg
        self.meter = meter  # a BlendshapeMeter: a `blendshapes` event per presented frame
        self.buffer = AudioBuffer()
        self.stats = Stats()
        self.on_event: Optional[Callable[[dict], None]] = None  # called from the presenting thread
        self.started_at: Optional[float] = None                 # monotonic t0 of the running clock
        self._stop = threading.Event()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()    # interrupt() -> the presenting thread
        mel_basis()  # builds librosa's filter bank now (a 2 s import), not while the clock runs

    def push(self, pcm: np.ndarray, utterance: object = None) -> None:
        """Queue 16 kHz mono float audio to be spoken after what is already queued. Audio pushed with an
        `utterance` id reports speech_started/speech_ended events (see close())."""
        self.buffer.push(pcm, utterance)

    def close(self, utterance: object) -> None:
        """Utterance complete: its speech_ended event comes when its last frame is shown."""
        self.buffer.close(utterance)

    def interrupt(self, utterances: Optional[Iterable] = None, ack: object = None) -> list:
        """Drop queued speech now (all, or only these utterances): frames already rendered from it are replaced by
        the closed-mouth cached frame and muted from the next frame on, whose number the speech_interrupted
        events give. With `ack`, an {"type": "interrupted", "utterance": ack} event comes just before that frame,
        whatever was dropped: a listener of the frames knows where the cut falls. Returns the utterances dropped
        or cut short."""
        spans, dropped = self.buffer.interrupt(utterances)
        if dropped or spans or ack is not None:
            self._inbox.put((spans, dropped, ack))
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

    def _timeline_units(self, t0: float) -> Iterator[FrameUnit]:
        """The audio timeline advancing in real time: every 40 ms, the next 40 ms of input or silence.

        The first step is shorter (200 samples) so that ticks fall exactly where frame windows complete
        (640 k + 3400): no frame waits for the rest of a tick, and one frame leaves per tick. Audio that arrives
        between ticks is placed at the start of the next step, so a finer tick would not show it sooner. Each frame
        leaves with the utterance marks that fall on it and the arrival time of the input that completed it."""
        timeline = FrameTimeline(self.cfg.silence_db)
        marks: deque = deque()      # (frame, kind, tag), in frame order
        arrivals: deque = deque()   # Arrival spans not yet passed by a frame's window end

        def annotated(units: list[FrameUnit]) -> Iterator[FrameUnit]:
            nonlocal marks
            for mark in self.buffer.pop_marks():
                end = mark.kind == "end"
                marks.append(((max(mark.position - 1, 0) if end else mark.position) // SAMPLES, mark.kind, mark.tag))
            marks = deque(sorted(marks, key=lambda m: m[0]))  # an end marked late (close() after its last sample)
            arrivals.extend(self.buffer.pop_arrivals())
            for unit in units:
                last_heard = unit.index * SAMPLES + LOOKAHEAD - 1
                while arrivals and arrivals[0].end <= last_heard:
                    arrivals.popleft()
                if arrivals and arrivals[0].start <= last_heard:
                    unit.heard_at = arrivals[0].at
                while marks and marks[0][0] <= unit.index:
                    unit.marks.append(marks.popleft()[1:])
                yield unit

        position, step = 0, LOOKAHEAD % TICK or TICK
        while not self._stop.is_set():
            if self.buffer.ended.is_set() and self.buffer.available < step:  # the input's last samples, unpadded
                pcm = self.buffer.take(self.buffer.available)
                yield from annotated(timeline.push(pcm) + timeline.finish())
                return
            wait_until(t0 + (position + step) / SAMPLE_RATE, self._stop)
            yield from annotated(timeline.push(self.buffer.take(step)))
            position, step = position + step, TICK

    def run(self, max_seconds: Optional[float] = None) -> Stats:
        """Until stop(), the end of ended input, or max_seconds of output."""
        latency = self.cfg.latency_ms / 1000
        for sink in self.sinks:
            sink.open(self.presenter.width, self.presenter.height)
        t0 = self.started_at = time.monotonic()
        stats = self.stats
        units = threaded(self._timeline_units(t0), 8, "timeline", self._stop)
        frames = render(units, self.presenter, self.lipsync, self.compositor, self.cfg.live_batch_size,
                        self.cfg.start_frame, stats, self._stop,
                        lambda unit: t0 + seconds(unit.pts) + latency - self._advance(), self._watched, self.meter)
        outputs = threaded(output_frames(((unit, frame, self._cache_frame(unit)) for unit, frame in frames),
                                         self.presenter, self.compositor, self.cfg, stats), 8, "output", self._stop)
        muted: list = []       # timeline spans [start, end) of speech interrupt() dropped after it was rendered
        dropped: set = set()   # utterances interrupt() dropped: their marks are not announced
        # the 25 fps frame's audio (muted where dropped), the still frame shown instead, whether it was muted
        audio, still, heard = np.zeros(0, np.float32), None, False
        try:
            for item in outputs:
                unit, frame = item.tag, item.frame
                if not item.in_between:
                    audio, still, heard = self._apply_interrupts(unit, frame is not None, muted, dropped)
                samples, pts = audio_share(audio, unit.pts, item, self.cfg.fps)
                planned = t0 + seconds(pts) + latency
                late = wait_until(planned, self._stop)
                if self._stop.is_set():
                    break
                if item.in_between and still is None and frame is not None and self._hears(unit.index + 1, muted):
                    still = self._still(unit)  # the next frame is muted: no in-between drawn from its dropped speech
                if still is not None:  # the window heard speech that interrupt() dropped: the still mouth
                    frame = still
                for sink in self.sinks:
                    sink.write(frame, samples, pts)
                stats.present_offsets.append(time.monotonic() - planned)
                stats.presented += 1
                if late > 0.5 / self.cfg.fps:
                    stats.late += 1
                    stats.max_late_ms = max(stats.max_late_ms, late * 1000)
                if not item.in_between:
                    self._announce(unit, heard, dropped)
                    stats.frames += 1
                    if unit.heard_at is not None and not heard:
                        stats.input_latencies.append(time.monotonic() - unit.heard_at)
                if max_seconds is not None and seconds(pts) >= max_seconds and (item.in_between or not interpolated(self.cfg.fps)):
                    break
        finally:
            self._stop.set()
            outputs.close()
            frames.close()  # the stages' threads are joined: none is still using the meter
            for sink in self.sinks:
                sink.close()
            if self.meter is not None:
                self.meter.close()
        self._report()
        return stats

    def _cache_frame(self, unit: FrameUnit) -> int:
        return ping_pong(unit.index + self.cfg.start_frame, self.presenter.frames)

    def _advance(self) -> float:
        """How much earlier than its own time a frame must be ready. At 50 frames/s the in-between frame before it
        is shown 20 ms earlier and needs it, plus the time the in-between frame takes (p95 of the last 50)."""
        if not interpolated(self.cfg.fps):
            return 0.0
        recent = list(self.stats.between_seconds)[-50:]
        return seconds(IN_BETWEEN_OFFSET) + (float(np.percentile(recent, 95)) if recent else 0.0)

    def _apply_interrupts(self, unit: FrameUnit, wants_frame: bool, muted: list, dropped: set
                          ) -> tuple[np.ndarray, Optional[np.ndarray], bool]:
        """Apply interrupts that came until now to the frame about to be shown: (its audio with dropped speech
        silenced, the still cached frame to show instead or None, whether its window heard dropped speech).
        `muted` and `dropped` are the presenting thread's record of them, updated here."""
        while not self._inbox.empty():  # interrupts until now: this frame already has the mouth closed
            spans, tags, ack = self._inbox.get()
            muted.extend(spans)
            dropped.update(tags)
            for tag in tags:
                self._emit({"type": "speech_interrupted", "utterance": tag, "frame": unit.index,
                            "pts": seconds(unit.pts)})
            if ack is not None:
                self._emit({"type": "interrupted", "utterance": ack, "frame": unit.index, "pts": seconds(unit.pts)})
        start = unit.index * SAMPLES
        muted[:] = [(a, b) for a, b in muted if b > start - N_FFT // 2]  # spans no later window reaches go
        if not self._hears(unit.index, muted):
            return unit.audio, None, False
        audio = unit.audio.copy()
        for a, b in muted:  # only the dropped samples are silenced
            audio[max(0, a - start):max(0, min(len(audio), b - start))] = 0
        return audio, self._still(unit) if wants_frame else None, True

    @staticmethod
    def _hears(index: int, muted: list) -> bool:
        """Does frame `index`'s mel window reach speech interrupt() dropped?"""
        start = index * SAMPLES
        return any(a < start + LOOKAHEAD and b > start - N_FFT // 2 for a, b in muted)

    def _still(self, unit: FrameUnit) -> np.ndarray:
        """The frame's cached picture, untouched by the model, over the backdrop."""
        index = self._cache_frame(unit)
        return over_backdrop(to_host(self.compositor.passthrough(index)), self.presenter, self.cfg.backdrop,
                             index, index)

    def _announce(self, unit: FrameUnit, heard: bool, dropped: set) -> None:
        """The events of a frame just shown: its blendshapes (the cached mouth's when muted) and utterance marks."""
        shown_at = time.time()
        if unit.blendshapes is not None:
            weights = self.meter.still(self._cache_frame(unit)) if heard else unit.blendshapes
            self._emit({"type": "blendshapes", "frame": unit.index, "pts": seconds(unit.pts), "weights": weights})
        for kind, tag in unit.marks:
            if tag not in dropped:
                self._emit({"type": f"speech_{'started' if kind == 'start' else 'ended'}",
                            "utterance": tag, "frame": unit.index, "pts": seconds(unit.pts), "shown_at": shown_at})

    def _report(self) -> None:
        stats, latency = self.stats, self.stats.latency_ms()
        heard = latency["input"]
        if heard["frames"]:
            log.info("input to screen (from the chunk that completed each frame's window; %.1f ms when input "
                     "streams in real time and nothing waits): p50 %.0f ms, p95 %.0f ms over %d frames; pacing offset "
                     "p95 %.1f ms; %d of %d speech frames shown without the model to stay on time",
                     self.cfg.latency_ms - 1000 * LOOKAHEAD / SAMPLE_RATE, heard["p50"], heard["p95"],
                     heard["frames"], latency["pacing_offset"]["p95"], stats.skipped, stats.speech)
        if stats.between_seconds:
            cost = np.array(stats.between_seconds) * 1000
            log.info("%d frames/s: each in-between frame waits for the next frame, which must be ready %.0f ms before "
                     "its own time, and then takes its flow: p50 %.1f ms, p95 %.1f ms (%d made); that much of the "
                     "latency target goes to them", self.cfg.fps, 1000 * seconds(IN_BETWEEN_OFFSET),
                     np.percentile(cost, 50), np.percentile(cost, 95), len(cost))
        if stats.late:
            log.warning("%d of %d frames were late (worst %.0f ms): this machine cannot keep up in real time with "
                        "these settings", stats.late, stats.presented, stats.max_late_ms)
