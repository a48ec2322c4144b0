"""The network API: streaming speech in over a WebSocket, audio files over HTTP, live video out over WebRTC.

One aiohttp server next to a running LiveEngine:
  GET  /          the WebRTC preview page          POST /offer   its SDP offer -> our answer
  GET  /ws        WebSocket: start / PCM chunks / end / interrupt in; speech and queue events out
  POST /speak     an audio file (wav, mp3, flac, ogg/opus, m4a/mp4/mov, webm/mkv, aac) to speak
  GET  /status    fps, latency, queue, sinks       GET  /health  liveness

Who may drive the presenter: it binds to 127.0.0.1 unless told otherwise, and any other address needs a token. Every
request must name this server in its Host header (so a DNS-rebinding page cannot reach it under its own name), and
a browser request from another site's page (its Origin) is refused. The token travels only in the Authorization
header, or for browsers in the first WebSocket message; never in a URL, which would leave it in logs and history.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import numpy as np

from core.errors import UserError

from audio.decode import RATES, PCM_FORMATS, AudioError, AudioTooLong, PcmStream, decode_upload
from .loop import LiveEngine
from core.timebase import SAMPLE_RATE
from .webrtc import PeerLimit, WebRtcSink

log = logging.getLogger("engine.server")
VIEWER = Path(__file__).with_name("viewer.html")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
UNAUTHORIZED = 4401  # WebSocket close code: no valid token
# the JSON messages a client may send: type -> {field: exact Python type}
MESSAGES = {"auth": {"token": str}, "start": {"sample_rate": int, "format": str, "channels": int},
            "end": {}, "interrupt": {}}


class ProtocolError(ValueError):
    """A client message the server cannot use; sent back as an error event."""


class Unauthorized(ProtocolError):
    """A WebSocket that has not given the token: told why, then closed."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: Optional[str] = None
    allow_hosts: tuple[str, ...] = ()      # more names the server answers to (Host header), e.g. a LAN name
    allow_origins: tuple[str, ...] = ()    # more web origins whose pages may use the API
    max_message_bytes: int = 1 << 20       # one WebSocket message (bigger closes the socket: code 1009)
    max_utterance_seconds: float = 300.0   # audio beyond this in one utterance is refused
    max_queue_seconds: float = 300.0       # speech waiting to be spoken, all clients and uploads together
    max_client_queue_seconds: float = 60.0  # of which one WebSocket client may have waiting
    max_upload_bytes: int = 64 << 20       # POST /speak
    max_peers: int = 4                     # WebRTC viewers at once
    peer_connect_seconds: float = 15.0     # a viewer not connected by then gives its slot back
    max_decodes: int = 2                   # uploads read and decoded at once; more wait their turn
    upload_seconds: float = 60.0           # an upload must arrive within this
    auth_seconds: float = 10.0             # a browser's WebSocket must send its token within this


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_bind(cfg: ServerConfig) -> None:
    """Anything but loopback is reachable by others: refuse to serve it without a token."""
    if not is_loopback(cfg.host) and not cfg.token:
        raise ValueError(f"--listen {cfg.host}:{cfg.port} is reachable from other machines: give a token (set "
                         f"STREAM_WAV2LIP_TOKEN, or --token SECRET; clients send 'Authorization: Bearer SECRET'), "
                         f"or listen on 127.0.0.1")


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def host_of(header: str) -> str:
    """The name in a Host header or an origin's netloc, without port or brackets, lower-case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else ""
    name, _, port = header.rpartition(":")
    return (name if port.isdigit() and name else header).rstrip(".")


class Gate:
    """Which Host names and which browser origins the server accepts, and the token check."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.hosts = {h.lower() for h in (*LOOPBACK_NAMES, cfg.host, *cfg.allow_hosts)}
        self.any_ip = cfg.host in WILDCARDS  # a name can be rebound, an address typed by the user cannot
        self.origins = {o.lower().rstrip("/") for o in cfg.allow_origins}

    def host_allowed(self, header: Optional[str]) -> bool:
        if not header:
            return False
        name = host_of(header)
        return name in self.hosts or (self.any_ip and is_ip(name))

    def origin_allowed(self, origin: Optional[str], host_header: str) -> bool:
        if origin is None:  # not a browser (scripts, OBS, ffmpeg): the Host and token checks are enough
            return True
        origin = origin.lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme == "http" and parts.netloc == host_header.strip().lower()  # the server's own page

    def cross_origin_allowed(self, origin: Optional[str]) -> bool:
        """A page on another site the user allowed with --allow_origin: it gets CORS headers."""
        return origin is not None and origin.lower().rstrip("/") in self.origins

    def token_ok(self, given: Optional[str]) -> bool:
        if not self.cfg.token:
            return True
        try:
            return given is not None and hmac.compare_digest(given.encode(), self.cfg.token.encode())
        except UnicodeError:  # lone surrogates from JSON: not any token's bytes
            return False

    @staticmethod
    def bearer(request) -> Optional[str]:
        header = request.headers.get("Authorization", "")
        return header[7:] if header.startswith("Bearer ") else None


