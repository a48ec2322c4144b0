"""Past one machine: sessions on Ray Serve replicas, placed by a router with the same API as `stream_out.py serve`.

  SessionHost   a replica that owns a GPU (or CPU cores) and hosts sessions: engine/serve/sessions.py with its shared
                model workers and its measured capacity. Frames leave from here: each session's outputs (MPEG-TS
                URL, recording) and its WebRTC peers (the browser's offer comes through the router; the media flows
                between the browser and this replica).
  Router        the HTTP/WebSocket ingress. POST /sessions goes to the host with the most room; later requests
                for that session (WebSocket speech, uploads, offers, status, DELETE) go to its host. One router
                replica holds the placement.

Start it with `stream_out.py ray-serve` (see --help): on one machine it starts Ray itself; on a cluster
(`ray start --head` here, `ray start --address HEAD:6379` on each GPU machine) pass --ray_address auto.
"""
import asyncio
import concurrent.futures
import itertools
import logging
import secrets
import threading
from collections import deque
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect  # FastAPI needs the handlers' annotations as
from fastapi.responses import JSONResponse, Response                   # objects: no postponed annotations here

from audio.decode import AudioError
from configs.spec import RayServeSpec, StreamOutSpec

from .metrics import exposition_of
from .protocol import ProtocolError, Unauthorized, authenticate, speak_upload
from .server import Gate, ServerConfig, check_bind, parse_listen
from .sessions import Sessions, SessionsConfig, UnknownSession, create_answer
from .talk import TalkerBusy
from .webrtc import PeerLimit

log = logging.getLogger("engine.serve.ray_serve")
EVENT_POLL = 0.02  # s between looks at a client's events while the router waits for them
AUTH_SECONDS = 10.0  # a browser's socket must send its token within this
MAX_UPLOAD_BYTES = 64 << 20


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
        desk = self.sessions.get(sid).desk
        try:
            if text is not None:
                return desk.on_text(entry[0], text)
            desk.on_pcm(entry[0], data or b"")
        except (ProtocolError, AudioError) as exc:
            return [{"type": "error", "message": str(exc)}]
        except Exception:  # a bug must cost this message, never the socket or the host
            log.exception("message to session %s failed", sid)
            return [{"type": "error", "message": "internal error on this message"}]
        return []

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
        session = self.sessions.get(sid)
        future = asyncio.run_coroutine_threadsafe(session.webrtc.answer(sdp, kind, session.desk), self.loop)
        try:
            sdp, kind = future.result(timeout=30)
        except PeerLimit as exc:
            return {"http": 503, "error": str(exc)}
        except TalkerBusy as exc:
            return {"http": 409, "error": str(exc)}
        except concurrent.futures.TimeoutError:
            future.cancel()  # the peer is not left to take a viewer's or the talker's place later
            return {"http": 504, "error": "the offer took over 30 s to answer"}
        except Exception as exc:
            return {"http": 400, "error": f"bad offer: {str(exc)[:200]}"}
        return {"http": 200, "sdp": sdp, "type": kind}


