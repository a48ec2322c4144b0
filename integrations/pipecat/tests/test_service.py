"""The Pipecat video service in real pipelines, run by Pipecat's own runner, against a real stream-wav2lip server
(tests/test_integrations.py starts it and sets the environment: integrations/checks.py)."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
from pipecat.frames.frames import (EndFrame, ErrorFrame, Frame, InterruptionFrame, OutputAudioRawFrame,
                                   OutputImageRawFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from checks import Recording, Setting, as_served, check, closed_port_url, read_speech, sha1
from stream_wav2lip_pipecat import StreamWav2LipVideoService

SETTING = Setting.from_environment()
CHUNK_SECONDS = 0.02


class Recorder(FrameProcessor):
    """The end of the pipeline: every image with the audio after it, and where the interruption came through."""

    def __init__(self):
        super().__init__()
        self.recording = Recording()
        self.image = None
        self.offsets: list[float] = []  # |image pts - its audio's pts|, seconds

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            assert frame.format == "RGB" and len(frame.image) == frame.size[0] * frame.size[1] * 3
            self.image = frame
        elif isinstance(frame, OutputAudioRawFrame):
            assert frame.sample_rate == 16000 and frame.num_channels == 1
            image, self.image = self.image, None
            if image is not None:
                self.offsets.append(abs(image.pts - frame.pts) / 1e9)
            self.recording.add(frame.pts / 1e9, sha1(image.image) if image is not None else None,
                               np.frombuffer(frame.audio, np.int16))
        elif isinstance(frame, InterruptionFrame):
            self.recording.interrupted_after = len(self.recording.pts)
        await self.push_frame(frame, direction)


def pipeline_of(avatar: StreamWav2LipVideoService, recorder: Recorder) -> tuple[PipelineWorker, list]:
    worker = PipelineWorker(Pipeline([avatar, recorder]), idle_timeout_secs=None, enable_rtvi=False,
                            enable_turn_tracking=False)
    errors = []

    @worker.event_handler("on_pipeline_error")
    async def on_error(worker, frame: ErrorFrame):
        errors.append(frame.error)
    return worker, errors


async def say(worker: PipelineWorker, pcm: bytes, rate: int) -> None:
    """As a TTS service does: started, the speech in 20 ms chunks faster than real time, stopped."""
    step = int(rate * CHUNK_SECONDS) * 2
    await worker.queue_frame(TTSStartedFrame())
    for i in range(0, len(pcm), step):
        await worker.queue_frame(TTSAudioRawFrame(pcm[i:i + step], rate, 1))
        if i // step % 10 == 9:
            await asyncio.sleep(0.05)
    await worker.queue_frame(TTSStoppedFrame())


async def conversation(worker: PipelineWorker, first: tuple, second: tuple) -> None:
    """1 s of silence, the first speech, 1.5 s of silence, the second speech interrupted 1.5 s in, 1 s of silence."""
    await asyncio.sleep(1.0)
    await say(worker, *first)
    await asyncio.sleep(len(first[0]) / 2 / first[1] + 1.5)
    await say(worker, *second)
    await asyncio.sleep(1.5)
    await worker.queue_frame(InterruptionFrame())
    await asyncio.sleep(1.0)
    await worker.queue_frame(EndFrame())


async def run(*workers: PipelineWorker, seconds: float = 40.0) -> None:
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(*workers)
    await asyncio.wait_for(runner.run(), seconds)


def test_two_pipelines_speak_in_sync_each_with_its_own_session_and_a_third_is_refused():
    """Each pipeline: frames 25 a second throughout, its own speech back exactly (resampled, cut at the
    interruption, nothing after it but one frame), images with the pts of their audio, the cached picture in the
    silences and a moving mouth in the speech. The server has room for two sessions: a third pipeline's service
    gets the server's reason, and that pipeline ends."""
    speeches = [read_speech(path) for path in SETTING.speeches]
    avatars = [StreamWav2LipVideoService(url=SETTING.url, token=SETTING.token, presenter=SETTING.presenter)
               for _ in range(3)]
    recorders = [Recorder() for _ in range(3)]
    (one, one_errors), (two, two_errors), (third, third_errors) = [pipeline_of(a, r) for a, r in
                                                                    zip(avatars, recorders)]

    async def main():
        async def refused_third():
            await asyncio.sleep(1.0)  # the two sessions are open
            await run(third, seconds=15)
        await asyncio.gather(run(one, two), conversation(one, speeches[0], speeches[1]),
                             conversation(two, speeches[1], speeches[0]), refused_third())
    asyncio.run(main())

    assert not one_errors and not two_errors
    assert avatars[0].avatar.fps == 25 and avatars[0].avatar.id is None  # closed at the end
    for recorder, (first, second) in zip(recorders, [speeches, speeches[::-1]]):
        check(recorder.recording, SETTING, as_served(*first), as_served(*second))
        assert max(recorder.offsets) <= 0.04
    assert len(third_errors) == 1 and "no capacity for another session" in third_errors[0]
    assert not recorders[2].recording.pts


def ended_with_error(avatar: StreamWav2LipVideoService, seconds: float = 20.0) -> tuple[list, float]:
    """Run a pipeline that only waits: (its errors, how long it ran)."""
    worker, errors = pipeline_of(avatar, Recorder())
    began = time.monotonic()
    asyncio.run(run(worker, seconds=seconds))
    return errors, time.monotonic() - began


def test_no_server_and_a_wrong_token_are_one_line_errors_and_the_pipeline_ends():
    url = closed_port_url()
    errors, took = ended_with_error(StreamWav2LipVideoService(url=url, presenter=SETTING.presenter))
    assert len(errors) == 1 and errors[0].startswith(f"cannot reach the stream-wav2lip server at {url}")
    assert took < 10
    errors, took = ended_with_error(StreamWav2LipVideoService(url=SETTING.url, token="wrong",
                                                              presenter=SETTING.presenter))
    assert len(errors) == 1 and "refused the token" in errors[0] and "\n" not in errors[0]


def test_the_server_gone_mid_stream_ends_the_pipeline_with_an_error():
    url, pid = SETTING.doomed.split()
    avatar = StreamWav2LipVideoService(url=url, token=SETTING.token, presenter=SETTING.presenter, timeout=5)
    recorder = Recorder()
    worker, errors = pipeline_of(avatar, recorder)

    async def kill_later():
        started = time.monotonic()
        while len(recorder.recording.pts) < 25 and time.monotonic() - started < 15:  # a second of frames
            await asyncio.sleep(0.05)
        assert len(recorder.recording.pts) >= 25, f"no frames from the server to be killed: {errors}"
        os.kill(int(pid), signal.SIGKILL)

    async def main():
        await asyncio.gather(run(worker, seconds=30), kill_later())
    began = time.monotonic()
    asyncio.run(main())
    assert len(errors) == 1 and "stream-wav2lip server" in errors[0], errors
    assert time.monotonic() - began < 20
