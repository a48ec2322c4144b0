"""A WebSocket/HTTP client of the server, as the tests use it: URLs, PCM streamed in 20 ms chunks, events."""
from __future__ import annotations

import asyncio
import json
import time

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
