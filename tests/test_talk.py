"""Talking to the presenter from a browser (engine/serve/talk.py, the page's talk controls), in Debian's headless Chromium
with a fake microphone. A module of its own: with another live engine beside it, two cores would be too busy for
the talk engine to keep up, and it would rightly show cached frames to stay on time."""
from __future__ import annotations

import time

import numpy as np
import pytest

from chromium import Chromium, mouth_box, mouth_series, still_presenter, talk_wav
from conftest import require
from wsclient import url
from audio.decode import load_audio
from demo.presenter import speak
from engine.render.composite import Compositor
from engine.render.loop import EngineConfig, LiveEngine
from engine.render.presenter import Presenter
from engine.serve.server import Server, ServerConfig
from models.mouthwarp import MouthAnimator

pytestmark = pytest.mark.slow  # a real Chromium

require("aiohttp")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """2 s of espeak-ng speech, 16 kHz."""
    path = speak("Hello from the network. This sentence arrives in small pieces.",
                 tmp_path_factory.mktemp("talk") / "speech.wav")
    return load_audio(path)[:32000]


@pytest.fixture(scope="module")
def still(tmp_path_factory) -> Presenter:
    return still_presenter(tmp_path_factory.mktemp("still"))


def test_a_page_talks_push_to_talk_and_a_second_talker_is_refused(still, chromium, speech, tmp_path):
    """Headless Chromium's fake microphone plays [room noise, 2 s speech] twice: the first speech, with talk not
    held, leaves the mouth closed; the second, held, moves it, and the room noise after it does not (the page's
    noise suppression, then the input gate).
    A second page asking to talk is told why not and still watches."""
    animator, compositor = MouthAnimator(still.face_size), Compositor(still)
    animator.warm_up()
    server = Server(LiveEngine(still, animator, compositor, [], EngineConfig(latency_ms=300)),
                    ServerConfig(port=0)).start()
    wav = talk_wav(speech, tmp_path / "microphone.wav")
    box = mouth_box(still, animator, compositor)
    try:
        with Chromium(chromium, wav) as page:
            page.goto(url(server, "/#talk=push"))
            page.wait_for("preview.connected")
            page.evaluate(f"preview.mouthBox = {box}")
            page.wait_for("preview.onsets.length >= 1")
            time.sleep(2.4)                      # the first speech is over, talk not held
            page.evaluate("say(true)")           # as a held button does
            page.wait_for("preview.onsets.length >= 2")
            time.sleep(4.6)                      # the second speech and the noise after it, shown late
            record = page.evaluate("({frames: preview.frames, onsets: preview.onsets, events: preview.events})")
            with Chromium(chromium, wav) as second:
                second.goto(url(server, "/#talk=always"))
                second.wait_for("preview.refused")
                refused = second.evaluate("preview.refused")
                second.wait_for("preview.connected")
    finally:
        server.stop()
    shown, darkness, threshold = mouth_series(record)
    first, second_onset = record["onsets"][:2]

    def open_share(start_s: float, end_s: float, onset: float) -> float:
        inside = (shown >= onset + 1000 * start_s) & (shown <= onset + 1000 * end_s)
        assert inside.sum() >= 10, "the page showed too few frames"
        return float((darkness[inside] > threshold).mean())
    assert open_share(0.3, 2.0, first) <= 0.05           # speech, talk not held: not heard
    # The held speech is watched from when its mouth first showed: a busy machine delays the whole picture, and
    # this measures what is shown, not how soon.
    opened = np.flatnonzero((shown >= second_onset) & (darkness > threshold))
    assert len(opened), "the held speech never opened the mouth"
    shown_from = shown[opened[0]]
    assert shown_from - second_onset <= 1500, "the held speech showed too late to watch the noise after it"
    assert open_share(0.2, 1.5, shown_from) >= 0.4       # talk held: the presenter speaks it
    assert open_share(2.4, 3.1, shown_from) <= 0.05      # room noise: the mouth closes again
    assert any(e["type"] == "speech_started" for e in record["events"])
    assert "one talker at a time" in refused
