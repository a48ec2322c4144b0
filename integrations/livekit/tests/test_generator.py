"""The LiveKit avatar's VideoGenerator driven as AvatarRunner drives it, with the framework's own frame types,
against a real stream-wav2lip server (tests/test_integrations.py starts it and sets the environment:
integrations/checks.py). There is no LiveKit server here: the worker is run only as far as joining its room."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd

from checks import Recording, Setting, as_served, check, closed_port_url, read_speech, sha1
from stream_wav2lip_livekit import AvatarError, PresentedFrame, StreamWav2LipVideoGenerator

SETTING = Setting.from_environment()
FRAME_MS = 100


class Recorder:
    """AvatarRunner's side of the iteration: each frame with the audio right after it (none: silence), which
    frames came with audio, and where each AudioSegmentEnd came. When asked to, it clears the buffer between a
    frame's picture and its audio, as AvatarRunner's clear_buffer task can while the picture is pushed."""

    def __init__(self):
        self.recording = Recording()
        self.with_audio: list[bool] = []
        self.segment_ends: list[int] = []  # frames recorded when each AudioSegmentEnd came
        self.clear = asyncio.Event()

    def _add(self, frame: PresentedFrame, audio: Optional[np.ndarray], silence: np.ndarray) -> None:
        self.recording.add(frame.pts, sha1(frame.data), silence if audio is None else audio)
        self.with_audio.append(audio is not None)

    async def consume(self, generator: StreamWav2LipVideoGenerator) -> None:
        silence = np.zeros(generator.session.sample_rate // generator.session.fps, np.int16)
        waiting = None  # the last frame, whose audio may come next
        async for item in generator:
            if isinstance(item, rtc.AudioFrame):
                assert waiting is not None, "audio that does not follow its frame"
                assert item.sample_rate == 16000 and item.num_channels == 1
                self._add(waiting, np.frombuffer(item.data, np.int16).copy(), silence)
                waiting = None
                continue
            if waiting is not None:
                self._add(waiting, None, silence)
                waiting = None
            if isinstance(item, AudioSegmentEnd):
                self.segment_ends.append(len(self.recording.pts))
                continue
            assert isinstance(item, PresentedFrame) and item.type == rtc.VideoBufferType.RGB24
            assert len(item.data) == item.width * item.height * 3
            waiting = item
            if self.clear.is_set():
                self.clear.clear()
                self.recording.interrupted_after = len(self.recording.pts)
                await generator.clear_buffer()


async def say(generator: StreamWav2LipVideoGenerator, pcm: bytes, rate: int) -> None:
    """As DataStreamAudioReceiver does: the speech in rtc.AudioFrames of 100 ms (its frame_size_ms), faster than
    real time, then the end of the segment."""
    step = int(rate * FRAME_MS / 1000) * 2
    for i in range(0, len(pcm), step):
        chunk = pcm[i:i + step]
        await generator.push_audio(rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2))
        if i // step % 2 == 1:
            await asyncio.sleep(0.05)
    await generator.push_audio(AudioSegmentEnd())


async def conversation(generator: StreamWav2LipVideoGenerator, first: tuple, second: tuple) -> Recorder:
    """1 s of silence, the first speech, 1.5 s of silence, the second speech cleared 1.5 s in, 1 s of silence."""
    recorder = Recorder()
    async with generator:
        consuming = asyncio.ensure_future(recorder.consume(generator))
        await asyncio.sleep(1.0)
        await say(generator, *first)
        await asyncio.sleep(len(first[0]) / 2 / first[1] + 1.5)
        await say(generator, *second)
        await asyncio.sleep(1.5)
        recorder.clear.set()
        await asyncio.sleep(1.0)
    await asyncio.wait_for(consuming, 5)  # the iteration ends with the session
    return recorder


def check_segments(recorder: Recorder, first: np.ndarray) -> None:
    """One AudioSegmentEnd, right after the first speech's last frame (the second was cleared); audio with the
    frames from the first sound of each speech to its end or the clear_buffer(), none with the others."""
    recording, with_audio = recorder.recording, np.array(recorder.with_audio)
    per_frame = len(recording.audio[0])
    sound = np.concatenate(recording.audio)
    start = np.flatnonzero(sound)[0] - np.flatnonzero(first)[0]
    first_end = (start + len(first) - 1) // per_frame + 1
    assert recorder.segment_ends == [first_end], (recorder.segment_ends, first_end)
    heard = np.flatnonzero([a.any() for a in recording.audio])
    second_from = heard[heard >= first_end][0]
    cut = recording.interrupted_after
    expected = np.zeros(len(with_audio), bool)
    expected[heard[0]:first_end] = expected[second_from:cut] = True
    assert np.array_equal(with_audio, expected), \
        f"audio came with frames {np.flatnonzero(with_audio ^ expected).tolist()} (or not) against expectation"


def test_two_generators_speak_in_sync_each_with_its_own_session_and_a_third_is_refused():
    """Each generator: frames 25 a second throughout, its own speech back exactly (resampled, cut at the
    clear_buffer(), nothing after it), the cached picture in the silences and a moving mouth in the speech, and
    the segment's end told once it has played. The server has room for two sessions: a third generator gets the
    server's reason."""
    speeches = [read_speech(path) for path in SETTING.speeches]
    generators = [StreamWav2LipVideoGenerator(url=SETTING.url, token=SETTING.token, presenter=SETTING.presenter)
                  for _ in range(3)]

    async def refused_third() -> AvatarError:
        while generators[0].session.id is None or generators[1].session.id is None:
            await asyncio.sleep(0.05)
        with pytest.raises(AvatarError) as refused:
            await generators[2].start()
        return refused.value

    async def main():
        return await asyncio.wait_for(asyncio.gather(conversation(generators[0], *speeches),
                                                     conversation(generators[1], *speeches[::-1]),
                                                     refused_third()), 60)
    one, two, refused = asyncio.run(main())

    assert "no capacity for another session" in str(refused) and "\n" not in str(refused)
    assert generators[0].session.fps == 25 and generators[0].session.id is None  # closed at the end
    for recorder, (first, second) in zip([one, two], [speeches, speeches[::-1]]):
        first, second = as_served(*first), as_served(*second)
        check(recorder.recording, SETTING, first, second)
        check_segments(recorder, first)


