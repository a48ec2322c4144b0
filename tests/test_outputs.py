"""Outputs write each frame at its pts: a constant-rate file or stream keeps a gap in the frames' times (the last
frame held, silence), and a frame for a slot already written is dropped."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from core.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from engine.outputs.sinks import Mp4Sink, MpegTsSink

WIDTH, HEIGHT = 64, 48
SHOWN = [*range(10), *range(15, 25)]  # slots 10-14 get no frame


def grey(level: int) -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), level, np.uint8)


def tone(k: int) -> np.ndarray:
    t = (np.arange(SAMPLES_PER_FRAME) + k * SAMPLES_PER_FRAME) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def decoded(path) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N, H, W) grey levels, audio at 16 kHz) as ffmpeg reads the file back."""
    video = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                           capture_output=True, check=True).stdout
    audio = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar",
                            str(SAMPLE_RATE), "-"], capture_output=True, check=True).stdout
    return (np.frombuffer(video, np.uint8).reshape(-1, HEIGHT, WIDTH),
            np.frombuffer(audio, np.int16).astype(np.float32) / 32768)


@pytest.mark.parametrize("kind", ["mp4", "ts"])
def test_a_sink_given_frames_with_a_pts_gap_keeps_the_gap(kind, tmp_path):
    path = tmp_path / f"gap.{kind}"
    sink = Mp4Sink(path) if kind == "mp4" else MpegTsSink(str(path))
    sink.open(WIDTH, HEIGHT)
    for k in SHOWN:
        sink.write(grey(10 * k), tone(k), k / FPS)
    sink.write(grey(255), tone(24), 24 / FPS)  # its slot is taken: dropped
    sink.close()
    frames, audio = decoded(path)
    levels = frames.reshape(len(frames), -1).mean(axis=1)
    assert len(frames) == 25
    expected = [10 * k for k in range(10)] + [90] * 5 + [10 * k for k in range(15, 25)]
    assert np.abs(levels - expected).max() < 4, levels.round()
    if kind == "mp4":  # (MPEG-TS's AAC adds its priming at the start; the mp4 trims it)
        assert abs(len(audio) - 25 * SAMPLES_PER_FRAME) < SAMPLES_PER_FRAME
        rms = [float(np.sqrt(np.mean(audio[k * SAMPLES_PER_FRAME:(k + 1) * SAMPLES_PER_FRAME] ** 2)))
               for k in range(25)]
        assert max(rms[11:14]) < 0.02 and min(rms[2:9] + rms[16:23]) > 0.3  # the gap is silent, the rest the tone
