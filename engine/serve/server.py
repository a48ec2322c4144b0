"""The network API's aiohttp front end: HTTP, WebSocket and WebRTC signalling for the sessions of
engine/serve/sessions.py, all of them in this process.

The routes, their checks (Host, Origin, token, CORS) and their handlers are engine/serve/routes.py, shared with the
Ray Serve router; this module turns aiohttp's requests into routes.Call and the answers back, pumps the WebSockets,
and runs the server. One server hosts any number of sessions (engine/serve/protocol.py is the speech protocol on
each socket):
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
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import threading
from typing import Optional

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractAccessLogger

from configs.spec import EngineSpec
from core.errors import UserError
from core.threads import Worker
from engine.render.loop import LiveEngine

from .connections import ConnectionGuard, connection_room
from .metrics import exposition
from .protocol import speak_upload
from .routes import (ROUTES, Answer, Api, Call, ServerConfig, Socket, answer_offer, check, check_bind, health_of,
                     on_message, session_ended)
from .sessions import DEFAULT, Session, Sessions, SessionsConfig, UnknownSession, create_answer

log = logging.getLogger("engine.serve.server")


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access lines without query strings or headers: nothing secret ever reaches a log."""

    def log(self, request, response, time_taken: float) -> None:
        self.logger.info('%s "%s %s" %d %.1f ms', request.remote, request.method, request.path,
                         response.status, time_taken * 1000)


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site with every connection behind a ConnectionGuard (caps, and the request head's deadline)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard):
        super().__init__(runner, host, port)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.wrap(self._runner.server), self._host, self._port, backlog=self._backlog, reuse_address=True)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


def call_of(request: web.Request) -> Call:
    return Call(request.method, request.path, request.headers, request.match_info, request.content.iter_any,
                request.remote or "")


def response_of(answer: Answer) -> web.Response:
    headers = {**answer.headers, **({"Content-Type": answer.content_type} if answer.content_type else {})}
    return web.Response(status=answer.status, body=answer.payload(), headers=headers)


def web_app(api: Api) -> web.Application:
    """The aiohttp app of the route table: every request through the shared check, every route to its handler."""

    @web.middleware
    async def guard(request, handler):
        early, cors = check(api.gate, call_of(request))
        if early is not None:
            return response_of(early)
        response = await handler(request)
        if cors and not response.prepared:  # a WebSocket is already under way: nothing to add
            response.headers.update(cors)
        return response

    def answering(handler: str):
        async def answer(request):
            return response_of(await api.handle(handler, call_of(request)))
        return answer

    async def socket(request):
        ws = web.WebSocketResponse(max_msg_size=api.cfg.max_message_bytes, heartbeat=30)

        sockets = []

        async def upgrade() -> Socket:
            await ws.prepare(request)
            sockets.append(AiohttpSocket(ws))
            return sockets[0]
        try:
            refusal = await api.socket(call_of(request), upgrade)
        finally:
            for sock in sockets:
                await sock.flush()
                sock.finish()
        return ws if refusal is None else response_of(refusal)

    app = web.Application(middlewares=[guard])
    for route in ROUTES:
        app.router.add_route(route.method, route.path, socket if route.socket else answering(route.handler))
    return app


class AiohttpSocket:
    """An aiohttp WebSocket as the shared handler converses on it. Everything sent to it (replies, events, media)
    goes out in the order it was posted, from one writer task, so a client can tell the frames before an event
    from those after it."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.outbox: asyncio.Queue = asyncio.Queue()  # events are few; media is capped by MediaFeed's backlog
        self.media_waiting = 0
        self.writer = asyncio.get_running_loop().create_task(self._write())

    async def receive(self, timeout: Optional[float] = None):
        while True:
            message = await self.ws.receive(timeout=timeout)
            if message.type == WSMsgType.TEXT:
                return message.data, None
            if message.type == WSMsgType.BINARY:
                return None, message.data
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None

    def post(self, event: dict) -> None:
        """On the server's loop: an event, after everything posted before it."""
        self.outbox.put_nowait(event)

    def post_media(self, message: bytes, backlog: int) -> bool:
        """On the server's loop: a media message, unless `backlog` of them already wait (False)."""
        if self.media_waiting >= backlog:
            return False
        self.media_waiting += 1
        self.outbox.put_nowait(message)
        return True

    async def send(self, event: dict) -> None:
        self.post(event)

    async def _write(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, bytes):
                self.media_waiting -= 1
            try:
                if not self.ws.closed:
                    await (self.ws.send_bytes(item) if isinstance(item, bytes) else self.ws.send_json(item))
            except ConnectionError:
                pass
            finally:
                self.outbox.task_done()

    async def flush(self, seconds: float = 5.0) -> None:
        """Wait (a while) until what was posted has gone out (or was dropped, the socket being closed)."""
        try:
            await asyncio.wait_for(self.outbox.join(), seconds)
        except asyncio.TimeoutError:
            pass

    async def close(self, code: int, reason: str) -> None:
        await self.flush()
        try:
            await self.ws.close(code=code, message=reason.encode())
        except ConnectionError:
            pass

    def finish(self) -> None:
        self.writer.cancel()