def test_an_utterance_cleared_before_it_sounds_is_no_segment_end():
    """The server ends an utterance it has no sound of yet when interrupted (speech_ended, after its answer to the
    interruption): that is no end of a segment that played, whether the clear_buffer() came before or after the
    server queued it. The next segment's end is told."""
    generator = StreamWav2LipVideoGenerator(url=SETTING.url, token=SETTING.token, presenter=SETTING.presenter)
    recorder = Recorder()
    pcm, rate = read_speech(SETTING.speeches[0])

    async def main():
        async with generator:
            consuming = asyncio.ensure_future(recorder.consume(generator))
            for queued in (0.0, 0.3):
                await generator.push_audio(rtc.AudioFrame(b"\x10\x00", 48000, 1, 1))  # the resampler keeps it
                await asyncio.sleep(queued)
                await generator.clear_buffer()
                await asyncio.sleep(1.0)
            ends = list(recorder.segment_ends)
            await say(generator, pcm[:rate], rate)  # half a second
            await asyncio.sleep(1.5)
        await asyncio.wait_for(consuming, 5)
        return ends

    assert asyncio.run(main()) == [] and len(recorder.segment_ends) == 1


def test_no_server_and_a_wrong_token_are_one_line_errors_at_start():
    url = closed_port_url()
    began = time.monotonic()
    with pytest.raises(AvatarError) as unreachable:
        asyncio.run(StreamWav2LipVideoGenerator(url=url, presenter=SETTING.presenter).start())
    assert str(unreachable.value).startswith(f"cannot reach the stream-wav2lip server at {url}")
    assert time.monotonic() - began < 10
    with pytest.raises(AvatarError) as refused:
        asyncio.run(StreamWav2LipVideoGenerator(url=SETTING.url, token="wrong", presenter=SETTING.presenter).start())
    assert "refused the token" in str(refused.value) and "\n" not in str(refused.value)


def test_the_server_gone_mid_stream_ends_the_iteration_with_an_error():
    url, pid = SETTING.doomed.split()
    generator = StreamWav2LipVideoGenerator(url=url, token=SETTING.token, presenter=SETTING.presenter, timeout=5)
    recorder = Recorder()

    async def main() -> AvatarError:
        async with generator:
            consuming = asyncio.ensure_future(recorder.consume(generator))
            started = time.monotonic()
            while len(recorder.recording.pts) < 25 and time.monotonic() - started < 15:  # a second of frames
                await asyncio.sleep(0.05)
            assert len(recorder.recording.pts) >= 25, "no frames from the server to be killed"
            os.kill(int(pid), signal.SIGKILL)
            with pytest.raises(AvatarError) as gone:
                await asyncio.wait_for(consuming, 15)
        return gone.value

    began = time.monotonic()
    error = asyncio.run(main())
    assert "stream-wav2lip server" in str(error) and "\n" not in str(error), error
    assert time.monotonic() - began < 20


def test_the_worker_says_in_one_line_why_it_cannot_join_its_room():
    """The entry point runs up to the room: without its settings, and with a LiveKit URL nobody listens on."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("LIVEKIT_")}

    def worker(**settings) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stream_wav2lip_livekit.worker"], env={**environment, **settings},
                              capture_output=True, text=True, timeout=60)
    unset = worker()
    assert unset.returncode == 2
    assert unset.stderr.strip() == "stream-wav2lip avatar worker: set LIVEKIT_URL and LIVEKIT_TOKEN"
    nobody = worker(LIVEKIT_URL=closed_port_url().replace("http", "ws"), LIVEKIT_TOKEN="token",
                    STREAM_WAV2LIP_URL=SETTING.url, STREAM_WAV2LIP_TOKEN=SETTING.token,
                    STREAM_WAV2LIP_PRESENTER=SETTING.presenter)
    assert nobody.returncode == 1
    said = [line for line in nobody.stderr.splitlines() if line.startswith("stream-wav2lip avatar worker: ")]
    assert len(said) == 1 and "Connection refused" in said[0], nobody.stderr[-2000:]  # among LiveKit's own logs
