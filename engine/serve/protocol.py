"""The speech protocol of one session, whatever carries it (the aiohttp server, or the Ray Serve router).

A client sends JSON messages (auth, start, end, interrupt) and binary PCM; the desk checks each field, queues the
speech within its caps and sends each engine event to the client whose utterance it is. Nothing here does I/O:
replies are returned, later events go through the client's `send`, which the transport provides (thread-safe).
"""
from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from audio.decode import PCM_FORMATS, RATES, AudioError, AudioTooLong, PcmStream, decode_upload
from configs.spec import ServeSpec, default_of
from core.timebase import SAMPLE_RATE

# the JSON messages a client may send: type -> {field: exact Python type}
MESSAGES = {"auth": {"token": str}, "start": {"sample_rate": int, "format": str, "channels": int},
            "end": {}, "interrupt": {}, "blendshapes": {"on": bool}, "media": {"on": bool}}
TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false"}


class ProtocolError(ValueError):
    """A client message the server cannot use; sent back as an error event."""


class Unauthorized(ProtocolError):
    """A WebSocket that has not given the token: told why, then closed."""


class QueueFull(ProtocolError):
    """Speech refused because a queue cap would be passed (HTTP 429 for uploads)."""


@dataclass(frozen=True)
class SpeechLimits:
    """Audio beyond max_utterance_seconds in one utterance is refused; max_queue_seconds is the most speech waiting
    to be spoken in a session, all clients together, of which one WebSocket client may have
    max_client_queue_seconds (the last two are --max_queue_seconds and --max_client_queue_seconds)."""
    max_utterance_seconds: float = 300.0
    max_queue_seconds: float = default_of(ServeSpec, "max_queue_seconds")
    max_client_queue_seconds: float = default_of(ServeSpec, "max_client_queue_seconds")


