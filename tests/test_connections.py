"""Connections are bounded before authentication (engine/serve/routes.py, connections.py): an absolute auth deadline
that pings do not extend, nothing about a session looked up before the token, caps on open sockets and on
connections of any kind, a deadline for a request's head (slowloris), small JSON bodies capped per route, and a
socket that floods control messages told once and closed. All on loopback, on a token server."""
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
                                                   max_sockets=5, max_sockets_per_address=3, max_connections=8,
                                                   max_connections_per_address=6, head_seconds=1.0))
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


def test_connections_are_capped_per_address_and_in_all_and_a_slow_request_head_is_cut_off(guarded):
    """Slowloris from 127.0.0.2 and 127.0.0.3 (all of 127/8 is loopback): six connections that trickle a request
    head fill the first address's place, two more the server's; meanwhile one more from each is closed at once.
    The head deadline (1 s here) closes the slow ones, and the server answers again; a kept-alive connection
    that sent its request whole is not cut."""
    async def trickle(address: str):
        reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port, local_addr=(address, 0))
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        await writer.drain()
        return reader, writer

    async def closed_after(reader, seconds: float) -> float:
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), seconds) == b""  # closed, nothing answered
        return time.monotonic() - started

    async def health(http) -> int:
        async with http.get(url(guarded, "/health"), headers=AUTH) as r:
            return r.status

    async def client():
        async with aiohttp.ClientSession() as http:
            assert await health(http) == 200  # a kept-alive connection from 127.0.0.1 ...
            slow = [await trickle("127.0.0.2") for _ in range(6)]
            over_address = await closed_after((await trickle("127.0.0.2"))[0], 0.5)
            slow += [await trickle("127.0.0.3") for _ in range(1)]  # 8 open: the server's most
            over_all = await closed_after((await trickle("127.0.0.3"))[0], 0.5)
            cut = await asyncio.gather(*(closed_after(reader, 3) for reader, _ in slow))
            kept = await health(http)  # ... answers on after the deadline: its head came whole
            for _, writer in slow:
                writer.close()
            return over_address, over_all, cut, kept
    over_address, over_all, cut, kept = asyncio.run(client())
    assert over_address < 0.2 and over_all < 0.2
    assert all(0.3 < seconds < 1.6 for seconds in cut), cut
    assert kept == 200
