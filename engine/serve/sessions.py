"""Sessions: many presenters speaking at once in one process, each with its own clock, audio queue, utterance events
and outputs, all sharing the loaded presenters and one model worker per (model, device).

A session is created from a JSON body whose keys are the engine's flag names (those that make sense per session,
SESSION_FLAGS); the serve command's own flags are the defaults. Paths in a body stay inside the server's session
root, outputs are live ones (MPEG-TS URL, or a .ts/.mp4 recording under the root), and checkpoints load only as plain
weights: a client with the token can choose among the operator's files, not read or write others.

A new session is admitted only when the measured load says the running ones stay on time (LoadMeter).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from configs.flags import field_of, first_error
from configs.spec import EngineSpec, ServeSpec, default_of, destination
from core.errors import UserError
from core.net import is_loopback
from core.processes import process_tree_cpu
from core.threads import Worker
from core.timebase import FPS, SAMPLE_RATE

from engine.api import Engine
from engine.assemble import Parts, resolve_cache
from engine.render.loop import LiveEngine
from engine.render.model_worker import ModelWorker, SharedModel
from .media import MediaFeed
from .protocol import SpeechDesk, SpeechLimits
from .webrtc import WebRtcSink

log = logging.getLogger("engine.serve.sessions")
DEFAULT = "default"  # the session `serve --data_dir` starts, on the single-session paths (/ws, /speak, /status)
SESSION_FLAGS = ("data_dir", "checkpoint_path", "enhance", "gfpgan_path", "gfpgan_dtype", "outfile", "record_minutes",
                 "latency_ms", "silence_db", "color_match", "audio_delay_ms", "device", "dtype", "runtime", "pipeline")
PATH_FLAGS = ("data_dir", "checkpoint_path", "gfpgan_path")
STREAM_SCHEMES = ("udp://", "srt://", "rtp://", "tcp://")
MAX_LATENCY_MS = 5000
STALLED_SECONDS = 2.0  # a session's presenter this far behind its clock is reported stalled
UNMEASURED_MOST = 2    # sessions running before their load is measured: a client may open two at once, no burst more


class BadSession(UserError):
    """A session body the server cannot use (HTTP 400); `field` names the key."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class SessionRefused(UserError):
    """No capacity for another session (HTTP 503); the message says what was measured."""


class UnknownSession(KeyError):
    """No session with that id (HTTP 404)."""

    def __str__(self) -> str:
        return f"no session {self.args[0]!r}"


@dataclass(frozen=True)
class OutputPolicy:
    """Where a session body may send its stream: loopback, and the serve command's --allow_output destinations
    (HOST, any port, or HOST:PORT); never a listening mode, which would hand the stream to whoever connects; at most
    `max_outputs` outputs, and recordings of at most `max_record_minutes`."""
    allowed: tuple[str, ...] = ()
    max_outputs: int = default_of(ServeSpec, "max_outputs")
    max_record_minutes: float = default_of(ServeSpec, "max_record_minutes")

    def check(self, target: str) -> str:
        parts = urlsplit(target)
        try:
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            host, port = "", None
        if not host or not port:
            raise BadSession("outfile", f"{target[:100]!r}: a stream URL needs a host and a port")
        query = parse_qs(parts.query, keep_blank_values=True)
        if "listen" in query or any(mode != "caller" for mode in query.get("mode", [])):
            raise BadSession("outfile", f"{target[:100]!r}: a session streams to a receiver; it does not listen "
                                        f"(whoever connected would get the stream)")
        if not (is_loopback(host) or host in self._hosts or (host, port) in self._hosts):
            raise BadSession("outfile", f"{target[:100]!r}: streams go to loopback unless the server allows the "
                                        f"destination (serve --allow_output {host}:{port})")
        return target

    @property
    def _hosts(self) -> set:
        return {host if port is None else (host, port) for host, port in map(destination, self.allowed)}


