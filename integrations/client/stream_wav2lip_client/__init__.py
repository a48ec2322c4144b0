"""A client of one session on a stream-wav2lip server (`stream_out.py serve`): speech in, and the presenter's frames
with the audio that goes with each of them back, at the session's rate, also while the presenter is silent.

The voice-agent avatars in integrations/ are built on it; it needs only aiohttp and numpy, so it installs beside
any framework's pins. The wire format is the server's (docs/network-api.md, "Media for avatar clients").
"""
from __future__ import annotations

import asyncio
import json
import struct
from collections import deque
from dataclasses import dataclass, replace
from typing import AsyncIterator, Callable, Optional

import aiohttp

__all__ = ["AvatarError", "AvatarSession", "MediaFrame", "session_body"]

HEADER_LENGTH = struct.Struct("<I")


class AvatarError(RuntimeError):
    """The server could not be reached, refused the session, or went away: one line that says which."""


@dataclass(frozen=True)
class MediaFrame:
    """One presented frame: its number and pts (seconds, on the session's clock), its audio (int16 mono PCM) and
    its pixels (RGB, row by row; None for a frame made before the subscription)."""
    number: int
    pts: float
    audio: bytes
    sample_rate: int
    image: Optional[bytes]
    width: int
    height: int


def session_body(presenter: Optional[str] = None, checkpoint: Optional[str] = None, enhance: Optional[bool] = None,
                 latency_ms: Optional[int] = None, session: Optional[dict] = None) -> dict:
    """The POST /sessions body from an avatar's named settings, over `session` (any other session flag)."""
    named = {"data_dir": presenter, "checkpoint_path": checkpoint, "enhance": enhance, "latency_ms": latency_ms}
    return {**(session or {}), **{k: v for k, v in named.items() if v is not None}}


def parse_media(data: bytes) -> MediaFrame:
    """A binary media message: uint32 little-endian n, n bytes of JSON header, the audio, the pixels."""
    (length,) = HEADER_LENGTH.unpack_from(data)
    header = json.loads(data[4:4 + length])
    audio_end = 4 + length + 2 * header["samples"]
    return MediaFrame(header["frame"], header["pts"], data[4 + length:audio_end], header["sample_rate"],
                      data[audio_end:] or None, header["width"], header["height"])