def router_deployment(token: Optional[str], listen: tuple[str, int]):
    """The Router deployment: a FastAPI ingress over the handles of the SessionHost deployments it is bound to."""
    from ray import serve


    app = FastAPI()
    gate = Gate(ServerConfig(host=listen[0], port=listen[1], token=token))

    def refused(request) -> Optional[JSONResponse]:
        """The single-machine server's checks: Host, Origin, token."""
        if not gate.host_allowed(request.headers.get("host")):
            return JSONResponse({"error": "Host is not a name of this server"}, status_code=403)
        if not gate.origin_allowed(request.headers.get("origin"), request.headers.get("host", "")):
            return JSONResponse({"error": "requests from pages on other sites are refused"}, status_code=403)
        if not gate.token_ok(bearer(request)):
            return JSONResponse({"error": "missing or wrong token: send 'Authorization: Bearer TOKEN'"},
                                status_code=401)
        return None

    def bearer(request) -> Optional[str]:
        header = request.headers.get("authorization", "")
        return header[7:] if header.startswith("Bearer ") else None

    def answer(result: dict) -> JSONResponse:
        status = result.pop("http", 200)
        return JSONResponse(result, status_code=status)

    def unknown(sid: str) -> JSONResponse:
        return JSONResponse({"error": f"no session {sid[:40]!r}"}, status_code=404)

    @serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Router:
        def __init__(self, *hosts):
            self.hosts = list(hosts)
            self.placement: dict[str, int] = {}  # session id -> index of its host

        def host_of(self, sid: str):
            index = self.placement.get(sid)
            return None if index is None else self.hosts[index]

        @app.post("/sessions")
        async def create(self, request: Request):
            if (bad := refused(request)) is not None:
                return bad
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"error": "expected a JSON object of engine flags"}, status_code=400)
            rooms = await asyncio.gather(*(h.room.remote() for h in self.hosts), return_exceptions=True)
            rooms = [r if isinstance(r, dict) else {"left": 0, "reason": f"not answering ({r!r:.100})"}
                     for r in rooms]
            best = max(range(len(self.hosts)), key=lambda i: rooms[i]["left"])
            if rooms[best]["left"] < 1:
                reasons = "; ".join(f"host {i}: {r['reason']}" for i, r in enumerate(rooms))
                return JSONResponse({"error": f"no capacity for another session: {reasons}"}, status_code=503)
            sid = secrets.token_hex(6)
            result = await self.hosts[best].create.remote(body, sid)
            if result["http"] == 201:
                self.placement[sid] = best
                result["host"] = best
            return answer(result)

        async def forward(self, request: Request, sid: str, method: str, *args) -> JSONResponse:
            """A request for one session, checked here, answered by its host."""
            if (bad := refused(request)) is not None:
                return bad
            if (target := self.host_of(sid)) is None:
                return unknown(sid)
            if method == "end":
                self.placement.pop(sid, None)
            return answer(await getattr(target, method).remote(sid, *args))

        @app.delete("/sessions/{sid}")
        async def end(self, sid: str, request: Request):
            return await self.forward(request, sid, "end")

        @app.get("/sessions/{sid}/status")
        async def status(self, sid: str, request: Request):
            return await self.forward(request, sid, "status")

        @app.post("/sessions/{sid}/speak")
        async def speak(self, sid: str, request: Request):
            body = await request.body()
            if len(body) > MAX_UPLOAD_BYTES:
                return JSONResponse({"error": f"upload over {MAX_UPLOAD_BYTES >> 20} MiB"}, status_code=413)
            return await self.forward(request, sid, "speak", body)

        @app.post("/sessions/{sid}/offer")
        async def offer(self, sid: str, request: Request):
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or type(body.get("sdp")) is not str or type(body.get("type")) is not str:
                return JSONResponse({"error": "expected JSON {sdp, type} with string values"}, status_code=400)
            return await self.forward(request, sid, "offer", body["sdp"], body["type"])

        @app.get("/status")
        async def everything(self, request: Request):
            if (bad := refused(request)) is not None:
                return bad
            statuses = await asyncio.gather(*(h.status.remote() for h in self.hosts), return_exceptions=True)
            statuses = [s if isinstance(s, dict) else {"error": f"not answering ({s!r:.100})"} for s in statuses]
            return JSONResponse({"hosts": statuses, "placement": self.placement})

        @app.get("/metrics")
        async def metrics(self, request: Request):
            if (bad := refused(request)) is not None:
                return bad
            statuses = await asyncio.gather(*(h.status.remote() for h in self.hosts), return_exceptions=True)
            body, content_type = exposition_of([(str(i), s) for i, s in enumerate(statuses) if isinstance(s, dict)])
            return Response(body, media_type=content_type)

        @app.websocket("/sessions/{sid}/ws")
        async def socket(self, websocket: WebSocket, sid: str):
            """The speech protocol through the router: checked and authenticated here, then messages to the
            session's host and its events back."""
            host = websocket.headers.get("host", "")
            if not gate.host_allowed(host) or not gate.origin_allowed(websocket.headers.get("origin"), host):
                await websocket.close(code=4403)
                return
            await websocket.accept()
            try:
                if not gate.token_ok(bearer(websocket)):  # no token in a header: it must be the first message
                    try:
                        first = await asyncio.wait_for(websocket.receive(), AUTH_SECONDS)
                    except asyncio.TimeoutError:
                        raise Unauthorized(f"no token within {AUTH_SECONDS:.0f} s") from None
                    authenticate(first.get("text"), gate.token_ok)
                    await websocket.send_json({"type": "authenticated"})
            except Unauthorized as exc:
                await websocket.send_json({"type": "error", "message": str(exc)})
                await websocket.close(code=4401)
                return
            target = self.host_of(sid)
            key = await target.connect.remote(sid) if target is not None else None
            if key is None:
                await websocket.send_json({"type": "error", "message": f"no session {sid[:40]!r}"})
                await websocket.close(code=4404)
                return

            async def ended():
                await websocket.send_json({"type": "session_ended", "session": sid})
                await websocket.close(code=4404)

            async def pump():  # the session's events to this client, as they come
                while (events := await target.events.remote(sid, key)) is not None:
                    for event in events:
                        await websocket.send_json(event)
                await ended()
            pumping = asyncio.ensure_future(pump())
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    replies = await target.message.remote(sid, key, message.get("text"), message.get("bytes"))
                    if replies is None:
                        break
                    for reply in replies:
                        await websocket.send_json(reply)
            except (WebSocketDisconnect, RuntimeError):  # RuntimeError: the pump closed it (session ended)
                pass
            finally:
                pumping.cancel()
                await target.disconnect.remote(sid, key)

    return Router


def deploy(spec: RayServeSpec):
    """Start (or join) Ray and run the application: `spec.hosts` SessionHost deployments behind one Router, every
    host's sessions starting from the spec's engine flags."""
    import ray  # Ray only when Ray Serve is asked for
    from ray import serve

    host, port = parse_listen(spec.listen)
    check_bind(ServerConfig(host, port, spec.token))
    if not ray.is_initialized():
        repo = str(Path(__file__).resolve().parents[2])
        ray.init(address=spec.ray_address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": repo, "OPENBLAS_NUM_THREADS": "1"}})
    host_deployment = serve.deployment(SessionHost, max_ongoing_requests=1000)
    hosts_spec = StreamOutSpec.model_validate(spec.model_dump(include=set(StreamOutSpec.model_fields)))
    bound = [host_deployment.options(name=f"host{i}", ray_actor_options={"num_cpus": spec.cpus_per_host,
                                                                          "num_gpus": spec.gpus_per_host})
             .bind(hosts_spec) for i in range(spec.hosts)]
    serve.start(http_options={"host": host, "port": port})
    return serve.run(router_deployment(spec.token, (host, port)).bind(*bound), name="stream-wav2lip",
                     route_prefix="/")