@dataclass(frozen=True)
class SessionsConfig:
    root: Path = Path(default_of(ServeSpec, "session_root"))  # API bodies' paths stay inside
    max_sessions: int = default_of(ServeSpec, "max_sessions")
    cpu_cores: Optional[float] = None        # CPU the sessions may use (None: half this machine's cores)
    worker_share: float = 0.8                # most of its time a model worker may be busy
    max_batch: int = 16                      # most frames in one shared model call
    outputs: OutputPolicy = OutputPolicy()   # where session bodies may stream
    gather: float = 0.008                    # seconds a due frame may wait for other sessions' to share its call
    limits: SpeechLimits = SpeechLimits()
    max_peers: int = default_of(ServeSpec, "max_peers")  # WebRTC viewers per session
    peer_connect_seconds: float = 15.0

    @classmethod
    def from_spec(cls, spec: ServeSpec) -> "SessionsConfig":
        return cls(root=Path(spec.session_root), max_sessions=spec.max_sessions, cpu_cores=spec.cpu_cores,
                   limits=SpeechLimits(max_queue_seconds=spec.max_queue_seconds,
                                       max_client_queue_seconds=spec.max_client_queue_seconds),
                   max_peers=spec.max_peers, outputs=OutputPolicy(spec.allow_output, spec.max_outputs,
                                                                     spec.max_record_minutes))

    @property
    def cores(self) -> float:
        """All sessions run in one Python process, whose interpreter lock lets one thread at a time run Python: on
        two cores the first late frame came at 1.09 cores busy (bench/sessions.py), so by default half the cores."""
        return self.cpu_cores if self.cpu_cores is not None else 0.5 * (os.cpu_count() or 1)


def session_spec(defaults: EngineSpec, body: object, root: Path, outputs: OutputPolicy = OutputPolicy()
                 ) -> EngineSpec:
    """The serve command's engine spec with a session body's keys on top: only SESSION_FLAGS, each checked by the
    spec (type, choices, range), paths kept inside `root` after every symlink (the chosen child cache's files
    included), outputs allowed by `outputs`. Nothing is created here: see reserve_outputs."""
    if not isinstance(body, dict):
        raise BadSession("body", "expected a JSON object of engine flags, e.g. {\"data_dir\": \"cache/anna\"}")
    for key in body:
        if key not in SESSION_FLAGS:
            raise BadSession(str(key)[:40], f"not a session flag (one of: {', '.join(SESSION_FLAGS)})")
    try:  # a session's outputs are only what its body asks for (plus WebRTC), its presenter a cache, never the
        spec = defaults.replace(**{"outfile": (), "face": None, **body})  # serve command's --face video
    except ValidationError as exc:
        raise BadSession(field_of(exc), first_error(exc).split(": ", 1)[1]) from None
    if spec.latency_ms > MAX_LATENCY_MS:
        raise BadSession("latency_ms", f"at most {MAX_LATENCY_MS} ms")
    if len(spec.outfile) > outputs.max_outputs:
        raise BadSession("outfile", f"at most {outputs.max_outputs} outputs a session (serve --max_outputs)")
    if body.get("record_minutes") is not None and spec.record_minutes > outputs.max_record_minutes:
        raise BadSession("record_minutes", f"at most {outputs.max_record_minutes:g} (serve --max_record_minutes)")
    paths = {key: str(model_file(root, getattr(spec, key), key)) for key in ("checkpoint_path", "gfpgan_path")
             if key in body}
    if not spec.data_dir:
        raise BadSession("data_dir", "missing: which presenter cache should speak")
    if "data_dir" in body:
        paths["data_dir"] = str(presenter_cache(root, spec.data_dir))
    # a client's choice of file loads as plain weights, whatever the server allows
    return spec.replace(**paths, outfile=tuple(output(root, v, outputs) for v in spec.outfile),
                        record_minutes=min(spec.record_minutes or outputs.max_record_minutes,
                                           outputs.max_record_minutes), trust_checkpoint=False)


def model_file(root: Path, value: str, key: str) -> Path:
    path = inside(root, value, key)
    if not path.is_file():
        raise BadSession(key, f"{value[:100]!r}: " + ("a folder, not a checkpoint file" if path.is_dir() else
                                                      "no such file"))
    return path


