"""A browser's microphone as speech: the audio track of a WebRTC peer, fed to a session's speech desk.

The talker is one more client of the session's protocol (engine/serve/protocol.py): its track's frames become the PCM of
an utterance, opened while the page says it is talking (push-to-talk held, or always on) and closed when it stops,
so caps, queue events and interrupts work as for a WebSocket client. The page speaks over the peer's data channel
("talk"): {"talking": true|false} in, the desk's events (queued, speech_started, speech_ended, error) out.
One talker per session at a time; the input gate (--silence_db) keeps an always-on room's noise from moving the
mouth, as for every input.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

from .protocol import ProtocolError, SpeechDesk

log = logging.getLogger("engine.serve.talk")


class TalkerBusy(RuntimeError):
    """Another page is talking on this session."""


class Talker:
    """One page's microphone on one session. `send(event)` reaches the page (its data channel), from any thread."""

    def __init__(self, desk: SpeechDesk, send):
        self.desk = desk
        self.client = desk.connect(send)
        self.talking = False
        self._format: Optional[tuple[int, int]] = None  # (sample rate, channels) of the utterance's PCM

    def on_message(self, text: str) -> None:
        """{"talking": true|false} from the page."""
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict) or type(message.get("talking")) is not bool:
            self.client.send({"type": "error", "message": 'talk messages are {"talking": true|false}'})
            return
        self.talking = message["talking"]
        if not self.talking:
            self.desk.end_utterance(self.client)

    def on_frame(self, pcm: bytes, rate: int, channels: int) -> None:
        """One decoded audio frame of the track (interleaved int16). Heard only while talking."""
        if not self.talking:
            return
        limit = self.desk.limits.max_utterance_seconds / 2  # always on: a new utterance now and then, seamlessly
        if self.client.utterance is None or self._format != (rate, channels) or self.client.seconds > limit:
            self.desk.on_text(self.client, json.dumps({"type": "start", "sample_rate": rate, "format": "int16",
                                                       "channels": channels}))
            self._format = (rate, channels)
        try:
            self.desk.on_pcm(self.client, pcm)
        except ProtocolError as exc:  # a full queue: this frame is dropped, the page is told
            self.client.send({"type": "error", "message": str(exc)})

    def close(self) -> None:
        """The peer is gone: what it said so far is spoken, as if it had stopped talking."""
        self.talking = False
        self.desk.disconnect(self.client)


async def listen(track, talker: Talker) -> None:
    """Feed the track's frames to the talker until the track ends."""
    from aiortc.mediastreams import MediaStreamError  # aiortc: only once a browser connects
    while True:
        try:
            frame = await track.recv()
        except (MediaStreamError, asyncio.CancelledError):
            return
        if frame.format.name != "s16":  # aiortc's Opus decoder gives interleaved int16
            log.warning("unexpected audio frame format %s from a talker: ignored", frame.format.name)
            continue
        talker.on_frame(frame.to_ndarray().tobytes(), frame.sample_rate, len(frame.layout.channels))
