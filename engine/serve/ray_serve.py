"""Past one machine: sessions on Ray Serve replicas, placed by a router with the same API as `stream_out.py serve`.

  SessionHost   a replica that owns a GPU (or CPU cores) and hosts sessions: engine/serve/sessions.py with its shared
                model workers and its measured capacity. Frames leave from here: each session's outputs (MPEG-TS
                URL, recording) and its WebRTC peers (the browser's offer comes through the router; the media flows
                between the browser and this replica).
  Router        the HTTP/WebSocket ingress: the routes, checks and handlers of engine/serve/routes.py (the same
                as the aiohttp server's) on FastAPI, over PlacedSessions. POST /sessions goes to the host with the
                most room; later requests for that session (WebSocket speech, uploads, offers, status, DELETE) go to
                its host. One router replica holds the placement.

Start it with `stream_out.py ray-serve` (see --help): on one machine it starts Ray itself; on a cluster
(`ray start --head` here, `ray start --address HEAD:6379` on each GPU machine) pass --ray_address auto.
"""
import asyncio
import itertools
import json
import logging
import secrets
import threading
from collections import deque
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request, WebSocket  # FastAPI needs the endpoints' annotations as objects: no
from starlette.requests import HTTPConnection   # postponed annotations here
from starlette.responses import Response
from starlette.websockets import WebSocketDisconnect

from configs.spec import RayServeSpec, StreamOutSpec

from .metrics import exposition_of
from .protocol import speak_upload
from .routes import (ROUTES, Answer, Api, Call, ServerConfig, Socket, answer_offer, check, health_of, no_body,
                     on_message, session_ended)
from .sessions import Sessions, SessionsConfig, UnknownSession, create_answer

log = logging.getLogger("engine.serve.ray_serve")
EVENT_POLL = 0.02  # s between looks at a client's events while the router waits for them


class SessionHost:
    """One replica's sessions. Methods return plain dicts (errors included): they cross process boundaries."""

    def __init__(self, spec: StreamOutSpec):
        self.loop = asyncio.new_event_loop()  # WebRTC and event delivery, as in the single-machine server
        threading.Thread(target=self.loop.run_forever, name="host-loop", daemon=True).start()
        self.sessions = Sessions(spec.engine(), SessionsConfig.from_spec(spec), self.loop)
        self.clients: dict[tuple[str, int], tuple] = {}  # (session, key) -> (Client, its pending events)
        self._keys = itertools.count(1)

    def room(self) -> dict:
        left, reason = self.sessions.room()
        return {"left": left, "reason": reason}

    def create(self, body: object, sid: str) -> dict:
        status, answer = create_answer(self.sessions, body, sid)
        return {"http": status, **answer}

    def end(self, sid: str) -> dict:
        try:
            return {"http": 200, "ended": sid, "status": self.sessions.end(sid)}
        except UnknownSession as exc:
            return {"http": 404, "error": str(exc)}

    def status(self, sid: Optional[str] = None) -> dict:
        if sid is None:
            return self.sessions.status()
        try:
            return {"http": 200, **self.sessions.get(sid).status()}
        except UnknownSession as exc:
            return {"http": 404, "error": str(exc)}

    def health(self) -> dict:
        return health_of(self.sessions)

    def connect(self, sid: str) -> Optional[int]:
        if sid not in self.sessions.ids():
            return None
        key, pending = next(self._keys), deque()
        self.clients[(sid, key)] = (self.sessions.get(sid).desk.connect(pending.append), pending)
        return key

    def message(self, sid: str, key: int, text: Optional[str] = None, data: Optional[bytes] = None
                ) -> Optional[list[dict]]:
        """One WebSocket message of a client; the replies (errors as error events), None once its session ended."""
        entry = self.clients.get((sid, key))
        if entry is None or sid not in self.sessions.ids():
            return None
        return on_message(self.sessions.get(sid).desk, entry[0], text, data)

    async def events(self, sid: str, key: int, wait: float = 1.0) -> Optional[list[dict]]:
        """The client's engine events, waiting up to `wait` s for one; None once its session has ended."""
        entry = self.clients.get((sid, key))
        if entry is None or sid not in self.sessions.ids():
            return None
        pending = entry[1]
        for _ in range(int(wait / EVENT_POLL)):
            if pending:
                break
            await asyncio.sleep(EVENT_POLL)
        return [pending.popleft() for _ in range(len(pending))]

    def disconnect(self, sid: str, key: int) -> None:
        entry = self.clients.pop((sid, key), None)
        if entry is not None and sid in self.sessions.ids():
            self.sessions.get(sid).desk.disconnect(entry[0])

    def speak(self, sid: str, data: bytes) -> dict:
        if sid not in self.sessions.ids():
            return {"http": 404, "error": f"no session {sid!r}"}
        status, answer = speak_upload(self.sessions.get(sid).desk, data,
                                      self.sessions.cfg.limits.max_utterance_seconds)
        return {"http": status, **answer}

    def offer(self, sid: str, sdp: str, kind: str) -> dict:
        """A browser's offer: a viewer, or a page that talks (its microphone becomes speech on the session's desk)."""
        if sid not in self.sessions.ids():
            return {"http": 404, "error": f"no session {sid!r}"}
        future = asyncio.run_coroutine_threadsafe(answer_offer(self.sessions.get(sid), sdp, kind), self.loop)
        status, answer = future.result()
        return {"http": status, **answer}


