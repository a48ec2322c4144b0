"""A WebSocket/HTTP client of the server, as the tests use it: URLs, PCM streamed in 20 ms chunks, events, a
server process's /health."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from typing import Optional

import numpy as np


def url(server, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.port}{path}"


async def stream(ws, pcm: np.ndarray, rate: int, realtime: bool, lead: float = 0.3) -> None:
    """20 ms chunks; in real time after a `lead` sent at once (as a TTS client keeps a little ahead)."""
    step = rate // 50
    start = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), step)):
        await ws.send_bytes(pcm[i:i + step].tobytes())
        if realtime:
            await asyncio.sleep(max(0.0, start + n * 0.02 - lead - time.monotonic()))


async def events_until(ws, kind: str, timeout: float = 30.0) -> list[dict]:
    from aiohttp import WSMsgType
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await ws.receive(timeout=deadline - time.monotonic())
        if message.type != WSMsgType.TEXT:
            raise AssertionError(f"socket closed while waiting for {kind}: {message}")
        seen.append(json.loads(message.data))
        if seen[-1]["type"] == kind:
            return seen
    raise AssertionError(f"no {kind} within {timeout} s: {seen}")


def wait_healthy(url: str, process: subprocess.Popen, token: Optional[str] = None, seconds: float = 60.0) -> None:
    """Until the server process answers `url` (its /health) with 200; fails if it exits or takes `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not healthy within {seconds:.0f} s")
