"""engine/serve/routes.py: one route table, one check and one set of handlers for both front ends. The aiohttp server
and the Ray Serve router's FastAPI app serve the table's routes and nothing else, and hostile requests get the same
answers from each of them as from the shared code called directly. The router's app runs here on uvicorn over
loopback, without a Ray cluster (tests/test_sessions.py runs it on Ray)."""
from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import pytest

from conftest import require
from core.net import free_port
from engine.serve.routes import ROUTES, Api, Call, ServerConfig, check

aiohttp = require("aiohttp")
require("fastapi")
uvicorn = require("uvicorn")

from engine.serve.ray_serve import router_app  # noqa: E402  (needs fastapi)
from engine.serve.server import Server, web_app  # noqa: E402

TOKEN = "s3cret"
CFG = ServerConfig(port=0, token=TOKEN, allow_origins=("https://my.app",), max_upload_bytes=1 << 20)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = {("GET", "/"), ("GET", "/health"), ("GET", "/metrics"), ("GET", "/status"), ("POST", "/sessions"),
       ("DELETE", "/sessions/{id}"), ("GET", "/sessions/{id}/status"), ("GET", "/sessions/{id}/ws"),
       ("POST", "/sessions/{id}/speak"), ("POST", "/sessions/{id}/offer"), ("GET", "/ws"), ("POST", "/speak"),
       ("POST", "/offer")}  # as docs/network-api.md lists them


def test_both_front_ends_serve_the_route_table_and_nothing_else():
    api = Api(CFG, None)  # building the apps touches no backend
    table = [(route.method, route.path) for route in ROUTES]
    served_by_aiohttp = [(route.method, route.resource.canonical) for route in web_app(api).router.routes()]
    served_by_fastapi = [(method, route.path) for route in router_app(api).routes
                         for method in getattr(route, "methods", None) or ["GET"]]  # a WebSocket route: GET
    assert sorted(served_by_aiohttp) == sorted(served_by_fastapi) == sorted(table)
    assert set(table) == API and len(table) == len(API)
    sockets = {route.path for route in router_app(api).routes if not hasattr(route, "methods")}
    assert sockets == {route.path for route in ROUTES if route.socket} == {"/ws", "/sessions/{id}/ws"}
    assert all(callable(getattr(api, route.handler, None)) for route in ROUTES)


@dataclass(frozen=True)
class Hostile:
    name: str
    method: str
    path: str
    status: int  # what every front end answers
    headers: dict = field(default_factory=dict)
    body: bytes = b""


CASES = [
    Hostile("rebound Host", "GET", "/status", 403, {**AUTH, "Host": "evil.example"}),
    Hostile("another origin", "GET", "/status", 403, {**AUTH, "Origin": "http://evil.example"}),
    Hostile("null origin", "POST", "/speak", 403, {**AUTH, "Origin": "null"}, b"RIFF"),
    Hostile("no token", "GET", "/status", 401),
    Hostile("wrong token", "GET", "/metrics", 401, {"Authorization": "Bearer wrong"}),
    Hostile("token in the URL", "GET", "/status?token=s3cret", 401),
    Hostile("no token, from an allowed site", "DELETE", "/sessions/x", 401, {"Origin": "https://my.app"}),
    Hostile("preflight from an allowed site", "OPTIONS", "/offer", 204,
            {"Origin": "https://my.app", "Access-Control-Request-Method": "POST"}),
    Hostile("preflight from another site", "OPTIONS", "/offer", 403,
            {"Origin": "https://other.app", "Access-Control-Request-Method": "POST"}),
    Hostile("oversized body", "POST", "/sessions", 413, AUTH, b"{" * ((1 << 20) + 1)),
    Hostile("bad JSON body", "POST", "/sessions", 400, AUTH, b"not json"),
    Hostile("JSON nested too deeply", "POST", "/sessions", 400, AUTH, b"[" * 30_000 + b"]" * 30_000),
    Hostile("upload to no session", "POST", "/sessions/nosuch/speak", 404, AUTH, b"\x00" * 1000),
    Hostile("offer to no session", "POST", "/offer", 404, AUTH, b"{}"),
    Hostile("end no session", "DELETE", "/sessions/nosuch", 404, AUTH),
    Hostile("socket from another origin", "WS", "/ws", 403, {"Origin": "http://evil.example"}),
    Hostile("socket with a wrong token", "WS", "/ws", 401, {"Authorization": "Bearer wrong"}),
    Hostile("socket to no session", "WS", "/sessions/nosuch/ws", 404, AUTH),
    Hostile("the page, no token needed", "GET", "/", 200),
    Hostile("health, from an allowed site", "GET", "/health", 200, {**AUTH, "Origin": "https://my.app"}),
]