def split(result: dict) -> tuple[int, dict]:
    """A host's answer, {"http": status, ...}, as (status, body)."""
    return result.pop("http", 200), result


class PlacedSessions:
    """The API's backend on Ray: sessions placed on the SessionHost replicas, each request sent to its session's
    host."""

    def __init__(self, hosts):
        self.hosts = list(hosts)
        self.placement: dict[str, int] = {}  # session id -> index of its host

    def has(self, sid: str) -> bool:
        return sid in self.placement

    def host(self, sid: str):
        if sid not in self.placement:
            raise UnknownSession(sid)
        return self.hosts[self.placement[sid]]

    async def create(self, body: object) -> tuple[int, dict]:
        """On the host with the most room (each measures its own)."""
        rooms = await asyncio.gather(*(h.room.remote() for h in self.hosts), return_exceptions=True)
        rooms = [r if isinstance(r, dict) else {"left": 0, "reason": f"not answering ({r!r:.100})"} for r in rooms]
        best = max(range(len(self.hosts)), key=lambda i: rooms[i]["left"])
        if rooms[best]["left"] < 1:
            reasons = "; ".join(f"host {i}: {r['reason']}" for i, r in enumerate(rooms))
            return 503, {"error": f"no capacity for another session: {reasons}"}
        sid = secrets.token_hex(6)
        status, answer = split(await self.hosts[best].create.remote(body, sid))
        if status == 201:
            self.placement[sid] = best
            answer["host"] = best
        return status, answer

    async def end(self, sid: str) -> tuple[int, dict]:
        host = self.host(sid)
        del self.placement[sid]
        return split(await host.end.remote(sid))

    async def status(self) -> dict:
        statuses = await asyncio.gather(*(h.status.remote() for h in self.hosts), return_exceptions=True)
        statuses = [s if isinstance(s, dict) else {"error": f"not answering ({s!r:.100})"} for s in statuses]
        return {"hosts": statuses, "placement": dict(self.placement)}

    async def session_status(self, sid: str) -> tuple[int, dict]:
        return split(await self.host(sid).status.remote(sid))

    async def speak(self, sid: str, data: bytes) -> tuple[int, dict]:
        return split(await self.host(sid).speak.remote(sid, data))

    async def offer(self, sid: str, sdp: str, kind: str) -> tuple[int, dict]:
        return split(await self.host(sid).offer.remote(sid, sdp, kind))

    async def metrics(self) -> tuple[bytes, str]:
        statuses = await asyncio.gather(*(h.status.remote() for h in self.hosts), return_exceptions=True)
        return exposition_of([(str(i), s) for i, s in enumerate(statuses) if isinstance(s, dict)])

    async def health(self) -> dict:
        """Every host's sessions; a host that does not answer makes the whole not ok."""
        answers = await asyncio.gather(*(h.health.remote() for h in self.hosts), return_exceptions=True)
        health = {"ok": True, "sessions": 0, "stopped": [], "stalled": []}
        for i, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                health["ok"] = False
                health["stopped"].append(f"host {i}")
            else:
                health["ok"] &= answer["ok"]
                health["sessions"] += answer["sessions"]
                health["stopped"] += answer["stopped"]
                health["stalled"] += answer["stalled"]
        return health

    async def connect(self, sid: str, ws: Socket) -> Optional["HostLink"]:
        host = self.placement.get(sid)
        key = await self.hosts[host].connect.remote(sid) if host is not None else None
        return None if key is None else HostLink(self.hosts[host], sid, key, ws)


class HostLink:
    """A WebSocket client of a session on its host: messages go there as calls, its events come back long-polled."""

    def __init__(self, host, sid: str, key: int, ws: Socket):
        self.host, self.sid, self.key, self.ws = host, sid, key, ws
        self.pump = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while (events := await self.host.events.remote(self.sid, self.key)) is not None:
            for event in events:
                await self.ws.send(event)
        await session_ended(self.ws, self.sid)

    async def message(self, text: Optional[str], data: Optional[bytes]) -> Optional[list[dict]]:
        return await self.host.message.remote(self.sid, self.key, text, data)

    async def close(self) -> None:
        self.pump.cancel()
        await self.host.disconnect.remote(self.sid, self.key)


