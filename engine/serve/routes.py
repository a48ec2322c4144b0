"""The network API once, whatever front end carries it: the route table, the checks every request passes, and the
handlers, over a Backend that holds the sessions.

The aiohttp server (engine/serve/server.py) and the Ray Serve router (engine/serve/ray_serve.py) are thin adapters:
each turns its framework's request into a Call, runs check(), then the route's handler, and turns the Answer back.
So a request gets the same answer from either; only where the sessions live differs (in this process, or placed on
Ray session hosts).

Who may drive the presenter: a server binds to 127.0.0.1 unless told otherwise, and any other address needs a token.
Every request must name the server in its Host header (so a DNS-rebinding page cannot reach it under its own name),
and a browser request from another site's page (its Origin) is refused unless that site was allowed. The token
travels only in the Authorization header, or for browsers in the first WebSocket message; never in a URL, which would
leave it in logs and history.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Mapping, Optional, Protocol
from urllib.parse import urlsplit

from audio.decode import AudioError
from configs.spec import ServeSpec
from core.net import is_loopback

from .connections import Places
from .protocol import ProtocolError, SpeechDesk, SpeechLimits, Unauthorized, authenticate
from .sessions import DEFAULT, Session, Sessions, SessionsConfig, UnknownSession
from .talk import TalkerBusy
from .webrtc import PeerLimit

log = logging.getLogger("engine.serve.routes")
VIEWER = Path(__file__).with_name("viewer.html")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
UNAUTHORIZED = 4401  # WebSocket close code: no valid token
SESSION_ENDED = 4404  # WebSocket close code: its session was ended
TOO_BIG = 1009  # WebSocket close code: a message over max_message_bytes
OFFER_SECONDS = 30.0  # an offer not answered by then is dropped (its peer takes no viewer's or talker's place)
JSON = "application/json; charset=utf-8"
OFFER_BODY = "expected JSON {sdp, type} with string values"
SESSION_BODY_BYTES = 64 << 10  # a session body is a few engine flags
OFFER_BODY_BYTES = 256 << 10   # an SDP offer, candidates included, is a few kilobytes
MAX_CONTROL_PER_SECOND = 200  # text messages one socket may send a second (over 5 s) before it is closed
POLICY_VIOLATION = 1008       # WebSocket close code: a client over its message rate


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
    max_upload_bytes: int = 64 << 20       # one request body (POST /speak, /sessions, /offer)
    max_peers: int = SessionsConfig.max_peers  # WebRTC viewers at once
    peer_connect_seconds: float = 15.0     # a viewer not connected by then gives its slot back
    max_decodes: int = 2                   # uploads read and decoded at once; more wait their turn
    upload_seconds: float = 60.0           # a request body must arrive within this
    auth_seconds: float = 10.0             # a browser's WebSocket must send its token within this, pings or not
    max_sockets: int = 512                 # WebSockets open at once, authenticated or not
    max_sockets_per_address: int = 64      # of which from one client address
    max_connections: int = 1024            # connections of any kind at once (at most half the open-file limit)
    max_connections_per_address: int = 128  # of which from one client address
    head_seconds: float = 10.0             # a connection's first request head must arrive within this
    keepalive_seconds: float = 15.0        # an idle kept-alive connection is closed after this

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


def bearer(headers: Mapping[str, str]) -> Optional[str]:
    header = headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else None


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


def cors_headers(origin: str, preflight: bool = False) -> dict:
    """What lets an allowed page on another site call the API with its token (Authorization header)."""
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update({"Access-Control-Allow-Methods": "GET, POST",
                        "Access-Control-Allow-Headers": "Authorization, Content-Type",
                        "Access-Control-Max-Age": "600"})
    return headers


# --- the route table ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    path: str      # {id}: a session's id
    handler: str   # the Api method that answers it

    @property
    def socket(self) -> bool:
        return self.handler == "socket"


SESSION_ROUTES = (("GET", "ws", "socket"), ("POST", "speak", "speak"), ("POST", "offer", "offer"))
ROUTES = (Route("GET", "/", "page"), Route("GET", "/health", "health"), Route("GET", "/metrics", "metrics"),
          Route("GET", "/status", "status"), Route("POST", "/sessions", "create"),
          Route("DELETE", "/sessions/{id}", "end"), Route("GET", "/sessions/{id}/status", "session_status"),
          *(Route(method, f"{prefix}/{name}", handler)  # without the prefix: the default session's
            for prefix in ("/sessions/{id}", "") for method, name, handler in SESSION_ROUTES))


# --- requests and answers ----------------------------------------------------------------------------------------
async def no_body() -> AsyncIterator[bytes]:
    return
    yield


@dataclass(frozen=True)
class Call:
    """One request (or WebSocket upgrade) as the API sees it, whichever framework received it."""
    method: str
    path: str
    headers: Mapping[str, str]  # case-insensitive, as both frameworks give them
    params: Mapping[str, str] = field(default_factory=dict)  # the route's path parameters
    body: Callable[[], AsyncIterator[bytes]] = no_body  # the body's chunks as they arrive
    remote: str = ""  # the client's address

    async def read(self, limit: int) -> bytes:
        """The body, or its first limit + 1 bytes once it is longer: enough to refuse it, never more held."""
        data = bytearray()
        async for chunk in self.body():
            data += chunk
            if len(data) > limit:
                break
        return bytes(data)


@dataclass(frozen=True)
class Answer:
    status: int
    body: object                # a JSON value, or bytes sent as they are
    content_type: str = JSON    # "": none (an empty answer)
    headers: Mapping[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def error(status: int, message: str, headers: Optional[Mapping[str, str]] = None) -> Answer:
    return Answer(status, {"error": message}, headers=headers or {})


class Refused(Exception):
    """A request answered before it reaches the sessions: a body too big, too slow or not what was expected."""

    def __init__(self, answer: Answer):
        super().__init__(answer.status)
        self.answer = answer


def check(gate: Gate, call: Call) -> tuple[Optional[Answer], dict]:
    """Host, Origin and token, before any route: (the answer that ends the call here, or None; the CORS headers
    every answer to it carries). An allowed site's preflight is answered here and needs no token; neither does the
    page (it holds no secret), nor a WebSocket without an Authorization header (its first message brings it)."""
    host = call.headers.get("Host", "")
    if not gate.host_allowed(host):
        return error(403, f"Host {host[:100]!r} is not a name of this server (serve it under another name with "
                          f"--allow_host NAME)"), {}
    origin = call.headers.get("Origin")
    if not gate.origin_allowed(origin, host):
        return error(403, f"requests from pages on {origin[:100]!r} are refused (allow that site with "
                          f"--allow_origin ORIGIN)"), {}
    cors = cors_headers(origin) if gate.cross_origin_allowed(origin) else {}
    if cors and call.method == "OPTIONS":  # a browser's preflight for an allowed site
        return Answer(204, b"", "", cors_headers(origin, preflight=True)), cors
    token = bearer(call.headers)
    token_free = call.method == "GET" and call.path == "/"
    socket_auth = call.path.endswith("/ws") and token is None
    if token_free or socket_auth or gate.token_ok(token):
        return None, cors
    return error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' (tokens in URLs are not "
                      "accepted)", cors), cors


# --- what the handlers need from a front end and a backend -------------------------------------------------------
class Socket(Protocol):
    """An upgraded WebSocket, as a front end gives it to Api.socket."""

    async def receive(self, timeout: Optional[float] = None) -> Optional[tuple[Optional[str], Optional[bytes]]]:
        """The next message as (text, None) or (None, data); None once closed; asyncio.TimeoutError past timeout."""

    async def send(self, event: dict) -> None:
        """An event as JSON text; nothing once closed."""

    async def close(self, code: int, reason: str) -> None: ...


class Link(Protocol):
    """A WebSocket client of a session's desk."""

    async def message(self, text: Optional[str], data: Optional[bytes]) -> Optional[list[dict]]:
        """The replies to one message; None once the session has ended."""

    async def close(self) -> None:
        """Gone: what it sent is spoken, as if its utterance had ended."""