def presenter_cache(root: Path, value: str) -> Path:
    """The cache the engine will load (a cache, or the one cache in a folder), inside the root, with no file in it
    that links outside."""
    from preprocess.cache import read_manifest  # preprocess/ only for the cache check
    folder = inside(root, value, "data_dir")
    if not folder.is_dir():
        raise BadSession("data_dir", f"{value[:100]!r}: no such presenter cache folder")
    try:
        cache = inside(root, str(resolve_cache(EngineSpec(data_dir=str(folder)), 96)), "data_dir")
    except ValueError as exc:
        raise BadSession("data_dir", str(exc)) from None
    if read_manifest(cache) is None:
        raise BadSession("data_dir", f"{value[:100]!r}: not a presenter cache (no manifest; see "
                                     f"`stream_out.py preprocess`)")
    escape = link_outside(cache, root.resolve())
    if escape is not None:
        raise BadSession("data_dir", f"{value[:100]!r}: {escape.relative_to(cache)} links outside the server's "
                                     f"session root")
    return cache


def link_outside(folder: Path, top: Path) -> Optional[Path]:
    """The first symlink under `folder` whose target lies outside `top` (scandir's types: no stat per file)."""
    folders = [folder]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    if top not in Path(entry.path).resolve().parents:
                        return Path(entry.path)
                elif entry.is_dir():
                    folders.append(Path(entry.path))
    return None


def reserve_outputs(outputs: tuple[str, ...]) -> list[Path]:
    """Create each recording file now, exclusively, with the folders it needs: two sessions (or one body naming a
    file twice) cannot both write it. The encoder overwrites the empty file. Returns the folders made, which
    release_outputs removes with the files if the session never starts."""
    files, folders = [], []
    for target in outputs:
        if target == "obs" or target.startswith(STREAM_SCHEMES):
            continue
        path = Path(target)
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            folders[:0] = missing
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            release_outputs(tuple(files), folders)
            raise BadSession("outfile", f"{path.name!r} exists already (or is named twice)") from None
        except OSError as exc:
            release_outputs(tuple(files), folders)
            raise BadSession("outfile", f"{path.name!r}: cannot write there ({exc.strerror})") from None
        files.append(target)
    return folders


def release_outputs(outputs: tuple[str, ...], folders: list[Path] = ()) -> None:
    """Remove the empty recordings of a session that never started, and the folders made for them (deepest
    first, if still empty)."""
    for target in outputs:
        path = Path(target)
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: something else is in it now
            pass


def inside(root: Path, value: str, key: str) -> Path:
    root = root.resolve()
    try:
        path = (root / value).resolve()
        path.exists()  # a name too long for the disk says so here
    except (OSError, RuntimeError, ValueError) as exc:  # a name too long, a symlink loop, a NUL byte
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadSession(key, f"{value[:100]!r}: not a usable path ({reason})") from None
    if path != root and root not in path.parents:
        raise BadSession(key, f"must lie inside the server's session root ({value[:100]!r} does not)")
    return path


def output(root: Path, target: str, policy: OutputPolicy) -> str:
    """A session output: an allowed stream URL, 'obs', or a .ts/.mp4 recording inside the root (never
    overwritten)."""
    if target == "obs":
        return target
    if target.startswith(STREAM_SCHEMES):
        return policy.check(target)
    if not target.endswith((".ts", ".mp4")):
        raise BadSession("outfile", f"{target[:100]!r}: give a stream URL ({', '.join(STREAM_SCHEMES)}), 'obs', or "
                                    f"a .ts or .mp4 file")
    path = inside(root, target, "outfile")
    clash = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if clash is not None and clash != path:
        raise BadSession("outfile", f"{target[:100]!r}: {clash.name!r} is a file, not a folder")
    return str(path)