def cors_headers(origin: str, preflight: bool = False) -> dict:
    """What lets an allowed page on another site call the API with its token (Authorization header)."""
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update({"Access-Control-Allow-Methods": "GET, POST",
                        "Access-Control-Allow-Headers": "Authorization, Content-Type",
                        "Access-Control-Max-Age": "600"})
    return headers


def _access_logger():
    from aiohttp.abc import AbstractAccessLogger

    class PathOnlyAccessLogger(AbstractAccessLogger):
        """Access lines without query strings or headers: nothing secret ever reaches a log."""

        def log(self, request, response, time_taken: float) -> None:
            self.logger.info('%s "%s %s" %d %.1f ms', request.remote, request.method, request.path,
                             response.status, time_taken * 1000)

    return PathOnlyAccessLogger


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
            raise ProtocolError(f"'{name}' must be {'an integer' if wanted is int else 'a string'}, not "
                                f"{type(message[name]).__name__}")
    return message


@dataclass(eq=False)
class Client:
    """One WebSocket client: its open utterance, its PCM stream and the utterances it has queued."""
    ws: object
    authed: bool
    utterance: Optional[int] = None
    pcm: Optional[PcmStream] = None
    seconds: float = 0.0
    tags: set = field(default_factory=set)
    closed: bool = False


@dataclass
class Utterances:
    """Who queued which utterance, so its events reach that client."""
    owners: dict = field(default_factory=dict)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def new(self, client: Optional[Client]) -> int:
        tag = next(self.ids)
        self.owners[tag] = client
        return tag