class Backend(Protocol):
    """Where the sessions live. (HTTP status, body) answers, as create_answer and speak_upload give them; a
    session that is not there raises UnknownSession or answers 404."""

    def has(self, sid: str) -> bool: ...
    async def create(self, body: object) -> tuple[int, dict]: ...
    async def end(self, sid: str) -> tuple[int, dict]: ...
    async def status(self) -> dict: ...
    async def session_status(self, sid: str) -> tuple[int, dict]: ...
    async def speak(self, sid: str, data: bytes) -> tuple[int, dict]: ...
    async def offer(self, sid: str, sdp: str, kind: str) -> tuple[int, dict]: ...
    async def metrics(self) -> tuple[bytes, str]: ...
    async def health(self) -> dict: ...  # ok, sessions, and those failed or stalled (health_of)

    async def connect(self, sid: str, ws: Socket) -> Optional[Link]:
        """A client of the session, its events sent to `ws`; None if the session is gone."""


# --- the handlers ------------------------------------------------------------------------------------------------
class Api:
    """The routes' handlers over a backend: each takes a Call and gives an Answer."""

    def __init__(self, cfg: ServerConfig, backend: Backend):
        self.cfg, self.backend, self.gate = cfg, backend, Gate(cfg)
        self.sockets = Places("WebSockets", cfg.max_sockets, cfg.max_sockets_per_address)
        self._decodes = asyncio.Semaphore(cfg.max_decodes)

    async def handle(self, handler: str, call: Call) -> Answer:
        """The answer of a route's handler (a checked call)."""
        try:
            return await getattr(self, handler)(call)
        except UnknownSession as exc:
            return error(404, str(exc))
        except Refused as exc:
            return exc.answer

    async def page(self, call: Call) -> Answer:
        return Answer(200, VIEWER.read_bytes(), "text/html; charset=utf-8")

    async def health(self, call: Call) -> Answer:
        health = await self.backend.health()
        return Answer(200 if health["ok"] else 503, health)

    async def metrics(self, call: Call) -> Answer:
        body, content_type = await self.backend.metrics()
        return Answer(200, body, content_type)

    async def status(self, call: Call) -> Answer:
        return Answer(200, await self.backend.status())

    async def create(self, call: Call) -> Answer:
        return Answer(*await self.backend.create(await self._json(call, "expected a JSON object of engine flags",
                                                                  SESSION_BODY_BYTES)))

    async def end(self, call: Call) -> Answer:
        return Answer(*await self.backend.end(call.params["id"]))

    async def session_status(self, call: Call) -> Answer:
        return Answer(*await self.backend.session_status(call.params["id"]))

    async def speak(self, call: Call) -> Answer:
        sid = self._known(call)
        async with self._decodes:  # at most max_decodes uploads held in memory and decoded at once
            return Answer(*await self.backend.speak(sid, await self._body(call)))

    async def offer(self, call: Call) -> Answer:
        sid = self._known(call)
        body = await self._json(call, OFFER_BODY, OFFER_BODY_BYTES)
        if not isinstance(body, dict) or type(body.get("sdp")) is not str or type(body.get("type")) is not str:
            return error(400, OFFER_BODY)
        return Answer(*await self.backend.offer(sid, body["sdp"], body["type"]))

    def _known(self, call: Call) -> str:
        """The call's session (the default one on the paths without /sessions/{id}), known before its body is
        read."""
        sid = call.params.get("id", DEFAULT)
        if not self.backend.has(sid):
            raise UnknownSession(sid)
        return sid

    async def _body(self, call: Call, limit: Optional[int] = None) -> bytes:
        limit = limit or self.cfg.max_upload_bytes
        try:
            data = await asyncio.wait_for(call.read(limit), self.cfg.upload_seconds)
        except asyncio.TimeoutError:
            raise Refused(error(408, f"upload not received within {self.cfg.upload_seconds:.0f} s")) from None
        if len(data) > limit:
            size = f"{limit / 2 ** 20:g} MiB" if limit >= 2 ** 20 else f"{limit >> 10} KiB"
            raise Refused(error(413, f"request body over {size}"))
        return data

    async def _json(self, call: Call, expected: str, limit: int) -> object:
        """A small JSON body: capped per route, so parsing it cannot hold the event loop."""
        data = await self._body(call, limit)
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise Refused(error(400, expected)) from None

    # --- WebSocket ---------------------------------------------------------------------------------------------
    async def socket(self, call: Call, upgrade: Callable[[], Awaitable[Socket]]) -> Optional[Answer]:
        """The speech protocol on a WebSocket, within the caps on open sockets (503 before the upgrade). With the
        token in a header an unknown session is answered before the upgrade (404); without it, nothing about the
        session is looked up until the first message has brought the token, within auth_seconds counted from the
        upgrade (else closed with 4401). Then each message to the session's desk, the replies and the session's
        events back, and 4404 once it ends. A client sending text messages faster than MAX_CONTROL_PER_SECOND is
        told once and closed (1008)."""
        with self.sockets.held(call.remote) as refusal:
            if refusal is not None:
                return error(503, refusal)
            return await self._converse(call, upgrade)

    async def _converse(self, call: Call, upgrade: Callable[[], Awaitable[Socket]]) -> Optional[Answer]:
        sid = call.params.get("id", DEFAULT)
        by_header = self.gate.token_ok(bearer(call.headers))
        if by_header and not self.backend.has(sid):
            return error(404, str(UnknownSession(sid)))
        ws = await upgrade()
        try:
            if not by_header and not await self._authenticate(ws):
                return None
        except Unauthorized as exc:
            await ws.send({"type": "error", "message": str(exc)})
            await ws.close(UNAUTHORIZED, "unauthorized")
            return None
        link = await self.backend.connect(sid, ws) if self.backend.has(sid) else None
        if link is None:
            await session_ended(ws, sid)
            return None
        rate = MessageRate(MAX_CONTROL_PER_SECOND)
        try:
            while (message := await ws.receive()) is not None:
                text, data = message
                if len(data if data is not None else text.encode(errors="surrogatepass")) > self.cfg.max_message_bytes:
                    await ws.close(TOO_BIG, "message too big")
                    break
                if text is not None and not rate.allows(time.monotonic()):
                    await ws.send({"type": "error", "message": f"over {MAX_CONTROL_PER_SECOND} messages a second: "
                                                               f"closing"})
                    await ws.close(POLICY_VIOLATION, "too many messages")
                    break
                replies = await link.message(text, data)
                if replies is None:
                    await session_ended(ws, sid)
                    break
                for reply in replies:
                    await ws.send(reply)
        finally:
            await link.close()
        return None

    async def _authenticate(self, ws: Socket) -> bool:
        """A socket without the token in a header: its first message must bring it. False: it closed first."""
        try:
            async with asyncio.timeout(self.cfg.auth_seconds):  # absolute: pings and other frames do not extend it
                first = await ws.receive()
        except TimeoutError:
            raise Unauthorized(f"no token within {self.cfg.auth_seconds:.0f} s: send "
                               f'{{"type": "auth", "token": ...}} first') from None
        if first is None:
            return False
        authenticate(first[0], self.gate.token_ok)
        await ws.send({"type": "authenticated"})
        return True


