"""A session's frames and their audio handed back over its WebSocket, for clients that play the presenter
themselves: a voice agent's avatar (integrations/pipecat, integrations/livekit) puts them on its own transport.

A client sends {"type": "media", "on": true}; from then on it gets one binary message per presented frame:

    uint32 little-endian n | n bytes of JSON header | the frame's audio | the frame's pixels

The header: {"frame", "pts" (seconds), "sample_rate", "samples", "width", "height", "format": "rgb24"}. The audio
is int16 mono PCM, little-endian, exactly what every other output plays with that frame; the pixels are RGB, row
by row, or absent (width and height 0) for a frame made before the client subscribed.
"""
from __future__ import annotations

import asyncio
import json
import struct
from typing import Optional

import cv2
import numpy as np

from core.timebase import FPS, SAMPLE_RATE, seconds, slot
from engine.outputs.sinks import to_int16

HEADER_LENGTH = struct.Struct("<I")
BEHIND = "media stopped: this client fell {seconds:g} s of frames behind the presenter (read faster, then ask again)"


def media_message(number: int, pts: int, frame: Optional[np.ndarray], audio: np.ndarray) -> bytes:
    """One presented frame (BGR, or None) and its audio as the binary message above (its pts in seconds)."""
    height, width = frame.shape[:2] if frame is not None else (0, 0)
    pcm = to_int16(audio)
    header = json.dumps({"frame": number, "pts": round(seconds(pts), 6), "sample_rate": SAMPLE_RATE, "samples": len(pcm) // 2,
                         "width": width, "height": height, "format": "rgb24"}).encode()
    pixels = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).tobytes() if frame is not None else b""
    return b"".join((HEADER_LENGTH.pack(len(header)), header, pcm, pixels))


class MediaFeed:
    """The sink that feeds subscribed clients. Each client's `send_media(bytes) -> bool` posts a message to its
    socket on the server's loop; False means the client has fallen `behind_seconds` of frames behind: it is
    unsubscribed and told ({"type": "subscription", "media": false, "error": ...}), so a slow reader never holds
    more than that in the server's memory."""
    live = True

    def __init__(self, loop: asyncio.AbstractEventLoop, fps: int = FPS, max_clients: int = 4,
                 behind_seconds: float = 2.0):
        self.loop, self.fps, self.max_clients = loop, fps, max_clients
        self.backlog = int(behind_seconds * fps)  # the most messages one client may have waiting
        self.clients: set = set()
        self.size: Optional[tuple[int, int]] = None

    @property
    def wants_frames(self) -> bool:
        return bool(self.clients)

    def open(self, width: int, height: int) -> None:
        self.size = (width, height)

    def close(self) -> None:
        self.clients.clear()

    def subscribe(self, client) -> None:
        """On the server's loop. ValueError past max_clients."""
        if client not in self.clients and len(self.clients) >= self.max_clients:
            raise ValueError(f"{len(self.clients)} clients take this session's media, the most allowed (--max_peers)")
        self.clients.add(client)

    def unsubscribe(self, client) -> None:
        self.clients.discard(client)

    def write(self, frame: Optional[np.ndarray], audio: np.ndarray, pts: int) -> None:
        if self.clients:
            self.loop.call_soon_threadsafe(self._deliver, media_message(slot(pts, self.fps), pts, frame, audio))

    def _deliver(self, message: bytes) -> None:
        for client in list(self.clients):
            if not client.send_media(message, self.backlog):
                self.clients.discard(client)
                client.send({"type": "subscription", "media": False,
                             "error": BEHIND.format(seconds=self.backlog / self.fps)})
