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

from audio.decode import PcmStream, check_files, stream_files
from configs.spec import EngineSpec
from engine.assemble import Parts, blendshape_meter, check_frame_flags, resolve_cache
from engine.outputs.targets import make_sinks, use_gpu_encoder
from engine.render.loop import LiveEngine, Stats, render_file
from engine.render.presenter import playable_manifest
from engine.render.sources import Feeder

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
    and its presentation time in seconds."""
    image: np.ndarray
    audio: np.ndarray
    pts: float


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

    def write(self, frame: Optional[np.ndarray], audio: np.ndarray, pts: float) -> None:
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
        self.spec = EngineSpec(data_dir=str(presenter.cache), model=lipsync.model,
                               checkpoint_path=lipsync.checkpoint_path,
                               landmark_checkpoint=lipsync.landmark_checkpoint,
                               renderer_checkpoint=lipsync.renderer_checkpoint, outfile=tuple(outputs), **settings)
        check_frame_flags(self.spec)
        sinks = make_sinks(self.spec)
        self.live = any(sink.live for sink in sinks) if live is None else live
        if not self.live and any(sink.live for sink in sinks):
            raise ValueError("a live output (obs, vcam, a stream URL) needs a live engine: leave out live=False")
        if self.live and any(not sink.live for sink in sinks):
            raise ValueError("mix of a file and a live output: make two engines (a file renders faster than live)")
        self.tap = FrameTap(self.live)
        self.sinks = [*sinks, self.tap]
        self.presenter, self.model, self.compositor, self.cfg = Parts().build(self.spec, self.live)
        use_gpu_encoder(self.sinks, self.compositor)
        meter = blendshape_meter(self.spec, self.presenter, self.model)
        self.stats = Stats()
        self._events: queue.Queue = queue.Queue(EVENTS_HELD)
        self._utterances = count(1)
        self._closed = threading.Event()
        self._feeders: list[Feeder] = []
        self._streams: dict[int, PcmStream] = {}
        if self.live:
            self._loop = LiveEngine(self.presenter, self.model, self.compositor, self.sinks, self.cfg, meter)
            self._loop.on_event = self._event
            self.stats = self._loop.stats
            self._thread = threading.Thread(target=self._loop.run, name="engine", daemon=True)
            self._thread.start()
        else:
            self._meter = meter
            self._speech: list = []     # what the file render speaks: file paths and arrays, in order
            self._rendered, self._failure = False, None

    # --- speech in ---------------------------------------------------------------------------------------------
    def speak(self, audio: str | Path) -> int:
        """Speak an audio file (anything ffmpeg reads) after what is queued; returns its utterance number, which
        the speech_started / speech_ended events of a live engine carry."""
        check_files([audio])
        utterance = next(self._utterances)
        if self.live:
            self._feeders.append(Feeder(self._loop.buffer, stream_files([audio]), utterance,
                                        ends_input=False).start())
        else:
            self._queue_for_file(Path(audio))
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
            self._loop.push(samples)
        else:
            self._queue_for_file(samples)

    def interrupt(self) -> list:
        """Drop the queued speech now (live): the mouth closes from the next frame on. Returns the utterances cut."""
        if not self.live:
            self._speech.clear()
            return []
        for feeder in self._feeders:
            feeder.stop()
        self._feeders.clear()
        return self._loop.interrupt()

    def _queue_for_file(self, audio) -> None:
        if self._rendered:
            raise RuntimeError("this file render has been made: open another Engine to render more")
        self._speech.append(audio)

    # --- frames and events out ---------------------------------------------------------------------------------
    def frames(self) -> Iterator[Frame]:
        """Every frame as it is made, with its audio and pts. A file render renders what was spoken, then ends; a
        live engine goes on (idle frames too) until close()."""
        self.tap.reading = True
        if self.live:
            while not self._closed.is_set():
                try:
                    yield self.tap.frames.get(timeout=0.1)
                except queue.Empty:
                    continue
            return
        worker = threading.Thread(target=self._render_file, name="render", daemon=True)
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
        self._rendered = True
        try:
            render_file(self._file_audio(), self.presenter, self.model, self.compositor, self.sinks, self.cfg,
                        progress=False, stats=self.stats, meter=self._meter)
        except BaseException as exc:  # handed to the reader
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

    # --- closing -----------------------------------------------------------------------------------------------
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
                self._loop.stop()
                self._thread.join(timeout=30)
        return self.stats

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