@dataclass(eq=False)
class Session:
    """One presenter speaking: its engine (clock, audio queue, threads), its clients and its outputs."""
    id: str
    engine: LiveEngine
    desk: SpeechDesk
    webrtc: object = None
    thread: Optional[threading.Thread] = None
    created_at: float = field(default_factory=time.monotonic)
    error: Optional[str] = None              # why its engine stopped, if it failed

    def state(self) -> str:
        """starting, running, stalled (the presenter is over 2 s behind its clock), failed (see `error`) or
        ended."""
        if self.error is not None:
            return "failed"
        if self.thread is None or not self.thread.is_alive():
            return "ended" if self.thread is not None else "starting"
        started = self.engine.started_at
        if started is None or time.monotonic() < started:
            return "starting"
        behind = (time.monotonic() - started) * FPS - self.engine.stats.frames
        return "stalled" if behind > STALLED_SECONDS * FPS else "running"

    def status(self) -> dict:
        """The state; fps (frames presented); latency from the input (arrival of the chunk that completed a frame's
        window to that frame on screen, waits behind queued speech included) beside the clock's pacing offset;
        frames shown without the model to stay on time; the queue; sinks and viewers."""
        stats, engine = self.engine.stats, self.engine
        running = engine.started_at is not None and time.monotonic() > engine.started_at
        elapsed = time.monotonic() - engine.started_at if running else 0.0
        return {"id": self.id, "state": self.state(), "fps": stats.presented / elapsed if elapsed > 1 else 0.0,
                "frames": stats.frames,
                "presented": stats.presented,  # frames the sinks got: `frames` at 25 fps, twice them at --fps 50
                "lip_synced": stats.inferred, "speech_frames": stats.speech, "skipped": stats.skipped,
                "late": stats.late, "latency_ms": {"target": engine.cfg.latency_ms, **stats.latency_ms()},
                "queue": {"seconds": engine.buffer.available / SAMPLE_RATE,
                          "utterances": len(engine.buffer.queued_tags)},
                "sinks": [type(s).__name__ for s in engine.sinks],
                "webrtc_peers": len(self.webrtc.peers) if self.webrtc is not None else 0, "error": self.error}


@dataclass(frozen=True)
class Sample:
    at: float
    cpu: float                  # process CPU seconds
    frames: int                 # frames presented by all sessions, ended ones included
    behind: int                 # of which late or shown without the model to stay on time
    busy: dict                  # model worker -> seconds it has spent in the model
    sessions: int               # sessions running (started or starting) when sampled