@pytest.fixture(scope="module")
def aiohttp_server():
    server = Server(None, CFG).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fastapi_port(aiohttp_server):
    """The router's FastAPI app, on uvicorn, over the aiohttp server's (session-less) backend."""
    config = uvicorn.Config(router_app(Api(CFG, aiohttp_server.backend)), host="127.0.0.1", port=free_port(),
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield config.port
    server.should_exit = True
    thread.join(timeout=10)


@dataclass(frozen=True)
class Seen:
    status: int
    body: object = None          # the JSON answer (None: not JSON, or a refused WebSocket's)
    content_type: str = ""
    allow_origin: Optional[str] = None


def route_of(method: str, path: str):
    """The table's route for a request, and its path parameters."""
    for route in ROUTES:
        pattern = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", route.path) + "$"
        if (match := re.match(pattern, path)) and route.method == ("GET" if method == "WS" else method):
            return route, match.groupdict()
    raise AssertionError(f"no route for {method} {path}")


async def chunks(data: bytes):
    for start in range(0, len(data), 1 << 16):
        yield data[start:start + (1 << 16)]


async def no_upgrade():
    raise AssertionError("upgraded a socket that the shared code should have refused")


def seen(answer, headers: dict, socket: bool) -> Seen:
    if socket:  # a refused upgrade: the client sees its status
        return Seen(answer.status)
    content_type = answer.content_type.split(";")[0]
    return Seen(answer.status, answer.body if content_type == "application/json" else None, content_type,
                headers.get("Access-Control-Allow-Origin"))


async def shared(api: Api, case: Hostile, port: int) -> Seen:
    """The case through the shared check and handler, called as both front ends call them."""
    from multidict import CIMultiDict
    headers, path = CIMultiDict({"Host": f"127.0.0.1:{port}", **case.headers}), case.path.split("?")[0]
    socket = case.method == "WS"
    early, cors = check(api.gate, Call("GET" if socket else case.method, path, headers))  # before any routing
    if early is not None:
        return seen(early, early.headers, socket)
    route, params = route_of(case.method, path)
    call = Call(route.method, path, headers, params, lambda: chunks(case.body))
    answer = await api.socket(call, no_upgrade) if socket else await api.handle(route.handler, call)
    return seen(answer, {**answer.headers, **cors}, socket)


async def over_loopback(case: Hostile, port: int) -> Seen:
    """The case sent to a front end on 127.0.0.1 (one request, at most 20 s)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        address = f"127.0.0.1:{port}{case.path}"
        if case.method == "WS":
            try:
                async with http.ws_connect(f"ws://{address}", headers=case.headers):
                    return Seen(101)
            except aiohttp.WSServerHandshakeError as exc:
                return Seen(exc.status)
        async with http.request(case.method, f"http://{address}", headers=case.headers, data=case.body) as response:
            content_type = response.headers.get("Content-Type", "").split(";")[0]
            body = await response.json() if content_type == "application/json" else None
            return Seen(response.status, body, content_type, response.headers.get("Access-Control-Allow-Origin"))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_requests_get_the_same_answers_from_the_shared_code_and_both_front_ends(case, aiohttp_server,
                                                                                        fastapi_port):
    port = aiohttp_server.port

    async def answers():
        return {"shared": await shared(Api(CFG, aiohttp_server.backend), case, port),
                "aiohttp": await over_loopback(case, port),
                "fastapi": await over_loopback(case, fastapi_port)}
    seen_by = asyncio.run(answers())
    assert seen_by["shared"].status == case.status, seen_by
    assert seen_by["aiohttp"] == seen_by["shared"] and seen_by["fastapi"] == seen_by["shared"], seen_by
