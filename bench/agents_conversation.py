"""The Pipecat side of bench/agents.py, run in the Pipecat venv (integrations/pipecat/setup.sh): one conversation
of alternating speech and silence through StreamWav2LipVideoService, as a TTS would feed it; prints one JSON line
of per-utterance timings and the stream's audio/video clock."""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
import wave

import numpy as np
from loguru import logger
from pipecat.frames.frames import (EndFrame, Frame, OutputAudioRawFrame, OutputImageRawFrame, TTSAudioRawFrame,
                                   TTSStartedFrame, TTSStoppedFrame)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from stream_wav2lip_pipecat import StreamWav2LipVideoService


class Probe(FrameProcessor):
    """Per frame out: when it came, its pts, its samples, whether its audio sounds, whether its picture is not a
    cached one (the lips synced)."""

    def __init__(self, cached: set):
        super().__init__()
        self.cached, self.image, self.frames = cached, None, []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            self.image = frame
        elif isinstance(frame, OutputAudioRawFrame):
            synced = self.image is not None and hashlib.sha1(self.image.image).hexdigest() not in self.cached
            self.frames.append((time.monotonic(), frame.pts / 1e9, len(frame.audio) // 2,
                                bool(np.frombuffer(frame.audio, np.int16).any()), synced))
            self.image = None
        await self.push_frame(frame, direction)


async def converse(worker: PipelineWorker, lines: list, minutes: float, silence: float, sent: list) -> None:
    """Lines in turn, each sent as a TTS does (20 ms chunks, faster than real time), then `silence` seconds."""
    await asyncio.sleep(2.0)
    end = time.monotonic() + minutes * 60
    n = 0
    while time.monotonic() < end:
        pcm, rate = lines[n % len(lines)]
        step = rate // 50 * 2
        await worker.queue_frame(TTSStartedFrame())
        sent.append(time.monotonic())
        for i in range(0, len(pcm), step):
            await worker.queue_frame(TTSAudioRawFrame(pcm[i:i + step], rate, 1))
            if i // step % 10 == 9:
                await asyncio.sleep(0.05)
        await worker.queue_frame(TTSStoppedFrame())
        await asyncio.sleep(len(pcm) / 2 / rate + silence)
        n += 1
    await worker.queue_frame(EndFrame())


def utterances(frames: list, sent: list) -> list:
    """Per utterance: (sent at, first sounding frame, first synced frame), each frame as its row."""
    found = []
    for at in sent:
        after = [f for f in frames if f[0] >= at]
        sound = next((f for f in after if f[3]), None)
        lips = next((f for f in after if f[4]), None)
        if sound and lips:
            found.append((at, sound, lips))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--session", required=True, help="the POST /sessions body, JSON")
    parser.add_argument("--speech", nargs="+", required=True, help="wav files, one line each")
    parser.add_argument("--cached", required=True, help="sha1 of the presenter's cached frames (RGB), one a line")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--silence", type=float, default=3.0)
    args = parser.parse_args()
    logger.remove()
    lines = []
    for path in args.speech:
        with wave.open(path) as w:
            lines.append((w.readframes(w.getnframes()), w.getframerate()))
    with open(args.cached) as hashes:
        cached = {line.strip() for line in hashes}
    probe = Probe(cached)
    avatar = StreamWav2LipVideoService(url=args.url, session=json.loads(args.session))
    worker = PipelineWorker(Pipeline([avatar, probe]), idle_timeout_secs=None, enable_rtvi=False,
                            enable_turn_tracking=False)
    sent: list = []

    async def run():
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await asyncio.gather(runner.run(), converse(worker, lines, args.minutes, args.silence, sent))
    asyncio.run(run())

    frames = probe.frames
    pts0, samples = frames[0][1], np.cumsum([0] + [f[2] for f in frames[:-1]])
    clock = [(f[0] - frames[0][0], 1000 * (s / 16000 - (f[1] - pts0))) for f, s in zip(frames, samples)]
    found = utterances(frames, sent)
    print(json.dumps({
        "frames": len(frames), "seconds": frames[-1][0] - frames[0][0], "utterances": len(sent),
        "first_sound_ms": [1000 * (sound[0] - at) for at, sound, _ in found],
        "first_lips_ms": [1000 * (lips[0] - at) for at, _, lips in found],
        "lips_minus_sound_ms": [(at - frames[0][0], 1000 * (lips[1] - sound[1])) for at, sound, lips in found],
        "audio_minus_video_ms": clock[::250] + [clock[-1]]}))


if __name__ == "__main__":
    main()
