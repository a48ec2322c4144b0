"""The public Python API (engine/api.py): the README's example as printed, frames with their pts and audio from a
file render, and a live engine's speech, interrupt and events."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest
import soundfile

from conftest import ROOT
from audio.decode import load_audio
from core.timebase import FPS, SAMPLE_RATE, frames_for
from engine import Engine, LipSync, Presenter
from engine.render.presenter import Presenter as PresenterCache, PresenterError


def readme_api_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(block for block in blocks if "from engine import" in block)


def probe_frames(path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip())


def test_the_readme_api_example_runs_as_printed(built, media, tmp_path, monkeypatch, capsys):
    (tmp_path / "out" / "demo" / "cache").mkdir(parents=True)
    (tmp_path / "out" / "demo" / "cache" / "presenter").symlink_to(built["cache"] / "clip25")
    shutil.copy(media["speech"], tmp_path / "out" / "demo" / "speech.wav")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_api_example(), "README.md", "exec"), {})
    samples = len(load_audio(media["speech"]))
    assert probe_frames(tmp_path / "out" / "api.mp4") == frames_for(samples)
    assert "wrote out/api.mp4" in capsys.readouterr().out


def test_file_frames_carry_rgb_pixels_pts_and_their_audio(built, media):
    at_24k = np.concatenate([np.zeros(int(0.4 * 24000), np.float32),
                             soundfile.read(media["speech"], dtype="float32")[0][: 48000]])
    with Engine(Presenter.open(built["cache"] / "clip25"), LipSync.open()) as engine:
        engine.push((at_24k * 32767).astype(np.int16), 24000)
        frames = list(engine.frames())
    assert len(frames) >= frames_for(len(at_24k) * SAMPLE_RATE // 24000) - 1
    assert [f.pts for f in frames[:3]] == [0, 640, 1280] and frames[2].time == 2 / FPS
    assert all(len(f.audio) == SAMPLE_RATE // FPS for f in frames[:-1])
    cache = PresenterCache(built["cache"] / "clip25", 96)
    assert np.array_equal(frames[0].image, cv2.cvtColor(cache.background(0), cv2.COLOR_BGR2RGB))  # silent: cached
    speaking = [f for f in frames if np.abs(f.audio).max() > 0.05]
    assert speaking and any(not np.array_equal(f.image, cv2.cvtColor(cache.background(f.pts // 640),
                                                                     cv2.COLOR_BGR2RGB)) for f in speaking)


def test_a_folder_that_is_no_cache_fails_in_one_line(built, tmp_path):
    with pytest.raises(ValueError, match="holds 2 presenter caches; pick one"):
        Presenter.open(built["cache"])
    with pytest.raises(PresenterError, match="no finished presenter cache here"):
        Presenter.open(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        LipSync.open(tmp_path / "wav2lip_gan.pth")


def test_a_live_engine_speaks_is_interrupted_and_reports_it(built, media):
    engine = Engine(Presenter.open(built["cache"] / "clip25"), LipSync.open(), live=True)
    frames, events = [], []
    readers = [threading.Thread(target=lambda: frames.extend(f.pts for f in engine.frames()), daemon=True),
               threading.Thread(target=lambda: events.extend(engine.events()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        utterance = engine.speak(media["speech"])
        deadline = time.monotonic() + 10
        while not any(e["type"] == "speech_started" for e in events) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert engine.interrupt() == [utterance]
        time.sleep(0.5)
    finally:
        stats = engine.close()
    for reader in readers:
        reader.join(timeout=5)
    kinds = [(e["type"], e.get("utterance")) for e in events]
    assert ("speech_started", utterance) in kinds and ("speech_interrupted", utterance) in kinds
    assert ("speech_ended", utterance) not in kinds[kinds.index(("speech_interrupted", utterance)):]
    assert len(frames) > FPS and set(np.diff(frames)) == {SAMPLE_RATE // FPS}  # frames at 25/s, idle ones too
    assert stats.inferred > 0