def parse_message(text: str) -> dict:
    """A client's JSON message, every field checked for its exact type; ProtocolError says what is wrong."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("not JSON (or nested too deeply)") from None
    if not isinstance(message, dict) or type(message.get("type")) is not str:
        raise ProtocolError("a message is a JSON object with a string 'type'")
    kind = message["type"]
    fields = MESSAGES.get(kind)
    if fields is None:
        raise ProtocolError(f"unknown message type {kind[:40]!r} ({', '.join(MESSAGES)})")
    unknown = sorted(set(message) - {"type"} - set(fields))
    if unknown:
        allowed = ", ".join(fields) or "none"
        raise ProtocolError(f"'{kind}' has unknown field(s) {', '.join(k[:40] for k in unknown[:5])} "
                            f"(allowed: {allowed})")
    for name, wanted in fields.items():
        if name in message and type(message[name]) is not wanted:
            raise ProtocolError(f"'{name}' must be {TYPE_NAMES[wanted]}, not {type(message[name]).__name__}")
    return message


def authenticate(text: Optional[str], token_ok: Callable[[Optional[str]], bool]) -> None:
    """The first message of a socket without the token in a header: {"type": "auth", "token": ...} or out."""
    try:
        auth = parse_message(text) if text is not None else None
    except ProtocolError:
        auth = None
    if auth is None or auth["type"] != "auth":
        raise Unauthorized('send {"type": "auth", "token": ...} first')
    if not token_ok(auth.get("token")):
        raise Unauthorized("wrong token")


@dataclass(eq=False)
class Client:
    """One WebSocket client of a session: its open utterance, its PCM stream and the utterances it has queued.
    `send(event)` delivers an event to it from any thread; `send_media(message, backlog) -> bool`, on the server's
    loop, a binary media message (engine/serve/media.py), False once `backlog` of them wait (None: its transport
    carries no media)."""
    send: Callable[[dict], None]
    send_media: Optional[Callable[[bytes, int], bool]] = None
    utterance: Optional[int] = None
    pcm: Optional[PcmStream] = None
    seconds: float = 0.0
    tags: set = field(default_factory=set)
    blendshapes: bool = False  # wants a `blendshapes` event per presented frame


class SpeechDesk:
    """One session's clients and utterances in front of its engine (anything with push, close, interrupt and an
    AudioBuffer `buffer`)."""

    def __init__(self, engine, limits: SpeechLimits = SpeechLimits(), media=None):
        self.engine, self.limits, self.media = engine, limits, media  # media: the session's MediaFeed, if any
        self.clients: set[Client] = set()
        self.owners: dict = {}                     # utterance id -> the client that queued it (None: an upload)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()              # owners, ids, clients: written by the transport, read by events

    def new_utterance(self, client: Optional[Client]) -> int:
        with self._lock:
            tag = next(self._ids)
            self.owners[tag] = client
        return tag

    def connect(self, send: Callable[[dict], None],
                send_media: Optional[Callable[[bytes, int], bool]] = None) -> Client:
        client = Client(send, send_media)
        with self._lock:  # (a Ray host connects clients on another thread than the one routing events)
            self.clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        """Gone mid-utterance: what arrived is spoken, as if it had ended."""
        with self._lock:
            self.clients.discard(client)
        if self.media is not None:
            self.media.unsubscribe(client)
        self.end_utterance(client)

    def on_text(self, client: Client, text: str) -> list[dict]:
        """A JSON message; returns the replies for this client."""
        message = parse_message(text)
        kind = message["type"]
        if kind == "auth":  # already authenticated (header or first message)
            return [{"type": "authenticated"}]
        if kind == "start":
            rate, fmt = message.get("sample_rate", SAMPLE_RATE), message.get("format", "int16")
            channels = message.get("channels", 1)
            if rate not in RATES:
                raise ProtocolError(f"sample_rate must be one of {', '.join(map(str, RATES))}")
            if fmt not in PCM_FORMATS:
                raise ProtocolError(f"format must be one of {', '.join(PCM_FORMATS)}")
            if channels not in (1, 2):
                raise ProtocolError("channels must be 1 or 2")
            self.end_utterance(client)
            client.utterance, client.pcm, client.seconds = self.new_utterance(client), PcmStream(fmt, channels,
                                                                                                 rate), 0.0
            client.tags.add(client.utterance)
            return [{"type": "queued", "utterance": client.utterance, **self.queue()}]
        if kind == "end":
            if client.utterance is None:
                raise ProtocolError("'end' without a 'start'")
            self.end_utterance(client)
        elif kind == "interrupt":
            self.interrupt(client)
        elif kind == "blendshapes":
            if getattr(self.engine, "meter", None) is None:
                raise ProtocolError("this session computes no blendshapes (serve with --blendshapes)")
            client.blendshapes = message.get("on", True)
            return [{"type": "subscription", "blendshapes": client.blendshapes}]
        elif kind == "media":
            return [self._subscribe_media(client, message.get("on", True))]
        return []

    def _subscribe_media(self, client: Client, on: bool) -> dict:
        """Frames and their audio back to this client (engine/serve/media.py), or no more."""
        if self.media is None or client.send_media is None:
            raise ProtocolError("this connection carries no media (connect to stream_out.py serve's WebSocket)")
        if not on:
            self.media.unsubscribe(client)
            return {"type": "subscription", "media": False}
        try:
            self.media.subscribe(client)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        width, height = self.media.size or (0, 0)
        return {"type": "subscription", "media": True, "fps": self.media.fps, "sample_rate": SAMPLE_RATE,
                "width": width, "height": height}

    def on_pcm(self, client: Client, data: bytes) -> None:
        if client.utterance is None:
            raise ProtocolError("audio before 'start' (send {\"type\": \"start\", ...} first)")
        self._queue_speech(client, client.pcm.feed(data))

    def interrupt(self, client: Client) -> None:
        """Drop this client's speech, queued or playing, and end its open utterance; other clients' speech and
        uploads go on. (An utterance with no audio yet ends at once, so its owner still hears of it.) The client
        gets an `interrupted` event in the frames' order: what the session presents after it is muted."""
        mine = {t for t in client.tags if t in self.owners}
        dropped = set(self.engine.interrupt(mine, ack=self.new_utterance(client)))
        if client.utterance is not None and client.utterance not in dropped:
            self.engine.close(client.utterance)
        client.utterance = client.pcm = None

    def speak(self, pcm: np.ndarray) -> int:
        """A whole utterance (an upload); QueueFull past the session's cap."""
        if self.engine.buffer.available + len(pcm) > self.limits.max_queue_seconds * SAMPLE_RATE:
            raise QueueFull(self._full("the server's", self.engine.buffer.available, self.limits.max_queue_seconds))
        tag = self.new_utterance(None)
        self.engine.push(pcm, tag)
        self.engine.close(tag)
        return tag

    def _queue_speech(self, client: Client, pcm: np.ndarray) -> None:
        """Queue a client's speech within its caps; past one, the chunk is refused and nothing queued is lost."""
        limits = self.limits
        if client.seconds + len(pcm) / SAMPLE_RATE > limits.max_utterance_seconds:
            raise ProtocolError(f"utterance longer than {limits.max_utterance_seconds:.0f} s: chunk dropped")
        client.tags = {t for t in client.tags if t == client.utterance or self.engine.buffer.queued([t])}
        mine, everyone = self.engine.buffer.queued(client.tags), self.engine.buffer.available
        if mine + len(pcm) > limits.max_client_queue_seconds * SAMPLE_RATE:
            raise QueueFull(self._full("your", mine, limits.max_client_queue_seconds))
        if everyone + len(pcm) > limits.max_queue_seconds * SAMPLE_RATE:
            raise QueueFull(self._full("the server's", everyone, limits.max_queue_seconds))
        client.seconds += len(pcm) / SAMPLE_RATE
        self.engine.push(pcm, client.utterance)

    @staticmethod
    def _full(whose: str, queued: int, limit: float) -> str:
        return (f"{whose} queue is full ({queued / SAMPLE_RATE:.1f} s of speech waiting, limit {limit:.0f} s): "
                f"refused; send it again once some has been spoken")

    def end_utterance(self, client: Client) -> None:
        """Close the client's open utterance, with the resampler's last samples."""
        if client.utterance is None:
            return
        tail = client.pcm.flush() if client.pcm is not None else np.zeros(0, np.float32)
        if tail.size:
            try:
                self._queue_speech(client, tail)
            except ProtocolError:  # a few ms past a cap: the caps hold exactly, the tail goes
                pass
        self.engine.close(client.utterance)
        client.utterance = client.pcm = None

    def queue(self) -> dict:
        return {"queue_seconds": self.engine.buffer.available / SAMPLE_RATE,
                "queued_utterances": len(self.engine.buffer.queued_tags)}

    def route(self, event: dict) -> None:
        """An engine event: blendshapes to every client that asked for them, a session's failure to every client;
        the others to the client that queued the utterance (uploads have none), with the queue depth."""
        if event["type"] in ("blendshapes", "session_failed"):
            with self._lock:
                subscribed = [c for c in self.clients if c.blendshapes or event["type"] == "session_failed"]
            for client in subscribed:
                client.send(event)
            return
        tag = event.get("utterance")
        with self._lock:
            client = self.owners.get(tag)
            if event["type"] in ("speech_ended", "speech_interrupted", "interrupted"):
                self.owners.pop(tag, None)
        if client is not None and client in self.clients:
            client.send({**event, **self.queue()})


def speak_upload(desk: SpeechDesk, data: bytes, max_seconds: float) -> tuple[int, dict]:
    """An uploaded audio file, decoded and queued in a session: (HTTP status, body), as every transport answers it.
    Blocking (the decode): transports call it off their event loop."""
    try:
        pcm = decode_upload(data, max_seconds)
    except AudioTooLong as exc:
        return 413, {"error": str(exc)}
    except AudioError as exc:
        return 400, {"error": str(exc)}
    try:
        tag = desk.speak(pcm)
    except QueueFull as exc:
        return 429, {"error": str(exc)}
    return 200, {"utterance": tag, "seconds": len(pcm) / SAMPLE_RATE}
