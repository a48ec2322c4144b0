"""Connections are bounded before authentication (engine/serve/routes.py): an absolute auth deadline that pings do
not extend, nothing about a session looked up before the token, caps on open sockets, small JSON bodies capped per
route, and a socket that floods control messages told once and closed. All on loopback, on a token server."""
from __future__ import annotations

import asyncio
import time

import pytest

from conftest import require
from engine.serve.routes import ServerConfig
from test_server import make_server
from wsclient import url

aiohttp = require("aiohttp")
AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def guarded(built):
    server, _, _ = make_server(built, ServerConfig(host="0.0.0.0", port=0, token="s3cret", auth_seconds=1.0,
                                                   max_sockets=5, max_sockets_per_address=3))
    yield server
    server.stop()


async def closed_code(ws, seconds: float) -> tuple[int, float]:
    """Read until the server closes the socket: its close code and when, bounded by `seconds`."""
    started = time.monotonic()
    while not ws.closed and time.monotonic() - started < seconds:
        await ws.receive(timeout=seconds)
    return ws.close_code, time.monotonic() - started


def test_the_auth_deadline_is_absolute_even_for_a_socket_that_pings(guarded):
    async def client():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url(guarded, "/ws", "ws"), autoclose=False) as ws:
                started = time.monotonic()

                async def ping():
                    while not ws.closed and time.monotonic() - started < 5:
                        await ws.ping()
                        await asyncio.sleep(0.2)
                pinger = asyncio.ensure_future(ping())
                code, _ = await closed_code(ws, 5)
                pinger.cancel()
                return code, time.monotonic() - started
    code, seconds = asyncio.run(client())
    assert code == 4401 and seconds < 2.5


def test_nothing_about_a_session_is_told_before_the_token(guarded):
    async def client():
        async with aiohttp.ClientSession() as http:
            with_header = await http.get(url(guarded, "/sessions/nosuch/ws"), headers={**AUTH, "Upgrade": "websocket",
                                                                                         "Connection": "Upgrade",
                                                                                         "Sec-WebSocket-Version": "13",
                                                                                         "Sec-WebSocket-Key": "x" * 24})
            codes = [with_header.status]
            async with http.ws_connect(url(guarded, "/sessions/nosuch/ws", "ws")) as ws:  # no header: upgraded
                codes.append((await closed_code(ws, 5))[0])  # and the silence gets 4401, not "no such session"
            async with http.ws_connect(url(guarded, "/sessions/nosuch/ws", "ws")) as ws:
                await ws.send_json({"type": "auth", "token": "s3cret"})
                codes.append((await closed_code(ws, 5))[0])  # only then: the session is not there
            return codes
    assert asyncio.run(client()) == [404, 4401, 4404]


def test_open_sockets_are_capped_per_address_and_a_closed_one_frees_its_place(guarded):
    async def client():
        async with aiohttp.ClientSession() as http:
            sockets = [await http.ws_connect(url(guarded, "/ws", "ws"), headers=AUTH) for _ in range(3)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url(guarded, "/ws", "ws"), headers=AUTH)
            await sockets.pop().close()
            await asyncio.sleep(0.2)
            sockets.append(await http.ws_connect(url(guarded, "/ws", "ws"), headers=AUTH))
            for ws in sockets:
                await ws.close()
            return refused.value.status
    assert asyncio.run(client()) == 503


def test_small_json_bodies_are_capped_before_they_are_parsed(guarded):
    async def client():
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.post(url(guarded, "/sessions"), data=b"[" + b"[]," * 40_000 + b"[]]", headers=AUTH) as r:
                answer = r.status, (await r.json())["error"]
            return answer, time.monotonic() - started
    (status, message), seconds = asyncio.run(client())
    assert status == 413 and message == "request body over 64 KiB" and seconds < 2


def test_a_flood_of_control_messages_gets_one_error_and_the_socket_closes(guarded):
    async def client():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url(guarded, "/ws", "ws"), headers=AUTH) as ws:
                for _ in range(3000):
                    await ws.send_json({"type": "blendshapes", "on": False})
                errors = []
                while not ws.closed:
                    message = await ws.receive(timeout=5)
                    if message.type == aiohttp.WSMsgType.TEXT and '"error"' in message.data:
                        errors.append(message.json()["message"])
                return errors, ws.close_code
    errors, code = asyncio.run(client())
    assert code == 1008 and errors == ["over 200 messages a second: closing"]
