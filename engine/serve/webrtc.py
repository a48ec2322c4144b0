"""WebRTC preview sink: the engine's frames and their audio to browsers through aiortc.

The engine's clock decides when each frame goes out (like every other sink); this sink hands it to each peer's
tracks on the server's asyncio loop with the frame's own timestamp, so browsers see the same frames and hear the
same audio as OBS or the virtual camera.
"""
from __future__ import annotations

import asyncio
import json
import logging
from fractions import Fraction
from typing import Optional

import numpy as np

from core.timebase import FPS, SAMPLE_RATE, TIME_BASE
from engine.outputs.sinks import to_int16

from .talk import Talker, TalkerBusy, listen

log = logging.getLogger("engine.serve.webrtc")
VIDEO_CLOCK = 90_000


def _track_class():
    from aiortc import MediaStreamTrack  # aiortc: only once a browser connects

    class QueuedTrack(MediaStreamTrack):
        """A track whose frames come from the engine; a slow peer drops its oldest frames, never the engine's."""

        def __init__(self, kind: str, fps: int):
            super().__init__()
            self.kind = kind
            self.queue: asyncio.Queue = asyncio.Queue(maxsize=2 * fps)

        def offer(self, frame) -> None:
            if self.queue.full():
                self.queue.get_nowait()
            self.queue.put_nowait(frame)

        async def recv(self):
            return await self.queue.get()

    return QueuedTrack


class PeerLimit(RuntimeError):
    """As many viewers as allowed are connected."""


def offers_microphone(sdp: str) -> bool:
    """Does this offer send audio (a page that talks), not only receive it? An audio section without a direction
    attribute is sendrecv."""
    sections = sdp.replace("\r\n", "\n").split("\nm=")
    for section in sections[1:]:
        if section.startswith("audio"):
            return not any(f"a={d}" in section.split("\n") for d in ("recvonly", "inactive"))
    return False


class WebRtcSink:
    live = True

    def __init__(self, loop: asyncio.AbstractEventLoop, max_peers: int = 4, connect_seconds: float = 15.0,
                 fps: int = FPS):
        self.loop = loop
        self.fps = fps  # the frames' rate (25, or 50 with in-between frames): the tracks buffer 2 s of them
        self.max_peers = max_peers
        self.connect_seconds = connect_seconds  # a peer not connected by then is dropped: it would hold a slot
        self.peers: dict = {}  # RTCPeerConnection -> (video track, audio track)
        self.talker: Optional[tuple] = None  # (peer, Talker): the one page whose microphone is heard
        self.size: Optional[tuple[int, int]] = None
        self.last_frame: Optional[np.ndarray] = None

    def open(self, width: int, height: int) -> None:
        self.size = (width, height)

    @property
    def wants_frames(self) -> bool:
        """Pixels only while someone watches: an idle server decodes nothing."""
        return bool(self.peers)

    def write(self, frame: Optional[np.ndarray], audio: np.ndarray, pts: int) -> None:
        if frame is not None:
            self.last_frame = frame
        if not self.peers:
            return
        import av  # PyAV: only once a browser watches
        video = None
        if frame is not None:  # None: made before the first viewer came; the next frame follows within 0.5 s
            # converted here, once: every peer's encoder gets this same frame, and an encoder that converts it
            # itself does so on its own thread through the frame's one shared swscale context (two viewers
            # converting at once crashed the process in libswscale)
            video = av.VideoFrame.from_ndarray(frame, format="bgr24").reformat(format="yuv420p")
            video.pts, video.time_base = round(pts * TIME_BASE * VIDEO_CLOCK), Fraction(1, VIDEO_CLOCK)
        sound = av.AudioFrame.from_ndarray(np.frombuffer(to_int16(audio), np.int16)[None], format="s16", layout="mono")
        sound.sample_rate = SAMPLE_RATE
        sound.pts, sound.time_base = pts, TIME_BASE
        self.loop.call_soon_threadsafe(self._deliver, video, sound)

    def _deliver(self, video, sound) -> None:
        for video_track, audio_track in self.peers.values():
            if video is not None:
                video_track.offer(video)
            audio_track.offer(sound)

    async def answer(self, sdp: str, kind: str, desk=None) -> tuple[str, str]:
        """Take a browser's offer; return our answer (SDP, type). The peer gets the live video and audio.

        An offer that sends audio is a page that talks: its microphone becomes speech on `desk` (engine/serve/talk.py).
        Raises PeerLimit when max_peers viewers are connected, TalkerBusy when another page is talking; an offer
        that fails closes its peer at once, and a peer that has not connected within connect_seconds is closed
        then."""
        # aiortc: only once a browser connects
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        if len(self.peers) >= self.max_peers:
            raise PeerLimit(f"{len(self.peers)} viewers are connected, the most allowed (--max_peers)")
        talks = desk is not None and offers_microphone(sdp)
        if talks and self.talker is not None:
            raise TalkerBusy("another page is talking to this presenter (one talker at a time): watch, or talk "
                             "once it has stopped")
        track = _track_class()
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # same machine or LAN: never ask a STUN server
        tracks = (track("video", self.fps), track("audio", self.fps))
        self.peers[peer] = tracks
        if talks:
            self._hear(peer, desk)

        @peer.on("connectionstatechange")
        async def on_state() -> None:
            if peer.connectionState in ("failed", "closed"):
                await self._drop(peer)

        try:
            for t in tracks:
                peer.addTrack(t)
            await peer.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            await peer.setLocalDescription(await peer.createAnswer())
        except BaseException:
            await self._drop(peer)
            raise
        self.loop.call_later(self.connect_seconds, self._drop_unless_connected, peer)
        return peer.localDescription.sdp, peer.localDescription.type

    def _drop_unless_connected(self, peer) -> None:
        if peer in self.peers and peer.connectionState != "connected":
            self.loop.create_task(self._drop(peer))

    def _hear(self, peer, desk) -> None:
        """Make `peer` the talker: its audio track is speech on `desk`, its 'talk' data channel says when."""
        channels: list = []

        def to_page(event: dict) -> None:
            if channels and channels[0].readyState == "open":
                channels[0].send(json.dumps(event))

        talker = Talker(desk, lambda event: self.loop.call_soon_threadsafe(to_page, event))
        self.talker = (peer, talker)

        @peer.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                self.loop.create_task(listen(track, talker))

        @peer.on("datachannel")
        def on_channel(channel) -> None:
            channels[:] = [channel]
            channel.on("message", lambda message: talker.on_message(message) if isinstance(message, str)
                       else None)

    async def _drop(self, peer) -> None:
        self.peers.pop(peer, None)
        if self.talker is not None and self.talker[0] is peer:
            self.talker[1].close()
            self.talker = None
        await peer.close()

    async def close_all(self) -> None:
        for peer in list(self.peers):
            await self._drop(peer)

    def close(self) -> None:
        if self.loop.is_running():  # else the server's own shutdown closes the peers
            asyncio.run_coroutine_threadsafe(self.close_all(), self.loop)