class LoadMeter:
    """The measured load over the last `window` seconds: CPU cores busy, CPU seconds per presented frame, and each
    model worker's busy share. From these, how many more sessions fit. `cap_only`: only the session cap counts
    (for tests of what lies beyond admission)."""

    def __init__(self, window: float = 10.0, cap_only: bool = False):
        self.window, self.cap_only = window, cap_only
        self._samples: deque[Sample] = deque()
        self._lock = threading.Lock()

    def sample(self, frames: int, behind: int, workers: list[ModelWorker], sessions: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._samples.append(Sample(now, process_tree_cpu(), frames, behind,
                                        {w: w.busy_seconds for w in workers}, sessions))
            while len(self._samples) > 2 and now - self._samples[1].at >= self.window:
                self._samples.popleft()

    def cores(self) -> tuple[float, float]:
        """(CPU cores busy over the window, cores one more session adds at the measured CPU per frame)."""
        with self._lock:
            return self._cores(self._samples[0], self._samples[-1])

    @staticmethod
    def _cores(first: Sample, last: Sample) -> tuple[float, float]:
        busy = (last.cpu - first.cpu) / (last.at - first.at)
        return busy, FPS * (last.cpu - first.cpu) / max(last.frames - first.frames, 1)

    def room(self, cfg: SessionsConfig, running: int, workers: list[ModelWorker]) -> tuple[int, str]:
        """(how many more sessions fit, why no more). `running` counts the sessions still starting too. Unmeasured
        (under 2 s or 25 frames seen), at most UNMEASURED_MOST sessions run: a burst of requests on an idle server
        admits that many, not the cap. Measured, each session admitted since the last sample (a second at most) takes
        a place at the measured cost on top of it."""
        left, reason = cfg.max_sessions - running, f"the session cap ({cfg.max_sessions}) is reached"
        with self._lock:
            first, last = (self._samples[0], self._samples[-1]) if self._samples else (None, None)
        if self.cap_only or not running:
            return max(0, left), reason
        if first is None or last.at - first.at < 2.0 or last.frames - first.frames < FPS:
            if running >= UNMEASURED_MOST:
                return 0, (f"{running} session(s) just started, whose load is not measured yet; try again in a few "
                           f"seconds")
            return max(0, min(left, UNMEASURED_MOST - running)), reason
        elapsed = last.at - first.at
        if last.behind > first.behind:  # the running sessions are not keeping up now: nothing more fits
            return 0, (f"the running sessions had {last.behind - first.behind} late or skipped frame(s) in the last "
                       f"{elapsed:.0f} s")
        busy, per_session = self._cores(first, last)
        unmeasured = max(0, running - last.sessions)  # admitted since the last sample: in no measure yet
        fit = math.floor((cfg.cores - busy) / per_session) - unmeasured if per_session > 0 else left
        if fit < left:
            left = fit
            reason = (f"measured {busy:.2f} of {cfg.cores:.2f} CPU cores busy with {running} session(s) at "
                      f"{1000 * per_session / FPS:.1f} ms of CPU per frame; another session would need "
                      f"{per_session:.2f} more")
        for worker in workers:
            if worker not in first.busy or worker not in last.busy:
                continue
            share = (last.busy[worker] - first.busy[worker]) / elapsed
            needs = FPS * worker.per_row()
            fit = math.floor((cfg.worker_share - share) / needs) - unmeasured if needs > 0 else left
            if fit < left:
                left = fit
                reason = (f"the {worker.name} model is busy {100 * share:.0f}% of the time (limit "
                          f"{100 * cfg.worker_share:.0f}%); another talking session would add {100 * needs:.0f}%")
        return max(0, left), reason


class Sessions:
    """The sessions of one server. `loop` (the transport's asyncio loop) carries their events and WebRTC; without
    one, events are delivered from the presenting threads and there is no WebRTC."""

    def __init__(self, defaults: EngineSpec = EngineSpec(), cfg: SessionsConfig = SessionsConfig(),
                 loop: Optional[asyncio.AbstractEventLoop] = None):
        self.defaults, self.cfg, self.loop = defaults, cfg, loop
        self.workers: list[ModelWorker] = []
        self.parts = Parts(share=self._share, shared_batch=self.cfg.max_batch)
        self.meter = LoadMeter()
        self._sessions: dict[str, Session] = {}
        self._ended = (0, 0)  # frames and late or skipped frames of ended sessions
        self._starting = 0    # sessions admitted and still loading
        self._lock = threading.RLock()  # admission and creation one at a time: two requests cannot both take
        self._stop = threading.Event()  # the last place
        self._sampler = Worker(self._sample_every_second, "load-meter")
        self._sampler.start()

    def _share(self, model, name: str) -> SharedModel:
        worker = ModelWorker(model, name, self.cfg.max_batch, gather=self.cfg.gather)
        self.workers.append(worker)
        return SharedModel(worker, model)

    def _sample_every_second(self) -> None:
        while not self._stop.wait(1.0):
            self.meter.sample(*self.frames(), list(self.workers), len(self) + self._starting)

    def frames(self) -> tuple[int, int]:
        """Frames presented by all sessions, ended ones included, and how many of them were late or skipped."""
        with self._lock:
            running = [s.engine.stats for s in self._sessions.values()]
            return (self._ended[0] + sum(s.frames for s in running),
                    self._ended[1] + sum(s.late + s.skipped for s in running))

    def __len__(self) -> int:
        return len(self._sessions)

    def ids(self) -> list[str]:
        return list(self._sessions)

    def get(self, sid: str) -> Session:
        try:
            return self._sessions[sid]
        except KeyError:
            raise UnknownSession(sid) from None

    def room(self) -> tuple[int, str]:
        return self.meter.room(self.cfg, len(self._sessions) + self._starting, list(self.workers))

    def create(self, body: object, sid: Optional[str] = None,
               on_event: Optional[Callable[[Session, dict], None]] = None) -> Session:
        """A session from an API body: checked, admitted, built (sharing what is loaded), running."""
        args = session_spec(self.defaults, body, self.cfg.root, self.cfg.outputs)
        folders = reserve_outputs(args.outfile)
        try:
            return self.start(args, sid or secrets.token_hex(6), on_event)
        except BaseException:
            release_outputs(args.outfile, folders)
            raise

    def start(self, args: EngineSpec, sid: str, on_event=None, extra_sinks: tuple = (),
              admit: bool = True) -> Session:
        """A session from a spec (the serve command's own, or a checked body)."""
        with self._lock:  # the place is taken under the lock; the loading happens outside it
            left, reason = self.room()
            if admit and left < 1:
                raise SessionRefused(f"no capacity for another session: {reason}")
            self._starting += 1
        try:
            engine = Engine.from_spec(args, live=True, parts=self.parts, user=sid, sinks=extra_sinks, start=False)
            return self.adopt(engine.loop, sid, on_event)
        except BaseException:
            self._close_workers(self.parts.release(sid))
            raise
        finally:
            with self._lock:
                self._starting -= 1

    def adopt(self, engine: LiveEngine, sid: str = DEFAULT, on_event=None) -> Session:
        """Run a built engine as a session (the single-session server and its tests build their own)."""
        webrtc = media = None
        if self.loop is not None:
            webrtc = WebRtcSink(self.loop, self.cfg.max_peers, self.cfg.peer_connect_seconds, fps=engine.cfg.fps)
            media = MediaFeed(self.loop, engine.cfg.fps, self.cfg.max_peers)
            engine.sinks += [webrtc, media]
        session = Session(sid, engine, SpeechDesk(engine, self.cfg.limits, media), webrtc)
        deliver = on_event or (lambda s, event: s.desk.route(event))
        if self.loop is not None:
            engine.on_event = lambda event: self.loop.call_soon_threadsafe(deliver, session, event)
        else:
            engine.on_event = lambda event: deliver(session, event)
        session.thread = Worker(self._run, f"session-{sid}", (session,))
        with self._lock:
            if sid in self._sessions:
                raise ValueError(f"session {sid!r} exists")
            self._sessions[sid] = session
        session.thread.start()
        log.info("session %s started (%d running)", sid, len(self._sessions))
        return session

    def _run(self, session: Session) -> None:
        try:
            session.engine.run()
        except Exception as exc:  # it ends alone: its clients, its status and /health say so; the others go on
            session.error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            log.error("session %s failed: %s", session.id, session.error)
            log.debug("session %s failed", session.id, exc_info=True)
            session.engine.on_event({"type": "session_failed", "error": session.error})

    def states(self) -> dict[str, str]:
        return {sid: session.state() for sid, session in list(self._sessions.items())}

    def end(self, sid: str, wait: Optional[float] = 10.0) -> dict:
        """Stop a session's clock, close its outputs and release what only it used; its final status. Its thread
        is waited for `wait` seconds (None: until its recordings are finished, however long an mp4's mux takes)."""
        with self._lock:
            session = self._sessions.pop(sid, None)
            if session is None:
                raise UnknownSession(sid)
        session.engine.stop()
        session.thread.join(timeout=wait)  # run() closes its outputs on the way out, WebRTC peers included
        status = session.status()
        stats = session.engine.stats
        with self._lock:
            self._ended = (self._ended[0] + stats.frames, self._ended[1] + stats.late + stats.skipped)
        self._close_workers(self.parts.release(sid))
        log.info("session %s ended (%d running)", sid, len(self._sessions))
        return status

    def _close_workers(self, dropped: list) -> None:
        for obj in dropped:
            worker = getattr(obj, "worker", None)
            if isinstance(worker, ModelWorker):
                worker.close()
                self.workers.remove(worker)

    def close(self) -> None:
        """End every session, its recordings finished."""
        for sid in list(self._sessions):
            self.end(sid, wait=None)
        self._stop.set()
        self._sampler.join(timeout=5)

    def status(self) -> dict:
        left, reason = self.room()
        return {"sessions": {sid: s.status() for sid, s in list(self._sessions.items())},
                "capacity": {"sessions_left": left, "limit": reason if left < 1 else None,
                             "cpu_cores_allowed": self.cfg.cores},
                "models": [{"name": w.name, "batches": w.batches, "frames": w.rows, "dropped": w.dropped,
                            "ms_per_frame": 1000 * w.per_row(), "busy_seconds": w.busy_seconds}
                           for w in list(self.workers)]}


def create_answer(sessions: Sessions, body: object, sid: Optional[str] = None) -> tuple[int, dict]:
    """POST /sessions, as every transport answers it: (HTTP status, body). Blocking (loading): call it off the
    event loop."""
    try:
        session = sessions.create(body, sid)
    except BadSession as exc:
        return 400, {"error": str(exc), "field": exc.field}
    except SessionRefused as exc:
        return 503, {"error": str(exc)}
    except (UserError, ValueError) as exc:  # a cache that is not one, a model file that is wrong …
        return 400, {"error": str(exc)}
    base = f"/sessions/{session.id}"
    return 201, {"id": session.id, "ws": f"{base}/ws", "speak": f"{base}/speak", "offer": f"{base}/offer",
                 "status": f"{base}/status"}
