"""The network API: streaming speech in over a WebSocket, audio files over HTTP, live video out over WebRTC.

One aiohttp server next to a running LiveEngine:
  GET  /          the WebRTC preview page          POST /offer   its SDP offer -> our answer
  GET  /ws        WebSocket: start / PCM chunks / end / interrupt in; speech and queue events out
  POST /speak     an audio file (any format ffmpeg reads) to speak
  GET  /status    fps, latency, queue, sinks       GET  /health  liveness
It binds to 127.0.0.1 unless told otherwise; any other address needs a token, which every request must carry
(`Authorization: Bearer <token>` or `?token=`).
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import json
import logging
import tempfile
import threading
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Optional

import numpy as np

from .audio import AudioError, load_audio
from .loop import LiveEngine
from .mel import SAMPLE_RATE
from .webrtc import WebRtcSink

log = logging.getLogger("engine.server")
VIEWER = Path(__file__).with_name("viewer.html")
FORMATS = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}


class ProtocolError(ValueError):
    """A client message the server cannot use; sent back as an error event."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: Optional[str] = None
    max_message_bytes: int = 1 << 20       # one WebSocket message (bigger closes the socket: code 1009)
    max_utterance_seconds: float = 300.0   # audio beyond this in one utterance is refused
    max_upload_bytes: int = 64 << 20       # POST /speak


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(cfg: ServerConfig) -> None:
    """Anything but loopback is reachable by others: refuse to serve it without a token."""
    if not is_loopback(cfg.host) and not cfg.token:
        raise ValueError(f"--listen {cfg.host}:{cfg.port} is reachable from other machines: give --token SECRET "
                         f"(clients send it as 'Authorization: Bearer SECRET' or ?token=SECRET), or listen on "
                         f"127.0.0.1")


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def decode_pcm(data: bytes, fmt: str, channels: int, rate: int) -> np.ndarray:
    """Little-endian PCM (interleaved) -> 16 kHz mono float32."""
    from scipy.signal import resample_poly
    dtype = FORMATS[fmt]
    if len(data) % (dtype.itemsize * channels):
        raise ProtocolError(f"a {fmt} chunk with {channels} channel(s) must be a multiple of "
                            f"{dtype.itemsize * channels} bytes; got {len(data)}")
    pcm = np.frombuffer(data, dtype).astype(np.float32)
    if fmt == "int16":
        pcm /= 32768.0
    pcm = pcm.reshape(-1, channels).mean(axis=1)
    if not np.all(np.isfinite(pcm)):
        raise ProtocolError("the chunk holds NaN or infinite samples")
    if rate != SAMPLE_RATE:
        common = gcd(rate, SAMPLE_RATE)
        pcm = resample_poly(pcm, SAMPLE_RATE // common, rate // common).astype(np.float32)
    return pcm


@dataclass
class Session:
    """One WebSocket client: its open utterance and the format it announced."""
    ws: object
    utterance: Optional[int] = None
    fmt: str = "int16"
    channels: int = 1
    rate: int = SAMPLE_RATE
    seconds: float = 0.0
    closed: bool = False


@dataclass
class Utterances:
    """Who queued which utterance, so its events reach that client."""
    owners: dict = field(default_factory=dict)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def new(self, session: Optional[Session]) -> int:
        tag = next(self.ids)
        self.owners[tag] = session
        return tag


class Server:
    def __init__(self, engine: LiveEngine, cfg: ServerConfig = ServerConfig()):
        check_bind(cfg)
        self.engine, self.cfg = engine, cfg
        self.loop = asyncio.new_event_loop()
        self.webrtc = WebRtcSink(self.loop)
        engine.sinks.append(self.webrtc)
        engine.on_event = lambda event: self.loop.call_soon_threadsafe(self._route, event)
        self.utterances = Utterances()
        self.port: Optional[int] = None
        self._runner = None
        self._engine_thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- the app -------------------------------------------------------------------------------------------------
    def app(self):
        from aiohttp import web

        @web.middleware
        async def require_token(request, handler):
            if self.cfg.token:
                header = request.headers.get("Authorization", "")
                given = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
                if not hmac.compare_digest(given.encode(), self.cfg.token.encode()):
                    return web.json_response({"error": "missing or wrong token"}, status=401)
            return await handler(request)

        app = web.Application(middlewares=[require_token], client_max_size=self.cfg.max_upload_bytes)
        app.router.add_get("/", self._page)
        app.router.add_post("/offer", self._offer)
        app.router.add_get("/ws", self._websocket)
        app.router.add_post("/speak", self._speak)
        app.router.add_get("/status", self._status)
        app.router.add_get("/health", self._health)
        return app

    async def _page(self, request):
        from aiohttp import web
        return web.Response(text=VIEWER.read_text(), content_type="text/html")

    async def _offer(self, request):
        from aiohttp import web
        try:
            body = await request.json()
            sdp, kind = str(body["sdp"]), str(body["type"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON {sdp, type}"}, status=400)
        try:
            sdp, kind = await self.webrtc.answer(sdp, kind)
        except Exception as exc:  # aiortc raises several types for a bad SDP
            return web.json_response({"error": f"bad offer: {exc}"}, status=400)
        return web.json_response({"sdp": sdp, "type": kind})

    async def _speak(self, request):
        from aiohttp import web
        data = await request.read()
        if not data:
            return web.json_response({"error": "empty body: POST the audio file's bytes"}, status=400)
        with tempfile.NamedTemporaryFile(suffix=".audio") as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                pcm = await self.loop.run_in_executor(None, load_audio, tmp.name)
            except AudioError as exc:
                return web.json_response({"error": str(exc)}, status=400)
        if len(pcm) > self.cfg.max_utterance_seconds * SAMPLE_RATE:
            return web.json_response({"error": f"longer than {self.cfg.max_utterance_seconds:.0f} s"}, status=413)
        tag = self.utterances.new(None)
        self.engine.push(pcm, tag)
        self.engine.close(tag)
        return web.json_response({"utterance": tag, "seconds": len(pcm) / SAMPLE_RATE})

    def status(self) -> dict:
        import time
        stats, engine = self.engine.stats, self.engine
        running = engine.started_at is not None and time.monotonic() > engine.started_at
        elapsed = time.monotonic() - engine.started_at if running else 0.0
        offsets = np.array(stats.present_offsets) if stats.present_offsets else np.zeros(1)
        return {"fps": stats.frames / elapsed if elapsed > 1 else 0.0, "frames": stats.frames,
                "lip_synced": stats.inferred, "speech_frames": stats.speech, "late": stats.late,
                "latency_ms": {"target": engine.cfg.latency_ms,
                               "p50": engine.cfg.latency_ms + 1000 * float(np.percentile(offsets, 50)),
                               "p95": engine.cfg.latency_ms + 1000 * float(np.percentile(offsets, 95))},
                "queue": {"seconds": engine.buffer.available / SAMPLE_RATE,
                          "utterances": len(engine.buffer.queued_tags)},
                "sinks": [type(s).__name__ for s in engine.sinks], "webrtc_peers": len(self.webrtc.peers)}

    async def _status(self, request):
        from aiohttp import web
        return web.json_response(self.status())

    async def _health(self, request):
        from aiohttp import web
        alive = self._engine_thread is not None and self._engine_thread.is_alive()
        return web.json_response({"ok": alive}, status=200 if alive else 503)

    # --- WebSocket ---------------------------------------------------------------------------------------------
    async def _websocket(self, request):
        from aiohttp import WSMsgType, web
        ws = web.WebSocketResponse(max_msg_size=self.cfg.max_message_bytes, heartbeat=30)
        await ws.prepare(request)
        session = Session(ws)
        try:
            async for message in ws:
                try:
                    if message.type == WSMsgType.TEXT:
                        await self._on_text(session, message.data)
                    elif message.type == WSMsgType.BINARY:
                        self._on_pcm(session, message.data)
                except ProtocolError as exc:
                    await self._send(session, {"type": "error", "message": str(exc)})
        finally:
            session.closed = True
            if session.utterance is not None:  # gone mid-utterance: speak what arrived, as if it had ended
                self.engine.close(session.utterance)
        return ws

    async def _on_text(self, session: Session, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            raise ProtocolError("not JSON")
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError("a message is a JSON object with a 'type'")
        kind = message["type"]
        if kind == "start":
            rate, fmt, channels = message.get("sample_rate", SAMPLE_RATE), message.get("format", "int16"), \
                message.get("channels", 1)
            if not isinstance(rate, int) or not 8000 <= rate <= 48000:
                raise ProtocolError("sample_rate must be an integer from 8000 to 48000")
            if fmt not in FORMATS:
                raise ProtocolError(f"format must be one of {', '.join(FORMATS)}")
            if channels not in (1, 2):
                raise ProtocolError("channels must be 1 or 2")
            if session.utterance is not None:
                self.engine.close(session.utterance)
            session.utterance, session.rate, session.fmt, session.channels = self.utterances.new(session), rate, \
                fmt, channels
            session.seconds = 0.0
            await self._send(session, {"type": "queued", "utterance": session.utterance, **self._queue()})
        elif kind == "end":
            if session.utterance is None:
                raise ProtocolError("'end' without a 'start'")
            self.engine.close(session.utterance)
            session.utterance = None
        elif kind == "interrupt":
            self.engine.interrupt()
            session.utterance = None
        else:
            raise ProtocolError(f"unknown message type {kind!r} (start, end, interrupt)")

    def _on_pcm(self, session: Session, data: bytes) -> None:
        if session.utterance is None:
            raise ProtocolError("audio before 'start' (send {\"type\": \"start\", ...} first)")
        pcm = decode_pcm(data, session.fmt, session.channels, session.rate)
        if session.seconds + len(pcm) / SAMPLE_RATE > self.cfg.max_utterance_seconds:
            raise ProtocolError(f"utterance longer than {self.cfg.max_utterance_seconds:.0f} s: chunk dropped")
        session.seconds += len(pcm) / SAMPLE_RATE
        self.engine.push(pcm, session.utterance)

    def _queue(self) -> dict:
        return {"queue_seconds": self.engine.buffer.available / SAMPLE_RATE,
                "queued_utterances": len(self.engine.buffer.queued_tags)}

    async def _send(self, session: Optional[Session], event: dict) -> None:
        if session is None or session.closed or session.ws.closed:
            return
        try:
            await session.ws.send_json(event)
        except ConnectionError:
            session.closed = True

    def _route(self, event: dict) -> None:
        """An engine event (on the loop): to the client that queued the utterance, with the queue depth."""
        tag = event.get("utterance")
        session = self.utterances.owners.get(tag)
        if event["type"] in ("speech_ended", "speech_interrupted"):
            self.utterances.owners.pop(tag, None)
        self.loop.create_task(self._send(session, {**event, **self._queue()}))

    # --- running -------------------------------------------------------------------------------------------------
    async def _start(self) -> None:
        from aiohttp import web
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._engine_thread = threading.Thread(target=self.engine.run, name="engine", daemon=True)
        self._engine_thread.start()
        log.info("serving on http://%s:%d/ (WebSocket /ws, POST /speak, GET /status)", self.cfg.host, self.port)

    def serve_forever(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.engine.stop()
            self.loop.run_until_complete(self.webrtc.close_all())
            self.loop.run_until_complete(self._runner.cleanup())
            if self._engine_thread:
                self._engine_thread.join(timeout=5)
            self.loop.close()

    def start(self) -> "Server":
        """Serve from a background thread (returns once listening)."""
        self._thread = threading.Thread(target=self.serve_forever, name="server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the server did not start")
        return self

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