# --- the router's FastAPI front end ------------------------------------------------------------------------------
def call_of(connection: HTTPConnection) -> Call:
    body = connection.stream if isinstance(connection, Request) else no_body
    return Call(connection.scope.get("method", "GET"), connection.scope["path"], connection.headers,
                connection.path_params, body, connection.client.host if connection.client else "")


def response_of(answer: Answer) -> Response:
    headers = {**answer.headers, **({"Content-Type": answer.content_type} if answer.content_type else {})}
    return Response(answer.payload(), answer.status, headers)


async def deny(scope, receive, send, answer: Answer) -> None:
    """An answer before the app: to a WebSocket, as the HTTP answer to its upgrade where the server can send one
    (uvicorn can); otherwise by closing it unaccepted, which the server answers with 403."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
    else:
        await response_of(answer)(scope, receive, send)


class Guard:
    """The shared check on every request and WebSocket upgrade before FastAPI routes it, as the aiohttp server's
    middleware does."""

    def __init__(self, app, api: Api):
        self.app, self.api = app, api

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        early, cors = check(self.api.gate, call_of(HTTPConnection(scope)))
        if early is not None:
            return await deny(scope, receive, send, early)
        await self.app(scope, receive, adding(cors, send) if cors else send)


def adding(headers: dict, send):
    """`send` with `headers` added to the answer's (an allowed site's CORS headers)."""
    extra = [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def sending(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return sending


class StarletteSocket:
    """A Starlette WebSocket as the shared handler converses on it."""

    def __init__(self, websocket: WebSocket):
        self.websocket = websocket

    async def receive(self, timeout: Optional[float] = None):
        try:
            message = await asyncio.wait_for(self.websocket.receive(), timeout)
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: closed here (its session ended)
            return None
        if message["type"] == "websocket.disconnect":
            return None
        return message.get("text"), message.get("bytes")

    async def send(self, event: dict) -> None:
        try:
            await self.websocket.send_text(json.dumps(event))
        except (WebSocketDisconnect, RuntimeError, OSError):  # gone, or closed here
            pass

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.websocket.close(code, reason)
        except RuntimeError:  # closed already
            pass


def router_app(api: Api) -> FastAPI:
    """The router's FastAPI app: the route table, every request through the shared check, every route to its
    handler. Nothing else is served (no /docs or /openapi.json, which would bypass the check)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(Guard, api=api)

    def answering(handler: str):
        async def answer(request: Request):
            return response_of(await api.handle(handler, call_of(request)))
        return answer

    async def socket(websocket: WebSocket):
        async def upgrade() -> Socket:
            await websocket.accept()
            return StarletteSocket(websocket)
        refusal = await api.socket(call_of(websocket), upgrade)
        if refusal is not None:
            await deny(websocket.scope, websocket.receive, websocket.send, refusal)

    for route in ROUTES:
        if route.socket:
            app.add_api_websocket_route(route.path, socket, name=route.handler)
        else:
            app.add_api_route(route.path, answering(route.handler), methods=[route.method], name=route.handler)
    return app


class Router:
    """The ingress replica: the shared API over the sessions it places on the hosts it is bound to."""

    def __init__(self, cfg: ServerConfig, *hosts):
        self.api = Api(cfg, PlacedSessions(hosts))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return router_app(self.api)


def deploy(spec: RayServeSpec):
    """Start (or join) Ray and run the application: `spec.hosts` SessionHost deployments behind one Router, every
    host's sessions starting from the spec's engine flags."""
    import ray  # Ray only when Ray Serve is asked for
    from ray import serve  # Ray: only for ray-serve

    cfg = ServerConfig.from_spec(spec)  # refused here if it would be open to others without a token
    if not ray.is_initialized():
        repo = str(Path(__file__).resolve().parents[2])
        ray.init(address=spec.ray_address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": repo, "OPENBLAS_NUM_THREADS": "1"}})
    host_deployment = serve.deployment(SessionHost, max_ongoing_requests=1000)
    hosts_spec = StreamOutSpec.model_validate(spec.model_dump(include=set(StreamOutSpec.model_fields)))
    bound = [host_deployment.options(name=f"host{i}", ray_actor_options={"num_cpus": spec.cpus_per_host,
                                                                          "num_gpus": spec.gpus_per_host})
             .bind(hosts_spec) for i in range(spec.hosts)]
    router = serve.deployment(serve.ingress()(Router), num_replicas=1, max_ongoing_requests=1000,
                              ray_actor_options={"num_cpus": 0})
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    return serve.run(router.bind(cfg, *bound), name="stream-wav2lip", route_prefix="/")