class Server:
    def __init__(self, engine: LiveEngine, cfg: ServerConfig = ServerConfig()):
        check_bind(cfg)
        self.engine, self.cfg = engine, cfg
        self.gate = Gate(cfg)
        self.loop = asyncio.new_event_loop()
        self.webrtc = WebRtcSink(self.loop, cfg.max_peers, cfg.peer_connect_seconds)
        engine.sinks.append(self.webrtc)
        engine.on_event = lambda event: self.loop.call_soon_threadsafe(self._route, event)
        self.utterances = Utterances()
        self.clients: set[Client] = set()
        self.port: Optional[int] = None
        self._runner = None
        self._engine_thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._failure: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._decodes: Optional[asyncio.Semaphore] = None

    # --- the app -------------------------------------------------------------------------------------------------
    def app(self):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            host = request.headers.get("Host", "")
            if not self.gate.host_allowed(host):
                return web.json_response({"error": f"Host {host[:100]!r} is not a name of this server (serve it "
                                                   f"under another name with --allow_host NAME)"}, status=403)
            origin = request.headers.get("Origin")
            if not self.gate.origin_allowed(origin, host):
                return web.json_response({"error": f"requests from pages on {origin[:100]!r} are refused (allow "
                                                   f"that site with --allow_origin ORIGIN)"}, status=403)
            cors = self.gate.cross_origin_allowed(origin)
            if cors and request.method == "OPTIONS":  # a browser's preflight for an allowed site: no token asked
                return web.Response(status=204, headers=cors_headers(origin, preflight=True))
            token_free = request.method == "GET" and request.path == "/"  # the page itself holds no secret
            socket_auth = request.path == "/ws" and self.gate.bearer(request) is None  # token in its first message
            if token_free or socket_auth or self.gate.token_ok(self.gate.bearer(request)):
                response = await handler(request)
            else:
                response = web.json_response({"error": "missing or wrong token: send 'Authorization: Bearer "
                                                        "TOKEN' (tokens in URLs are not accepted)"}, status=401)
            if cors and not response.prepared:  # a WebSocket is already under way: nothing to add
                response.headers.update(cors_headers(origin))
            return response

        app = web.Application(middlewares=[guard], client_max_size=self.cfg.max_upload_bytes)
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
            sdp, kind = body["sdp"], body["type"]
            if type(sdp) is not str or type(kind) is not str:
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            return web.json_response({"error": "expected JSON {sdp, type} with string values"}, status=400)
        try:
            sdp, kind = await self.webrtc.answer(sdp, kind)
        except PeerLimit as exc:
            return web.json_response({"error": str(exc)}, status=503)
        except Exception as exc:  # aiortc raises several types for a bad SDP; the peer is already closed
            return web.json_response({"error": f"bad offer: {str(exc)[:200]}"}, status=400)
        return web.json_response({"sdp": sdp, "type": kind})

    async def _speak(self, request):
        from aiohttp import web
        async with self._decodes:  # at most max_decodes uploads held in memory and decoded at once
            try:
                data = await asyncio.wait_for(request.read(), self.cfg.upload_seconds)
            except asyncio.TimeoutError:
                return web.json_response({"error": f"upload not received within {self.cfg.upload_seconds:.0f} s"},
                                         status=408)
            try:
                pcm = await self.loop.run_in_executor(None, decode_upload, data, self.cfg.max_utterance_seconds)
            except AudioTooLong as exc:
                return web.json_response({"error": str(exc)}, status=413)
            except AudioError as exc:
                return web.json_response({"error": str(exc)}, status=400)
        if self.engine.buffer.available + len(pcm) > self.cfg.max_queue_seconds * SAMPLE_RATE:
            return web.json_response({"error": self._full("the server's", self.engine.buffer.available,
                                                          self.cfg.max_queue_seconds)}, status=429)
        tag = self.utterances.new(None)
        self.engine.push(pcm, tag)
        self.engine.close(tag)
        return web.json_response({"utterance": tag, "seconds": len(pcm) / SAMPLE_RATE})

    def status(self) -> dict:
        """fps; latency from the input (arrival of the chunk that completed a frame's window to that frame on
        screen, waits behind queued speech included) beside the clock's pacing offset; frames shown without the
        model to stay on time; the queue; sinks and viewers."""
        stats, engine = self.engine.stats, self.engine
        running = engine.started_at is not None and time.monotonic() > engine.started_at
        elapsed = time.monotonic() - engine.started_at if running else 0.0
        return {"fps": stats.frames / elapsed if elapsed > 1 else 0.0, "frames": stats.frames,
                "lip_synced": stats.inferred, "speech_frames": stats.speech, "skipped": stats.skipped,
                "late": stats.late, "latency_ms": {"target": engine.cfg.latency_ms, **stats.latency_ms()},
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
        client = Client(ws, authed=self.gate.token_ok(self.gate.bearer(request)))
        self.clients.add(client)
        try:
            while True:
                try:  # without the token in a header, the first message must bring it, within auth_seconds
                    message = await ws.receive(timeout=None if client.authed else self.cfg.auth_seconds)
                except asyncio.TimeoutError:
                    raise Unauthorized(f"no token within {self.cfg.auth_seconds:.0f} s: send "
                                       f'{{"type": "auth", "token": ...}} first') from None
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if not client.authed:
                    self._authenticate(client, message)
                    await self._send(client, {"type": "authenticated"})
                    continue
                try:
                    if message.type == WSMsgType.TEXT:
                        await self._on_text(client, message.data)
                    elif message.type == WSMsgType.BINARY:
                        self._on_pcm(client, message.data)
                except Unauthorized:
                    raise
                except (ProtocolError, AudioError) as exc:
                    await self._send(client, {"type": "error", "message": str(exc)})
                except Exception:  # a bug must cost this message, never the socket or the server
                    log.exception("WebSocket message failed")
                    await self._send(client, {"type": "error", "message": "internal error on this message"})
        except Unauthorized as exc:
            await self._send(client, {"type": "error", "message": str(exc)})
            await ws.close(code=UNAUTHORIZED, message=b"unauthorized")
        finally:
            client.closed = True
            self.clients.discard(client)
            self._end_utterance(client)  # gone mid-utterance: speak what arrived, as if it had ended
        return ws

    def _authenticate(self, client: Client, message) -> None:
        """The first message of a socket without the token in a header: {"type": "auth", "token": ...} or out."""
        from aiohttp import WSMsgType
        try:
            auth = parse_message(message.data) if message.type == WSMsgType.TEXT else None
        except ProtocolError:
            auth = None
        if auth is None or auth["type"] != "auth":
            raise Unauthorized('send {"type": "auth", "token": ...} first')
        if not self.gate.token_ok(auth.get("token")):
            raise Unauthorized("wrong token")
        client.authed = True

    async def _on_text(self, client: Client, text: str) -> None:
        message = parse_message(text)
        kind = message["type"]
        if kind == "auth":  # already authenticated (header or first message)
            await self._send(client, {"type": "authenticated"})
            return
        if kind == "start":
            rate, fmt = message.get("sample_rate", SAMPLE_RATE), message.get("format", "int16")
            channels = message.get("channels", 1)
            if rate not in RATES:
                raise ProtocolError(f"sample_rate must be one of {', '.join(map(str, RATES))}")
            if fmt not in PCM_FORMATS:
                raise ProtocolError(f"format must be one of {', '.join(PCM_FORMATS)}")
            if channels not in (1, 2):
                raise ProtocolError("channels must be 1 or 2")
            self._end_utterance(client)
            client.utterance, client.pcm, client.seconds = self.utterances.new(client), PcmStream(fmt, channels,
                                                                                                  rate), 0.0
            client.tags.add(client.utterance)
            await self._send(client, {"type": "queued", "utterance": client.utterance, **self._queue()})
        elif kind == "end":
            if client.utterance is None:
                raise ProtocolError("'end' without a 'start'")
            self._end_utterance(client)
        elif kind == "interrupt":
            self._interrupt()

    def _interrupt(self) -> None:
        """Drop all queued speech, and end every client's open utterance with it: their later audio needs a new
        'start' (an utterance with no audio yet ends at once, so its owner still hears of it)."""
        open_tags = {c.utterance for c in self.clients if c.utterance is not None}
        dropped = set(self.engine.interrupt())
        for other in self.clients:
            other.utterance = other.pcm = None
        for tag in open_tags - dropped:
            self.engine.close(tag)

    def _on_pcm(self, client: Client, data: bytes) -> None:
        if client.utterance is None:
            raise ProtocolError("audio before 'start' (send {\"type\": \"start\", ...} first)")
        self._queue_speech(client, client.pcm.feed(data))

    def _queue_speech(self, client: Client, pcm: np.ndarray) -> None:
        """Queue a client's speech within its caps; past one, the chunk is refused and nothing queued is lost."""
        if client.seconds + len(pcm) / SAMPLE_RATE > self.cfg.max_utterance_seconds:
            raise ProtocolError(f"utterance longer than {self.cfg.max_utterance_seconds:.0f} s: chunk dropped")
        client.tags = {t for t in client.tags if t == client.utterance or self.engine.buffer.queued([t])}
        mine, everyone = self.engine.buffer.queued(client.tags), self.engine.buffer.available
        if mine + len(pcm) > self.cfg.max_client_queue_seconds * SAMPLE_RATE:
            raise ProtocolError(self._full("your", mine, self.cfg.max_client_queue_seconds))
        if everyone + len(pcm) > self.cfg.max_queue_seconds * SAMPLE_RATE:
            raise ProtocolError(self._full("the server's", everyone, self.cfg.max_queue_seconds))
        client.seconds += len(pcm) / SAMPLE_RATE
        self.engine.push(pcm, client.utterance)

    def _full(self, whose: str, queued: int, limit: float) -> str:
        return (f"{whose} queue is full ({queued / SAMPLE_RATE:.1f} s of speech waiting, limit {limit:.0f} s): "
                f"refused; send it again once some has been spoken")

    def _end_utterance(self, client: Client) -> None:
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

    def _queue(self) -> dict:
        return {"queue_seconds": self.engine.buffer.available / SAMPLE_RATE,
                "queued_utterances": len(self.engine.buffer.queued_tags)}

    async def _send(self, client: Optional[Client], event: dict) -> None:
        if client is None or client.closed or client.ws.closed:
            return
        try:
            await client.ws.send_json(event)
        except ConnectionError:
            client.closed = True

    def _route(self, event: dict) -> None:
        """An engine event (on the loop): to the client that queued the utterance, with the queue depth."""
        tag = event.get("utterance")
        client = self.utterances.owners.get(tag)
        if event["type"] in ("speech_ended", "speech_interrupted"):
            self.utterances.owners.pop(tag, None)
        self.loop.create_task(self._send(client, {**event, **self._queue()}))

    # --- running -------------------------------------------------------------------------------------------------
    async def _start(self) -> None:
        from aiohttp import web
        self._decodes = asyncio.Semaphore(self.cfg.max_decodes)
        self._runner = web.AppRunner(self.app(), access_log_class=_access_logger())
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        try:
            await site.start()
        except OSError as exc:
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise UserError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {reason} (pick another with "
                            f"--listen HOST:PORT)") from exc
        self.port = self._runner.addresses[0][1]
        self._engine_thread = threading.Thread(target=self.engine.run, name="engine", daemon=True)
        self._engine_thread.start()
        log.info("serving on http://%s:%d/ (WebSocket /ws, POST /speak, GET /status)", self.cfg.host, self.port)

    def serve_forever(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()
            raise
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
        self._thread = threading.Thread(target=self._serve_quietly, name="server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the server did not start")
        if self._failure is not None:
            raise self._failure
        return self

    def _serve_quietly(self) -> None:
        try:
            self.serve_forever()
        except BaseException:  # start() re-raises it in the caller's thread
            pass

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
