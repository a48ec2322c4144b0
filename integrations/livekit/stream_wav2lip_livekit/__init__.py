"""A LiveKit Agents avatar for a local stream-wav2lip server: the agent's speech goes to the server, and the
presenter lip-syncing it comes back as the video and audio that AvatarRunner publishes in the room.

    generator = StreamWav2LipVideoGenerator(url="http://127.0.0.1:8765", presenter="cache/anna")
    async with generator:
        runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room), video_gen=generator,
                              options=generator.avatar_options())
        await runner.start()

stream_wav2lip_livekit/worker.py does that in a room, as a process of its own.
"""
from __future__ import annotations

from collections import deque
from typing import AsyncIterator, Optional, Union

from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator
from stream_wav2lip_client import AvatarError, AvatarSession, MediaFrame, session_body

__all__ = ["StreamWav2LipVideoGenerator", "PresentedFrame", "AvatarError"]


class PresentedFrame(rtc.VideoFrame):
    """A frame the session presented (RGB24), with its `number` and `pts` (seconds, on the session's clock)."""

    def __init__(self, media: MediaFrame):
        super().__init__(media.width, media.height, rtc.VideoBufferType.RGB24, media.image)
        self.number, self.pts = media.number, media.pts


class StreamWav2LipVideoGenerator(VideoGenerator):
    """The avatar's VideoGenerator, on a session of its own that start() (or `async with`) opens and aclose() ends.

    - push_audio(rtc.AudioFrame): speech, at any rate the server takes, mono or stereo. A segment's first frame
      opens an utterance in its format (a segment keeps one format, as the framework sends it);
      push_audio(AudioSegmentEnd()) ends it.
    - clear_buffer() interrupts: the speech pushed so far is dropped, playing or queued.
    - Iterating yields every frame the session presents, 25 a second also while the presenter is silent, as a
      PresentedFrame followed by its audio (16 kHz mono) while a segment plays. An AudioSegmentEnd follows the
      last frame of each segment that played to its end (the server's speech_ended says which). Silent frames
      come without audio: AvatarRunner counts every AudioFrame as the segment's playback, from its start.
    The server unreachable, refusing the session or gone is an AvatarError: from start(), or ending the
    iteration."""

    def __init__(self, *, url: str = "http://127.0.0.1:8765", token: Optional[str] = None,
                 presenter: Optional[str] = None, checkpoint: Optional[str] = None, enhance: Optional[bool] = None,
                 latency_ms: Optional[int] = None, session: Optional[dict] = None, timeout: float = 10.0):
        self._session = AvatarSession(url, token, session_body(presenter, checkpoint, enhance, latency_ms, session),
                                      timeout, on_event=self._on_event)
        self._clears = 0                        # clear_buffer() calls so far
        self._unanswered: deque[int] = deque()  # per utterance started and not yet `queued`: _clears then
        self._segments: set = set()             # the server's ids of the utterances whose end is to be told
        self._ended = 0                         # segments that ended, their AudioSegmentEnd not yet yielded
        self._playing = False                   # a segment plays: the frames' audio is its, silences included

    @property
    def session(self) -> AvatarSession:
        """The session (its id, fps, size and the server's error events)."""
        return self._session

    def avatar_options(self) -> AvatarOptions:
        """AvatarRunner's options for the open session: its picture size and rate, its audio (16 kHz mono)."""
        s = self._session
        return AvatarOptions(video_width=s.width, video_height=s.height, video_fps=s.fps,
                             audio_sample_rate=s.sample_rate, audio_channels=1)

    async def start(self) -> None:
        await self._session.open()

    async def aclose(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> "StreamWav2LipVideoGenerator":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def push_audio(self, frame: Union[rtc.AudioFrame, AudioSegmentEnd]) -> None:
        if isinstance(frame, AudioSegmentEnd):
            await self._session.end_speech()
            return
        if not self._session.speaking:
            self._unanswered.append(self._clears)  # before sending: the answer may come while it goes out
            await self._session.start_speech(frame.sample_rate, frame.num_channels)
        await self._session.send_audio(bytes(frame.data))

    async def clear_buffer(self) -> None:
        """Drop the speech pushed so far. AvatarRunner tells the agent the segment was interrupted: no
        AudioSegmentEnd comes for it, nor for any segment pushed before."""
        self._clears += 1
        self._segments.clear()
        self._ended = 0
        self._playing = False
        await self._session.interrupt()

    def _on_event(self, event: dict) -> None:
        """Events come in the frames' order: a speech_ended right after its utterance's last frame. Only
        utterances started since the last clear_buffer() count: the server also ends one it had no sound of yet
        when interrupted, after its answer to the interruption."""
        if event["type"] == "queued":
            if self._unanswered.popleft() == self._clears:
                self._segments.add(event["utterance"])
        elif event["type"] == "speech_ended" and event["utterance"] in self._segments:
            self._segments.remove(event["utterance"])
            self._ended += 1

    async def __aiter__(self) -> AsyncIterator[Union[rtc.VideoFrame, rtc.AudioFrame, AudioSegmentEnd]]:
        async for media in self._session.frames():
            while self._ended:
                self._ended -= 1
                self._playing = False
                yield AudioSegmentEnd()
            clears = self._clears
            if media.image is not None:
                yield PresentedFrame(media)
            # a segment plays from its first sound; not if clear_buffer() came while its picture went out
            if clears == self._clears and (self._playing or any(media.audio)):
                self._playing = True
                yield rtc.AudioFrame(media.audio, media.sample_rate, 1, len(media.audio) // 2)