class LocalSessions:
    """The API's backend in this process: the sessions, and their WebSocket clients, whose events are sent from
    the sessions' loop."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions
        self.loader = concurrent.futures.ThreadPoolExecutor(2, "session-load")  # creates: not the decoders' pool
        self.sockets: dict[str, set] = {}  # session id -> its open WebSockets (closed when it ends)

    def has(self, sid: str) -> bool:
        return sid in self.sessions.ids()

    async def create(self, body: object) -> tuple[int, dict]:
        return await asyncio.get_running_loop().run_in_executor(self.loader, create_answer, self.sessions, body)

    async def end(self, sid: str) -> tuple[int, dict]:
        status = await asyncio.get_running_loop().run_in_executor(self.loader, self.sessions.end, sid)
        for ws in list(self.sockets.pop(sid, set())):
            await session_ended(ws, sid)
        return 200, {"ended": sid, "status": status}

    async def status(self) -> dict:
        """Every session and the capacity left; with a default session, its fields at the top level too."""
        everything = self.sessions.status()
        try:
            return {**self.sessions.get(DEFAULT).status(), **everything}
        except UnknownSession:
            return everything

    async def session_status(self, sid: str) -> tuple[int, dict]:
        return 200, self.sessions.get(sid).status()

    async def speak(self, sid: str, data: bytes) -> tuple[int, dict]:
        desk, seconds = self.sessions.get(sid).desk, self.sessions.cfg.limits.max_utterance_seconds
        return await asyncio.get_running_loop().run_in_executor(None, speak_upload, desk, data, seconds)

    async def offer(self, sid: str, sdp: str, kind: str) -> tuple[int, dict]:
        return await answer_offer(self.sessions.get(sid), sdp, kind)

    async def metrics(self) -> tuple[bytes, str]:
        return exposition(self.sessions)

    async def health(self) -> dict:
        return health_of(self.sessions)

    async def connect(self, sid: str, ws: Socket) -> Optional["DeskLink"]:
        try:
            session = self.sessions.get(sid)
        except UnknownSession:
            return None
        return DeskLink(self, session, ws)


class DeskLink:
    """A WebSocket client of a session in this process."""

    def __init__(self, backend: LocalSessions, session: Session, ws: AiohttpSocket):
        self.backend, self.session, self.ws = backend, session, ws
        self.client = session.desk.connect(ws.post, ws.post_media)  # called on the loop the sessions deliver to
        backend.sockets.setdefault(session.id, set()).add(ws)

    async def message(self, text: Optional[str], data: Optional[bytes]) -> list[dict]:
        return on_message(self.session.desk, self.client, text, data)

    async def close(self) -> None:
        self.backend.sockets.get(self.session.id, set()).discard(self.ws)
        self.session.desk.disconnect(self.client)  # gone mid-utterance: speak what arrived, as if it had ended


class Server:
    """The HTTP side of a server's sessions. `engine`, if given, is run as the default session (the serve command
    starts its own with sessions.start before start()); `defaults` are the flags API session bodies are laid on."""

    def __init__(self, engine: Optional[LiveEngine] = None, cfg: ServerConfig = ServerConfig(),
                 sessions_cfg: Optional[SessionsConfig] = None, defaults: EngineSpec = EngineSpec()):
        check_bind(cfg)
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        sessions_cfg = sessions_cfg or SessionsConfig()
        sessions_cfg = SessionsConfig(**{**sessions_cfg.__dict__, "limits": cfg.limits(), "max_peers": cfg.max_peers,
                                         "peer_connect_seconds": cfg.peer_connect_seconds})
        self.sessions = Sessions(defaults, sessions_cfg, self.loop)
        self.backend = LocalSessions(self.sessions)
        self.api = Api(cfg, self.backend)
        self._default_engine = engine
        self.port: Optional[int] = None
        self._runner = None
        self._ready = threading.Event()
        self._failure: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def engine(self) -> LiveEngine:
        return self.sessions.get(DEFAULT).engine

    @property
    def webrtc(self):
        return self.sessions.get(DEFAULT).webrtc

    def app(self) -> web.Application:
        return web_app(self.api)

    # --- running -------------------------------------------------------------------------------------------------
    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log_class=PathOnlyAccessLogger,
                                     keepalive_timeout=self.cfg.keepalive_seconds)
        await self._runner.setup()
        most = connection_room(self.cfg.max_connections)  # per address scaled with it: it takes several to fill it
        guard = ConnectionGuard(most, max(1, self.cfg.max_connections_per_address * most // self.cfg.max_connections),
                                self.cfg.head_seconds)
        site = GuardedSite(self._runner, self.cfg.host, self.cfg.port, guard)
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
            self.backend.loader.shutdown(wait=False)
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()

    def start(self) -> "Server":
        """Serve from a background thread (returns once listening)."""
        self._thread = Worker(self._serve_quietly, "server")
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
            self._thread.join()  # its way out ends every session and finishes their recordings
