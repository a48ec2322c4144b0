"""The network API's transport: HTTP, WebSocket and WebRTC signalling for the sessions of engine/serve/sessions.py.

One aiohttp server hosting any number of sessions (engine/serve/protocol.py is the speech protocol on each socket):
  POST   /sessions              JSON body of engine flags -> {"id": ...} (400 names a bad field, 503 no capacity)
  DELETE /sessions/{id}         end it                    GET /sessions/{id}/status   its fps, latency, queue
  GET    /sessions/{id}/ws      WebSocket: start / PCM chunks / end / interrupt in; speech and queue events out
  POST   /sessions/{id}/speak   an audio file (wav, mp3, flac, ogg/opus, m4a/mp4/mov, webm/mkv, aac) to speak
  POST   /sessions/{id}/offer   WebRTC: a browser's SDP offer -> our answer (the session's video and audio; an
                                offer that sends audio talks: its microphone is speech, one talker at a time, 409)
  GET    /status                every session, the capacity left, the shared models   GET /metrics  Prometheus
  GET    /                      the WebRTC preview page   GET /health  liveness
The session `serve --data_dir` starts is "default", also on the single-session paths /ws, /speak, /offer and
/status (which then carries its fields at the top level, as before sessions existed).

Who may drive the presenter: it binds to 127.0.0.1 unless told otherwise, and any other address needs a token. Every
request must name this server in its Host header (so a DNS-rebinding page cannot reach it under its own name), and
a browser request from another site's page (its Origin) is refused. The token travels only in the Authorization
header, or for browsers in the first WebSocket message; never in a URL, which would leave it in logs and history.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hmac
import ipaddress
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractAccessLogger

from audio.decode import AudioError
from configs.spec import EngineSpec, ServeSpec
from core.errors import UserError
from engine.render.loop import LiveEngine

from .metrics import exposition
from .protocol import ProtocolError, SpeechLimits, Unauthorized, authenticate, speak_upload
from .sessions import DEFAULT, Session, Sessions, SessionsConfig, UnknownSession, create_answer
from .talk import TalkerBusy
from .webrtc import PeerLimit

log = logging.getLogger("engine.serve.server")
VIEWER = Path(__file__).with_name("viewer.html")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
UNAUTHORIZED = 4401  # WebSocket close code: no valid token
SESSION_ENDED = 4404  # WebSocket close code: its session was ended

@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: Optional[str] = None
    allow_hosts: tuple[str, ...] = ()      # more names the server answers to (Host header), e.g. a LAN name
    allow_origins: tuple[str, ...] = ()    # more web origins whose pages may use the API
    max_message_bytes: int = 1 << 20       # one WebSocket message (bigger closes the socket: code 1009)
    max_utterance_seconds: float = SpeechLimits.max_utterance_seconds  # beyond this an utterance is refused
    max_queue_seconds: float = SpeechLimits.max_queue_seconds  # speech waiting, all clients and uploads
    max_client_queue_seconds: float = SpeechLimits.max_client_queue_seconds  # of which one WebSocket client's
    max_upload_bytes: int = 64 << 20       # POST /speak
    max_peers: int = SessionsConfig.max_peers  # WebRTC viewers at once
    peer_connect_seconds: float = 15.0     # a viewer not connected by then gives its slot back
    max_decodes: int = 2                   # uploads read and decoded at once; more wait their turn
    upload_seconds: float = 60.0           # an upload must arrive within this
    auth_seconds: float = 10.0             # a browser's WebSocket must send its token within this

    @classmethod
    def from_spec(cls, spec: ServeSpec) -> "ServerConfig":
        """The server a serve spec asks for; refused here, before any model loads, if it would be open to others
        without a token."""
        host, port = parse_listen(spec.listen)
        cfg = cls(host, port, spec.token or None, spec.allow_host, spec.allow_origin,
                  max_queue_seconds=spec.max_queue_seconds, max_client_queue_seconds=spec.max_client_queue_seconds,
                  max_peers=spec.max_peers)
        check_bind(cfg)
        return cfg

    def limits(self) -> SpeechLimits:
        return SpeechLimits(self.max_utterance_seconds, self.max_queue_seconds, self.max_client_queue_seconds)


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


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access lines without query strings or headers: nothing secret ever reaches a log."""

    def log(self, request, response, time_taken: float) -> None:
        self.logger.info('%s "%s %s" %d %.1f ms', request.remote, request.method, request.path,
                         response.status, time_taken * 1000)


