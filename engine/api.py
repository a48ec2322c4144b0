"""The library's surface: a presenter, a lip model, and an engine that makes the one speak through the other.

    presenter = Presenter.open("cache/anna")
    with Engine(presenter, LipSync.open("wav2lip_gan.pth"), outputs=["talk.mp4"]) as engine:
        engine.speak("hello.wav")

An engine writing only files renders as fast as it can: what was spoken is rendered by frames() or, at the latest,
on close(). An engine with a live output (OBS, a virtual camera, a stream URL), or made with live=True, runs on the
clock from the start: speak() and push() queue speech, interrupt() drops it, frames() and events() follow it.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np

from audio.decode import AudioFile, PcmStream, check_files, stream_files
from configs.spec import EngineSpec
from core.timebase import TIME_BASE, interpolated, seconds
from core.threads import Worker
from engine.assemble import Parts, blendshape_meter, check_frame_flags, resolve_cache
from engine.outputs.targets import CSV_LIVE, MIXED, make_sinks, obs_control, use_gpu_encoder
from engine.render.interpolate import in_between_weights
from engine.render.loop import LiveEngine, Stats, render_file
from engine.render.presenter import playable_manifest
from engine.render.sink import Sink
from engine.render.sources import Feeder, Microphone
from models.mouthwarp.blendshapes import write_live_link_csv

FRAMES_HELD = 50      # frames a live engine keeps for a slow frames() reader before it drops the oldest (2 s)
EVENTS_HELD = 1000    # events kept for events() before the oldest are dropped


@dataclass(frozen=True)
class Presenter:
    """A preprocessed presenter: a cache folder from `stream_out.py preprocess`."""
    cache: Path

    @classmethod
    def open(cls, cache: str | Path) -> "Presenter":
        """A cache folder, or a cache root holding exactly one; a folder that is no cache fails here, in one line."""
        folder = resolve_cache(EngineSpec(data_dir=str(cache)), face_size=96)
        playable_manifest(folder)
        return cls(folder.resolve())


@dataclass(frozen=True)
class LipSync:
    """Which lip model speaks: Wav2Lip from a checkpoint, IP_LAP from its two, or the weight-free mouth animator."""
    model: str = "wav2lip"
    checkpoint_path: Optional[str] = None
    landmark_checkpoint: Optional[str] = None
    renderer_checkpoint: Optional[str] = None

    @classmethod
    def open(cls, checkpoint: str | Path | None = None) -> "LipSync":
        """A Wav2Lip 96/288/384 checkpoint as released (wav2lip_gan.pth …); none: the mouth animator."""
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
        return cls(checkpoint_path=None if checkpoint is None else str(checkpoint))

    @classmethod
    def iplap(cls, landmark_checkpoint: str | Path, renderer_checkpoint: str | Path) -> "LipSync":
        return cls("iplap", None, str(landmark_checkpoint), str(renderer_checkpoint))


@dataclass(frozen=True)
class Frame:
    """One output frame: RGB (RGBA with --background alpha) pixels, the audio shown with it (16 kHz mono float32)
    and its presentation time, an integer in `time_base` (one audio sample) as in PyAV; `time` is it in seconds."""
    image: np.ndarray
    audio: np.ndarray
    pts: int
    time_base = TIME_BASE

    @property
    def time(self) -> float:
        return seconds(self.pts)


class FrameTap:
    """The sink behind frames(): a bounded queue. A file render waits for the reader (back-pressure); a live
    engine never waits, and drops the oldest frame for a reader that falls behind."""
    live = True

    def __init__(self, live: bool):
        self.blocking = not live
        self.reading = False
        self.dropped = 0
        self.frames: queue.Queue = queue.Queue(FRAMES_HELD)

    @property
    def wants_frames(self) -> bool:
        return self.reading

    def open(self, width: int, height: int) -> None:
        pass

    def write(self, frame: Optional[np.ndarray], audio: np.ndarray, pts: int) -> None:
        if not self.reading or frame is None:
            return
        image = cv2.cvtColor(frame, cv2.COLOR_BGRA2RGBA if frame.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        item = Frame(image, np.array(audio, np.float32), pts)
        if self.blocking:
            self.frames.put(item)
            return
        while True:
            try:
                self.frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def close(self) -> None:
        pass


class Engine:
    """Makes `presenter` speak with `lipsync` into `outputs` (mp4/.mov/.webm paths, 'obs', 'vcam', stream URLs) and
    to frames(). `settings` are any other engine settings by their flag names (enhance, gfpgan_path, latency_ms,
    fps, background, device …), checked like the command line's."""

    def __init__(self, presenter: Presenter, lipsync: LipSync = LipSync(), outputs: Sequence[str] = (),
                 live: Optional[bool] = None, **settings):
        """live=None: live when an output is (obs, vcam, a URL); live=True with file outputs records the stream."""
        self._start(EngineSpec(data_dir=str(presenter.cache), model=lipsync.model,
                               checkpoint_path=lipsync.checkpoint_path,
                               landmark_checkpoint=lipsync.landmark_checkpoint,
                               renderer_checkpoint=lipsync.renderer_checkpoint, outfile=tuple(outputs), **settings),
                    live, False, (), Parts(), None, (), True)

    @classmethod
    def from_spec(cls, spec: EngineSpec, live: Optional[bool] = None, progress: bool = False,
                  speech: Sequence[AudioFile] = (), parts: Optional[Parts] = None, user: object = None,
                  sinks: Sequence[Sink] = (), start: bool = True) -> "Engine":
        """An engine for a whole spec, as the command line runs it: `speech` (the spec's audio files, checked by
        check_files) is spoken from the first frame, and a live engine also hears the spec's microphone, sets up
        OBS when asked (obs_control) and stops after `seconds`, or when the files end and no microphone listens.
        A server's sessions share `parts` (the models and presenters loaded, `user` being who holds them), add
        their own `sinks` (WebRTC) and run the loop themselves (start=False)."""
        engine = cls.__new__(cls)
        engine._start(spec, live, progress, speech, parts or Parts(), user, sinks, start)
        return engine

    def _start(self, spec: EngineSpec, live: Optional[bool], progress: bool, speech: Sequence[AudioFile],
               parts: Parts, user: object, sinks: Sequence[Sink], start: bool) -> None:
        self.spec = spec
        check_frame_flags(spec)
        self.outputs = [*make_sinks(spec), *sinks]
        self.live = any(sink.live for sink in self.outputs) if live is None else live
        if not self.live and any(sink.live for sink in self.outputs):
            raise ValueError("a live output (obs, vcam, a stream URL) needs a live engine: leave out live=False")
        if live is None and self.live and any(not sink.live for sink in self.outputs):  # live=True: files record
            raise ValueError(MIXED)
        if spec.blendshapes_csv and self.live:
            raise ValueError(CSV_LIVE)
        if spec.record_minutes and not self.live:
            raise ValueError("--record_minutes caps the recordings of a live run; a file render writes every frame "
                             "it renders")
        self.tap = FrameTap(self.live)
        self.presenter, self.model, self.compositor, self.cfg = parts.build(spec, self.live, user)
        self._meter = blendshape_meter(spec, self.presenter, self.model)
        use_gpu_encoder(self.outputs, self.compositor)
        self.written: list[str] = []  # a file render's files, once made
        self._events: queue.Queue = queue.Queue(EVENTS_HELD)
        self._utterances = count(1)
        self._closed = threading.Event()
        self._feeders: list[Feeder] = []
        self._streams: dict[int, PcmStream] = {}
        self._microphone: Optional[Microphone] = None
        if self.live:
            self.loop = LiveEngine(self.presenter, self.model, self.compositor, list(self.outputs), self.cfg,
                                   self._meter)
            self.loop.on_event = self._event
            self.stats = self.loop.stats
            self._thread: Optional[threading.Thread] = None
            if not start:
                return
            if spec.obs_control:
                obs_control(spec)
            if spec.mic:
                self._microphone = Microphone(self.loop.buffer, None if spec.mic == "default" else spec.mic)
                self._microphone.start()
            if speech:
                self._feeders.append(Feeder(self.loop.buffer, stream_files([f.path for f in speech]),
                                            ends_input=not spec.mic).start())
            self._thread = Worker(self.loop.run, "engine", (spec.seconds,))
            self._thread.start()
        else:
            self.stats = Stats()
            self._progress = progress
            self._speech: list = [f.path for f in speech]  # what the file render speaks: paths and arrays, in order
            self._total = sum(f.samples for f in speech)
            self._rendered, self._failure = False, None

    # --- speech in ---------------------------------------------------------------------------------------------
    def speak(self, audio: str | Path) -> int:
        """Speak an audio file (anything ffmpeg reads) after what is queued; returns its utterance number, which
        the speech_started / speech_ended events of a live engine carry."""
        checked = check_files([audio], self.spec.allow_truncated)[0]
        utterance = next(self._utterances)
        if self.live:
            self._feeders.append(Feeder(self.loop.buffer, stream_files([checked.path]), utterance,
                                        ends_input=False).start())
        else:
            self._queue_for_file(checked.path, checked.samples)
        return utterance

    def push(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Speak mono PCM (float in [-1, 1], or int16) at any common rate, after what is queued: a stream of
        chunks, as a TTS or a microphone gives them, resampled as one signal."""
        pcm = np.asarray(pcm)
        pcm = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
        if sample_rate not in self._streams:
            self._streams[sample_rate] = PcmStream("float32", 1, sample_rate)
        samples = self._streams[sample_rate].feed(pcm.tobytes())
        if self.live:
            self.loop.push(samples)
        else:
            self._queue_for_file(samples, len(samples))

    def interrupt(self) -> list:
        """Drop the queued speech now (live): the mouth closes from the next frame on. Returns the utterances cut."""
        if not self.live:
            self._speech.clear()
            self._total = 0  # the progress bar counts only what is still to be spoken
            return []
        for feeder in self._feeders:
            feeder.stop()
        self._feeders.clear()
        return self.loop.interrupt()

    def _queue_for_file(self, audio, samples: int) -> None:
        if self._rendered:
            raise RuntimeError("this file render has been made: open another Engine to render more")
        self._speech.append(audio)
        self._total += samples

    # --- frames and events out ---------------------------------------------------------------------------------
    def frames(self) -> Iterator[Frame]:
        """Every frame as it is made, with its audio and pts. A file render renders what was spoken, then ends; a
        live engine goes on (idle frames too) until close()."""
        self.tap.reading = True
        if self.live:
            if self.tap not in self.loop.sinks:
                self.loop.sinks.append(self.tap)
            while not self._closed.is_set():
                try:
                    yield self.tap.frames.get(timeout=0.1)
                except queue.Empty:
                    continue
            return
        worker = Worker(self._render_file, "render")
        worker.start()
        try:
            while worker.is_alive() or not self.tap.frames.empty():
                try:
                    yield self.tap.frames.get(timeout=0.1)
                except queue.Empty:
                    continue
        finally:
            self.tap.reading = False
            while worker.is_alive():  # a reader that left early: the render finishes into the outputs
                try:
                    self.tap.frames.get(timeout=0.1)
                except queue.Empty:
                    pass
        if self._failure is not None:
            raise self._failure

    def events(self) -> Iterator[dict]:
        """The engine's events (speech_started, speech_ended, speech_interrupted, blendshapes) until close()."""
        while not self._closed.is_set() or not self._events.empty():
            try:
                yield self._events.get(timeout=0.1)
            except queue.Empty:
                continue

    def _event(self, event: dict) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self._events.get_nowait()
            self._events.put_nowait(event)

    def _render_file(self) -> None:
        """The file render, once: into the outputs, and into frames() while it reads; the blendshape CSV after."""
        self._rendered = True
        weights = [] if self._meter is not None else None
        sinks = [*self.outputs, self.tap] if self.tap.reading else self.outputs
        try:
            try:
                render_file(self._file_audio(), self.presenter, self.model, self.compositor, sinks, self.cfg,
                            progress=self._progress, stats=self.stats, total_samples=self._total, meter=self._meter,
                            blendshapes=weights)
            finally:  # stopped, the files finished with the frames so far are written too
                self.written = [str(sink.path) for sink in self.outputs if getattr(sink, "published", False)]
            if weights is not None and self.spec.blendshapes_csv:
                rows = in_between_weights(weights) if interpolated(self.spec.fps) else weights
                self.written.append(str(write_live_link_csv(self.spec.blendshapes_csv, rows, fps=self.spec.fps)))
        except BaseException as exc:  # handed to the caller of frames() or close()
            self._failure = exc
        finally:
            if self._meter is not None:
                self._meter.close()

    def _file_audio(self) -> Iterable[np.ndarray]:
        for item in self._speech:
            if isinstance(item, Path):
                yield from stream_files([item])
            else:
                yield item

    # --- running and closing -----------------------------------------------------------------------------------
    def wait(self) -> Stats:
        """A live engine: until it stops by itself (its `seconds` are up, or its files ended with no microphone).
        Ctrl-C here raises KeyboardInterrupt, and close() still finishes cleanly."""
        while self.live and self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)
        return self.stats

    def close(self) -> Stats:
        """Finish: a file render renders what was spoken (if frames() has not) and closes its files; a live engine
        stops its clock and closes its outputs. Returns what it did."""
        if self._closed.is_set():
            return self.stats
        try:
            if not self.live and not self._rendered:
                self._render_file()
                if self._failure is not None:
                    raise self._failure
        finally:
            self._closed.set()
            if self.live:
                for feeder in self._feeders:
                    feeder.stop()
                if self._microphone is not None:
                    self._microphone.stop()
                self.loop.stop()
                if self._thread is not None:
                    self._thread.join()  # run() finishes the recordings on its way out, however long that takes
        return self.stats

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