class MessageRate:
    """At most `per_second` messages a second on average over the last `window` seconds (bursts allowed)."""

    def __init__(self, per_second: float, window: float = 5.0):
        self.capacity, self.rate = per_second * window, per_second
        self.tokens, self.at = self.capacity, None

    def allows(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1
        return self.tokens >= 0


async def session_ended(ws: Socket, sid: str) -> None:
    await ws.send({"type": "session_ended", "session": sid})
    await ws.close(SESSION_ENDED, "session ended")


# --- what both backends do with a session of their own -----------------------------------------------------------
def on_message(desk: SpeechDesk, client, text: Optional[str], data: Optional[bytes]) -> list[dict]:
    """One WebSocket message of a client: the replies. A bad message gets an error event, and the socket stays
    open."""
    try:
        if text is not None:
            return desk.on_text(client, text)
        desk.on_pcm(client, data)
    except (ProtocolError, AudioError) as exc:
        return [{"type": "error", "message": str(exc)}]
    except Exception:  # a bug must cost this message, never the socket or the server
        log.exception("WebSocket message failed")
        return [{"type": "error", "message": "internal error on this message"}]
    return []


async def answer_offer(session: Session, sdp: str, kind: str) -> tuple[int, dict]:
    """A browser's offer: a viewer, or a page that talks (its microphone becomes speech on the session's desk)."""
    try:
        sdp, kind = await asyncio.wait_for(session.webrtc.answer(sdp, kind, session.desk), OFFER_SECONDS)
    except PeerLimit as exc:
        return 503, {"error": str(exc)}
    except TalkerBusy as exc:
        return 409, {"error": str(exc)}
    except asyncio.TimeoutError:
        return 504, {"error": f"the offer took over {OFFER_SECONDS:.0f} s to answer"}
    except Exception as exc:  # aiortc raises several types for a bad SDP; the peer is already closed
        return 400, {"error": f"bad offer: {str(exc)[:200]}"}
    return 200, {"sdp": sdp, "type": kind}


def health_of(sessions: Sessions) -> dict:
    """The server's health: not ok only when it cannot serve (the single-session server's own session stopped). A
    failed or stalled session of many is listed, and its own /sessions/{id}/status says why."""
    states = sessions.states()
    stopped = [sid for sid, state in states.items() if state in ("failed", "ended")]
    return {"ok": DEFAULT not in stopped, "sessions": len(states), "stopped": stopped,
            "stalled": [sid for sid, state in states.items() if state == "stalled"]}
