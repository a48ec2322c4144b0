"""The weight-free mouth animator through the real engine, and the one-command demo."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, CollectSink
from audio.decode import load_audio
from engine.composite import Compositor
from engine.loop import render_file
from engine.presenter import Presenter, ping_pong
from engine.timeline import FrameTimeline
from models.mouthwarp import MouthAnimator, audio_features


@pytest.fixture(scope="module")
def animated(built, media):
    presenter = Presenter(built["cache"] / "clip30")  # the face is visible on every frame
    speech = load_audio(media["speech"])
    audio = np.concatenate([speech, np.zeros(16000, np.float32)])
    sink = CollectSink()
    stats = render_file(audio, presenter, MouthAnimator(presenter.face_size), Compositor(presenter), [sink],
                        progress=False)
    timeline = FrameTimeline()
    units = timeline.push(audio) + timeline.finish()
    return presenter, audio, sink.frames, units, stats


def mouth_change(presenter, frame, index) -> float:
    """How much the lower half of the face box differs from the cached frame (a pixel measure of mouth opening)."""
    x1, y1, x2, y2 = presenter.box[index]
    mid = (y1 + y2) // 2
    return float(np.abs(frame[mid:y2, x1:x2].astype(int) - presenter.background(index)[mid:y2, x1:x2].astype(int)).mean())


def test_mouth_motion_follows_the_audio(animated):
    presenter, audio, frames, units, _ = animated
    change = np.array([mouth_change(presenter, frames[u.index], ping_pong(u.index, presenter.frames)) for u in units])
    energy = np.array([np.sqrt(np.mean(np.square(u.audio))) for u in units])
    correlation = np.corrcoef(change, energy)[0, 1]
    assert correlation >= 0.6, f"mouth motion vs audio energy correlation {correlation:.2f}"
    assert change.max() > 5  # the mouth really opens


def test_silence_is_untouched_and_only_the_lower_face_changes(animated):
    presenter, audio, frames, units, stats = animated
    assert 0 < stats.inferred < len(units)
    for unit in units:
        index = ping_pong(unit.index, presenter.frames)
        diff = np.abs(frames[unit.index].astype(int) - presenter.background(index).astype(int)).max(axis=2)
        if not unit.speaking:
            assert diff.max() == 0
            continue
        x1, y1, x2, y2 = presenter.box[index]
        upper = y1 + (y2 - y1) // 3  # brows and eyes
        outside = diff.copy()
        outside[upper:y2, x1:x2] = 0
        assert outside.max() == 0, f"frame {unit.index} changed outside the lower face"


def test_silence_closes_the_mouth_and_loud_speech_opens_it():
    silent = np.full((80, 16), -4.0, np.float32)
    loud = np.full((80, 16), -0.5, np.float32)
    assert audio_features(silent)[0] == 0 and audio_features(loud)[0] == 1
    animator = MouthAnimator(96)
    face = np.full((1, 96, 96, 3), 150, np.uint8)
    points = np.full((1, 478, 2), np.nan, np.float32)
    # no usable landmarks: the crop comes back unchanged rather than distorted
    assert np.array_equal(animator.predict(loud[None], face, points), face)
    # the opening rises quickly and falls back more slowly (attack/release), never jumping straight to a target
    openings = [animator._smooth(*audio_features(w))[0] for w in [loud] * 3 + [silent] * 3]
    assert openings[0] < openings[1] < openings[2] and openings[3] > 0 and openings[5] < openings[3]


def test_demo_command_renders_a_playable_mp4_with_audio(tmp_path):
    proc = subprocess.run([sys.executable, "stream_out.py", "demo", "--out", str(tmp_path), "--short"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "weight-free mouth animator" in proc.stderr and "demo video:" in proc.stdout
    video = tmp_path / "demo.mp4"
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json",
                                       str(video)], capture_output=True, text=True).stdout)
    streams = {s["codec_type"]: s for s in probe["streams"]}
    speech_seconds = len(load_audio(tmp_path / "speech.wav")) / 16000
    assert abs(int(streams["video"]["nb_read_frames"]) - speech_seconds * 25) <= 1
    assert float(streams["audio"]["duration"]) == pytest.approx(speech_seconds, abs=0.06)