class AvatarSession:
    """A session of its own on the server, opened by `open()` and ended by `close()`.

    `session` is the body of POST /sessions: the presenter (`data_dir`, a cache folder on the server), and any of
    `checkpoint_path`, `enhance`, `latency_ms`, ... (docs/network-api.md). Speech goes in as utterances
    (`start_speech`, `send_audio`, `end_speech`); `interrupt()` drops this client's speech at once; `frames()`
    yields every frame the session presents, and hands `on_event` each event of this client's utterances (queued,
    speech_started, speech_ended, speech_interrupted, interrupted, error) between the frames it came between.
    Errors are AvatarError, never a hang: each request and each wait for a frame is bounded by `timeout` seconds."""

    def __init__(self, url: str = "http://127.0.0.1:8765", token: Optional[str] = None,
                 session: Optional[dict] = None, timeout: float = 10.0,
                 on_event: Optional[Callable[[dict], None]] = None):
        self.url, self.body, self.timeout = url.rstrip("/"), dict(session or {}), timeout
        self.on_event = on_event
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.id: Optional[str] = None
        self.fps = self.sample_rate = self.width = self.height = 0
        self.errors: deque[str] = deque(maxlen=100)  # the server's latest error events (a full queue, say)
        self._http: Optional[aiohttp.ClientSession] = None
        self._ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self._muting = False  # interrupted, not yet answered: frames still in flight carry speech that was dropped
        self._closing = False
        self._speaking = False

    async def __aenter__(self) -> "AvatarSession":
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the session, connect to it and ask for its media."""
        self._http = aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            answer = await self._request("POST", "/sessions", json=self.body)
            self.id = answer["id"]
            self._ws = await self._http.ws_connect(f"{self.url}/sessions/{self.id}/ws", heartbeat=self.timeout,
                                                   max_msg_size=0)
            await self._ws.send_json({"type": "media", "on": True})
            reply = await self._next_event("subscription")
            self.fps, self.sample_rate = reply["fps"], reply["sample_rate"]
            self.width, self.height = reply["width"], reply["height"]
        except BaseException:
            await self.close()
            raise

    async def _request(self, method: str, path: str, **kwargs) -> dict:
        try:
            async with self._http.request(method, self.url + path, **kwargs) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = {}
                if response.status == 401:
                    raise AvatarError(f"the stream-wav2lip server at {self.url} refused the token: "
                                      f"{answer.get('error', 'unauthorized')}")
                if response.status >= 400:
                    field = f" ({answer['field']})" if "field" in answer else ""
                    raise AvatarError(f"the stream-wav2lip server refused {method} {path}{field}: "
                                      f"{answer.get('error', response.reason)}")
                return answer
        except aiohttp.ClientConnectionError as exc:
            raise AvatarError(f"cannot reach the stream-wav2lip server at {self.url}: {exc}") from None
        except asyncio.TimeoutError:
            raise AvatarError(f"the stream-wav2lip server at {self.url} did not answer {method} {path} within "
                              f"{self.timeout:g} s") from None

    async def _next_event(self, kind: str) -> dict:
        """Skip frames until the event `kind` (opening: nothing else is expected yet)."""
        while True:
            item = await self._receive()
            if isinstance(item, dict) and item["type"] == kind:
                return item

    async def _receive(self):
        """The next event (dict) or media frame; AvatarError when the server went away or fell silent."""
        try:
            message = await self._ws.receive(timeout=self.timeout)
        except asyncio.TimeoutError:
            raise AvatarError(f"no frame from the stream-wav2lip server for {self.timeout:g} s") from None
        if message.type == aiohttp.WSMsgType.BINARY:
            return parse_media(message.data)
        if message.type == aiohttp.WSMsgType.TEXT:
            event = json.loads(message.data)
            if event["type"] == "error":
                self.errors.append(event["message"])
            elif event["type"] == "subscription" and "error" in event:  # this client read too slowly
                raise AvatarError(f"the stream-wav2lip server: {event['error']}")
            elif event["type"] == "session_ended":
                raise AvatarError(f"the stream-wav2lip server ended session {self.id}")
            return event
        raise AvatarError(f"the stream-wav2lip server closed the connection ({message.type.name.lower()})")

    async def frames(self) -> AsyncIterator[MediaFrame]:
        """Every frame the session presents, in order, until close(). Between an interrupt() and the server's
        answer, the frames' audio is silenced: it is speech that was already on its way."""
        while not self._closing:
            try:
                item = await self._receive()
            except AvatarError:
                if self._closing:
                    return
                raise
            if isinstance(item, MediaFrame):
                yield item if not self._muting else replace(item, audio=bytes(len(item.audio)))
                continue
            if item["type"] == "interrupted":
                self._muting = False
            if self.on_event is not None:
                self.on_event(item)

    async def start_speech(self, sample_rate: int, channels: int = 1) -> None:
        """Open an utterance of int16 PCM at this rate (8000 to 48000 Hz; the server resamples)."""
        await self._send_json({"type": "start", "sample_rate": sample_rate, "format": "int16", "channels": channels})
        self._speaking = True

    async def send_audio(self, pcm: bytes) -> None:
        await self._send(pcm)

    async def end_speech(self) -> None:
        if self._speaking:
            self._speaking = False
            await self._send_json({"type": "end"})

    @property
    def speaking(self) -> bool:
        """An utterance is open."""
        return self._speaking

    async def interrupt(self) -> None:
        """Drop this client's speech, queued or playing; the frames after the server's answer are silent."""
        self._muting, self._speaking = True, False
        await self._send_json({"type": "interrupt"})

    async def _send_json(self, message: dict) -> None:
        await self._send(json.dumps(message))

    async def _send(self, message) -> None:
        if self._ws is None:
            raise AvatarError("the stream-wav2lip session is not open")
        try:
            await (self._ws.send_bytes(message) if isinstance(message, bytes) else self._ws.send_str(message))
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise AvatarError(f"the stream-wav2lip server closed the connection: {exc}") from None

    async def close(self) -> None:
        """End the session on the server (if it is still there) and disconnect. Safe to call twice."""
        self._closing, self._speaking = True, False
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self.id is not None and self._http is not None:
            try:
                await self._request("DELETE", f"/sessions/{self.id}")
            except AvatarError:
                pass  # the server is gone: so is the session
            self.id = None
        if self._http is not None:
            await self._http.close()
            self._http = None
