"""Outputs (engine/outputs/): each frame written at its pts (a gap in the frames' times is kept, the last frame held
with silence; a frame for a slot already written is dropped), MPEG-TS to a file and to a UDP listener, the virtual
camera and OBS saying what is missing in one line."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import time

import numpy as np
import pytest

from core.net import free_port
from core.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME, frame_pts
from engine.outputs.obs import ObsSettings, setup_media_source
from engine.outputs.sinks import Mp4Sink, MpegTsSink, SinkError, VirtualCameraSink
from engine.render.loop import EngineConfig, LiveEngine, render_file

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
        sink.write(grey(10 * k), tone(k), frame_pts(k))
    sink.write(grey(255), tone(24), frame_pts(24))  # its slot is taken: dropped
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


@pytest.mark.parametrize("kind", ["mp4", "ts"])
def test_a_recording_stops_growing_at_its_cap_and_is_finished_at_close(kind, tmp_path, caplog):
    path = tmp_path / f"capped.{kind}"
    cap = 0.01  # minutes: 15 frames
    sink = Mp4Sink(path, max_minutes=cap) if kind == "mp4" else MpegTsSink(str(path), max_minutes=cap)
    sink.open(WIDTH, HEIGHT)
    for k in [*range(10), *range(12, 40)]:  # a gap across the cap is filled up to it
        sink.write(grey(5 * k), tone(k), frame_pts(k))
    sink.close()
    frames, audio = decoded(path)
    levels = frames.reshape(len(frames), -1).mean(axis=1)
    assert len(frames) == 15 and abs(levels[-1] - 70) < 4, levels.round()  # the last slot is frame 14
    assert abs(len(audio) - 15 * SAMPLES_PER_FRAME) < 2048  # (AAC codes 1024-sample frames; MPEG-TS keeps the priming)
    assert sum("reached its cap of 0.01 minutes" in r.message for r in caplog.records) == 1


@pytest.mark.slow
def test_mpegts_stream_decodes_with_matching_timestamps(rig, talk, tmp_path):
    presenter, predictor, compositor = rig
    out = tmp_path / "stream.ts"
    render_file(talk[1][: 16000 * 3], presenter, predictor, compositor, [MpegTsSink(str(out))], progress=False)
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(out)],
                                      capture_output=True, text=True).stdout)
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")
    audio = next(s for s in probe["streams"] if s["codec_type"] == "audio")
    aac_priming = 1024 / 16000  # the AAC encoder's leading samples, skipped by every decoder
    assert float(video["start_time"]) - float(audio["start_time"]) == pytest.approx(aac_priming, abs=0.005)
    assert float(video["duration"]) == pytest.approx(3.0, abs=0.05)
    assert float(audio["duration"]) + aac_priming == pytest.approx(3.0, abs=0.07)


@pytest.mark.slow
def test_live_udp_stream_reaches_a_listener(rig, talk, tmp_path):
    presenter, predictor, compositor = rig
    port = free_port("udp")
    received = tmp_path / "received.ts"
    listener = subprocess.Popen(["ffmpeg", "-v", "error", "-y", "-i", f"udp://127.0.0.1:{port}?timeout=4000000",
                                 "-c", "copy", str(received)], stderr=subprocess.PIPE)
    time.sleep(0.5)
    engine = LiveEngine(presenter, predictor, compositor, [MpegTsSink(f"udp://127.0.0.1:{port}?pkt_size=1316")],
                        EngineConfig(silence_db=0))  # all silence: no model time, so pacing alone is exercised
    engine.push(talk[1][: 16000 * 2])
    engine.buffer.ended.set()
    stats = engine.run()
    listener.wait(timeout=20)
    assert stats.frames == 50 and stats.late == 0
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(received)],
                                      capture_output=True, text=True).stdout)
    kinds = {s["codec_type"] for s in probe["streams"]}
    assert kinds == {"video", "audio"}


def test_virtual_camera_says_how_to_get_one():
    """No v4l2loopback can be loaded here: the real pyvirtualcam call fails and the message says what to do."""
    sink = VirtualCameraSink()
    try:
        sink.open(640, 360)
    except SinkError as exc:  # pyvirtualcam's own words (it really probed /dev/video*), then what to do
        assert "No v4l2 loopback device found at /dev/video" in str(exc) and "v4l2loopback-dkms" in str(exc)
    else:  # a machine with a virtual camera: the sink works, nothing more to check here
        sink.close()
        pytest.skip("a virtual camera exists on this machine")


def test_unreachable_obs_is_one_message_and_no_exception(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with caplog.at_level(logging.ERROR, logger="engine.outputs.obs"):
        assert setup_media_source(ObsSettings(port=port, timeout=1), "udp://127.0.0.1:23000") is None
    errors = [r for r in caplog.records if r.name == "engine.outputs.obs"]
    assert len(errors) == 1 and "not reachable" in errors[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("obsws")]  # no library traceback either