class Server:
    """The HTTP side of a server's sessions. `engine`, if given, is run as the default session (the serve command
    starts its own with sessions.start before start()); `defaults` are the flags API session bodies are laid on."""

    def __init__(self, engine: Optional[LiveEngine] = None, cfg: ServerConfig = ServerConfig(),
                 sessions_cfg: Optional[SessionsConfig] = None, defaults: EngineSpec = EngineSpec()):
        check_bind(cfg)
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.loop = asyncio.new_event_loop()
        sessions_cfg = sessions_cfg or SessionsConfig()
        sessions_cfg = SessionsConfig(**{**sessions_cfg.__dict__, "limits": cfg.limits(), "max_peers": cfg.max_peers,
                                         "peer_connect_seconds": cfg.peer_connect_seconds})
        self.sessions = Sessions(defaults, sessions_cfg, self.loop)
        self._default_engine = engine
        self._loader = concurrent.futures.ThreadPoolExecutor(2, "session-load")  # creates: not the decoders' pool
        self.sockets: dict[str, set] = {}  # session id -> its open WebSockets (closed when it ends)
        self.port: Optional[int] = None
        self._runner = None
        self._ready = threading.Event()
        self._failure: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._decodes: Optional[asyncio.Semaphore] = None

    @property
    def engine(self) -> LiveEngine:
        return self.sessions.get(DEFAULT).engine

    @property
    def webrtc(self):
        return self.sessions.get(DEFAULT).webrtc

    # --- the app -------------------------------------------------------------------------------------------------
    def app(self):

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
            socket_auth = request.path.endswith("/ws") and self.gate.bearer(request) is None  # token comes first
            if token_free or socket_auth or self.gate.token_ok(self.gate.bearer(request)):
                try:
                    response = await handler(request)
                except UnknownSession as exc:
                    response = web.json_response({"error": str(exc)}, status=404)
            else:
                response = web.json_response({"error": "missing or wrong token: send 'Authorization: Bearer "
                                                        "TOKEN' (tokens in URLs are not accepted)"}, status=401)
            if cors and not response.prepared:  # a WebSocket is already under way: nothing to add
                response.headers.update(cors_headers(origin))
            return response

        app = web.Application(middlewares=[guard], client_max_size=self.cfg.max_upload_bytes)
        app.router.add_get("/", self._page)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_post("/sessions", self._create)
        app.router.add_delete("/sessions/{id}", self._end)
        for prefix in ("/sessions/{id}", ""):  # a session's paths; without the prefix, the default session's
            app.router.add_get(f"{prefix}/ws", self._websocket)
            app.router.add_post(f"{prefix}/speak", self._speak)
            app.router.add_post(f"{prefix}/offer", self._offer)
        app.router.add_get("/sessions/{id}/status", self._session_status)
        return app

    def _session(self, request) -> Session:
        return self.sessions.get(request.match_info.get("id", DEFAULT))

    async def _page(self, request):
        return web.Response(text=VIEWER.read_text(), content_type="text/html")

    async def _create(self, request):
        try:
            body = await request.json()
        except (ValueError, RecursionError):
            return web.json_response({"error": "expected a JSON object of engine flags"}, status=400)
        status, answer = await self.loop.run_in_executor(self._loader, create_answer, self.sessions, body)
        return web.json_response(answer, status=status)

    async def _end(self, request):
        sid = request.match_info["id"]
        status = await self.loop.run_in_executor(self._loader, self.sessions.end, sid)
        for ws in list(self.sockets.pop(sid, set())):
            await self._send(ws, {"type": "session_ended", "session": sid})
            try:
                await ws.close(code=SESSION_ENDED, message=b"session ended")
            except ConnectionError:
                pass
        return web.json_response({"ended": sid, "status": status})

    async def _offer(self, request):
        session = self._session(request)
        try:
            body = await request.json()
            sdp, kind = body["sdp"], body["type"]
            if type(sdp) is not str or type(kind) is not str:
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            return web.json_response({"error": "expected JSON {sdp, type} with string values"}, status=400)
        try:
            sdp, kind = await session.webrtc.answer(sdp, kind, session.desk)
        except PeerLimit as exc:
            return web.json_response({"error": str(exc)}, status=503)
        except TalkerBusy as exc:
            return web.json_response({"error": str(exc)}, status=409)
        except Exception as exc:  # aiortc raises several types for a bad SDP; the peer is already closed
            return web.json_response({"error": f"bad offer: {str(exc)[:200]}"}, status=400)
        return web.json_response({"sdp": sdp, "type": kind})

    async def _speak(self, request):
        session = self._session(request)
        async with self._decodes:  # at most max_decodes uploads held in memory and decoded at once
            try:
                data = await asyncio.wait_for(request.read(), self.cfg.upload_seconds)
            except asyncio.TimeoutError:
                return web.json_response({"error": f"upload not received within {self.cfg.upload_seconds:.0f} s"},
                                         status=408)
            status, answer = await self.loop.run_in_executor(None, speak_upload, session.desk, data,
                                                             self.cfg.max_utterance_seconds)
        return web.json_response(answer, status=status)

    def status(self) -> dict:
        """Every session and the capacity left; with a default session, its fields at the top level too."""
        everything = self.sessions.status()
        try:
            return {**self.sessions.get(DEFAULT).status(), **everything}
        except UnknownSession:
            return everything

    async def _status(self, request):
        return web.json_response(self.status())

    async def _session_status(self, request):
        return web.json_response(self._session(request).status())

    async def _metrics(self, request):
        body, content_type = exposition(self.sessions)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _health(self, request):
        dead = [sid for sid in self.sessions.ids() if not self.sessions.alive(sid)]
        return web.json_response({"ok": not dead, "sessions": len(self.sessions), "stopped": dead},
                                 status=503 if dead else 200)

    # --- WebSocket ---------------------------------------------------------------------------------------------
    async def _websocket(self, request):
        session = self._session(request)
        ws = web.WebSocketResponse(max_msg_size=self.cfg.max_message_bytes, heartbeat=30)
        await ws.prepare(request)
        authed = self.gate.token_ok(self.gate.bearer(request))
        client = session.desk.connect(lambda event: self.loop.create_task(self._send(ws, event)))
        self.sockets.setdefault(session.id, set()).add(ws)
        try:
            while True:
                try:  # without the token in a header, the first message must bring it, within auth_seconds
                    message = await ws.receive(timeout=None if authed else self.cfg.auth_seconds)
                except asyncio.TimeoutError:
                    raise Unauthorized(f"no token within {self.cfg.auth_seconds:.0f} s: send "
                                       f'{{"type": "auth", "token": ...}} first') from None
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if not authed:
                    authenticate(message.data if message.type == WSMsgType.TEXT else None, self.gate.token_ok)
                    authed = True
                    await self._send(ws, {"type": "authenticated"})
                    continue
                try:
                    if message.type == WSMsgType.TEXT:
                        for reply in session.desk.on_text(client, message.data):
                            await self._send(ws, reply)
                    elif message.type == WSMsgType.BINARY:
                        session.desk.on_pcm(client, message.data)
                except Unauthorized:
                    raise
                except (ProtocolError, AudioError) as exc:
                    await self._send(ws, {"type": "error", "message": str(exc)})
                except Exception:  # a bug must cost this message, never the socket or the server
                    log.exception("WebSocket message failed")
                    await self._send(ws, {"type": "error", "message": "internal error on this message"})
        except Unauthorized as exc:
            await self._send(ws, {"type": "error", "message": str(exc)})
            await ws.close(code=UNAUTHORIZED, message=b"unauthorized")
        finally:
            self.sockets.get(session.id, set()).discard(ws)
            session.desk.disconnect(client)  # gone mid-utterance: speak what arrived, as if it had ended
        return ws

    @staticmethod
    async def _send(ws, event: dict) -> None:
        if ws.closed:
            return
        try:
            await ws.send_json(event)
        except ConnectionError:
            pass

    # --- running -------------------------------------------------------------------------------------------------
    async def _start(self) -> None:
        self._decodes = asyncio.Semaphore(self.cfg.max_decodes)
        self._runner = web.AppRunner(self.app(), access_log_class=PathOnlyAccessLogger)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        try:
            await site.start()
        except OSError as exc:
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise UserError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {reason} (pick another with "
                            f"--listen HOST:PORT)") from exc
        self.port = self._runner.addresses[0][1]
        if self._default_engine is not None:
            self.sessions.adopt(self._default_engine, DEFAULT)
        log.info("serving on http://%s:%d/ (POST /sessions; WebSocket /ws, POST /speak, GET /status for the "
                 "default session)", self.cfg.host, self.port)

    def serve_forever(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            self.loop.run_until_complete(self._runner.cleanup())
            self.sessions.close()
            self.loop.close()
            raise
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            for sid in self.sessions.ids():
                session = self.sessions.get(sid)
                session.engine.stop()
                if session.webrtc is not None:
                    self.loop.run_until_complete(session.webrtc.close_all())
            self.sessions.close()
            self._loader.shutdown(wait=False)
            self.loop.run_until_complete(self._runner.cleanup())
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

    def wait(self) -> None:
        """Until the server stops (Ctrl-C here raises KeyboardInterrupt)."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

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
