"""A Pipecat video service for a local stream-wav2lip server: the TTS's speech goes to the server, and the presenter
lip-syncing it comes back as OutputImageRawFrames with the audio that goes with each, which the transport then
plays instead of the TTS's own.

    avatar = StreamWav2LipVideoService(url="http://127.0.0.1:8765", presenter="cache/anna")
    pipeline = Pipeline([transport.input(), stt, llm, tts, avatar, transport.output()])
"""
from __future__ import annotations

import asyncio
from typing import Optional

from pipecat.frames.frames import (CancelFrame, EndFrame, EndWorkerFrame, Frame, InterruptionFrame,
                                   OutputImageRawFrame, SpeechOutputAudioRawFrame, StartFrame, TTSAudioRawFrame,
                                   TTSStartedFrame, TTSStoppedFrame)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings
from stream_wav2lip_client import AvatarError, AvatarSession, MediaFrame, session_body

__all__ = ["StreamWav2LipVideoService", "AvatarError"]


class StreamWav2LipVideoService(AIService):
    """Opens a session on the server at StartFrame and ends it at EndFrame or CancelFrame.

    - TTSAudioRawFrame (any rate the server takes, mono or stereo) is consumed and sent as speech; TTSStartedFrame
      and TTSStoppedFrame mark each utterance (and pass on).
    - InterruptionFrame stops this service's speech at once (and passes on).
    - Out come OutputImageRawFrames (RGB) at the session's rate, also while the presenter is silent, each followed
      by its audio as a SpeechOutputAudioRawFrame, both stamped with the session's pts; each image waits in the
      transport for the audio before it, so picture and sound stay together.
    - Every other frame passes through unchanged.
    A server that cannot be reached, refuses the session or goes away is an ErrorFrame upstream, and the pipeline
    ends."""

    def __init__(self, *, url: str = "http://127.0.0.1:8765", token: Optional[str] = None,
                 presenter: Optional[str] = None, checkpoint: Optional[str] = None, enhance: Optional[bool] = None,
                 latency_ms: Optional[int] = None, session: Optional[dict] = None, timeout: float = 10.0, **kwargs):
        super().__init__(settings=ServiceSettings(model=None), **kwargs)  # no model to name: the server has it
        self._avatar = AvatarSession(url, token, session_body(presenter, checkpoint, enhance, latency_ms, session),
                                     timeout)
        self._pump: Optional[asyncio.Task] = None
        self._failed = False
        self._format = (0, 0)  # (rate, channels) of the open utterance

    @property
    def avatar(self) -> AvatarSession:
        """The session (its id, fps, size and the server's error events). Open it before the pipeline starts
        (`await service.avatar.open()`) to size a transport's video from it."""
        return self._avatar

    async def start(self, frame: StartFrame):
        await super().start(frame)
        try:
            if self._avatar.id is None:  # (opened already by a caller that needed the size for its transport)
                await self._avatar.open()
        except AvatarError as exc:
            await self._fail(exc)
            return
        self._pump = self.create_task(self._play(), name="stream-wav2lip frames")

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        await self._close()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._close()

    async def _close(self) -> None:
        await self._avatar.close()
        if self._pump is not None:
            await self.cancel_task(self._pump)
            self._pump = None

    async def _fail(self, exc: AvatarError) -> None:
        """Say why upstream, then end the pipeline: with no avatar there is nothing to show."""
        if self._failed:
            return
        self._failed = True
        await self.push_error(str(exc), exception=exc, force_treat_as_permanent=True)
        await self.push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)

    async def _play(self) -> None:
        try:
            async for media in self._avatar.frames():
                await self._push_media(media)
        except AvatarError as exc:
            await self._fail(exc)

    async def _push_media(self, media: MediaFrame) -> None:
        pts = round(media.pts * 1e9)
        if media.image is not None:
            image = OutputImageRawFrame(image=media.image, size=(media.width, media.height), format="RGB")
            image.pts, image.sync_with_audio = pts, True
            await self.push_frame(image)
        sound = SpeechOutputAudioRawFrame(audio=media.audio, sample_rate=media.sample_rate, num_channels=1)
        sound.pts = pts
        await self.push_frame(sound)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        try:
            if isinstance(frame, TTSAudioRawFrame):
                if not self._failed and self._avatar.id is not None:  # (not before StartFrame, nor after the end)
                    await self._speak(frame)
                return
            if isinstance(frame, (TTSStartedFrame, TTSStoppedFrame)):
                await self._avatar.end_speech()  # an utterance opens with its first audio, whose rate it takes
            elif isinstance(frame, InterruptionFrame) and self._avatar.id is not None:
                await self._avatar.interrupt()
        except AvatarError as exc:
            await self._fail(exc)
        await self.push_frame(frame, direction)

    async def _speak(self, frame: TTSAudioRawFrame) -> None:
        audio_format = (frame.sample_rate, frame.num_channels)
        if not self._avatar.speaking or audio_format != self._format:
            await self._avatar.end_speech()
            await self._avatar.start_speech(*audio_format)
            self._format = audio_format
        await self._avatar.send_audio(frame.audio)
