"""Against a real OBS Studio (Xvfb + obs-websocket): setup, our stream on screen, its audio, and restarts."""
from __future__ import annotations

import base64
import logging
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from conftest import ROOT, CollectSink
from audio.decode import load_audio
from engine.render.composite import Compositor
from engine.render.loop import EngineConfig, LiveEngine
from engine.outputs.obs import INPUT_NAME, setup_media_source
from engine.render.presenter import Presenter, ping_pong
from engine.outputs.sinks import MpegTsSink
from models.mouthwarp import MouthAnimator
from core.net import free_port
from obs_studio import PASSWORD

pytestmark = pytest.mark.slow  # a real OBS under Xvfb

SIMILAR = 0.9  # normalised correlation between an OBS screenshot and the frame we sent


def screenshot(client, width: int, height: int) -> np.ndarray:
    data = client.get_source_screenshot(INPUT_NAME, "png", width, height, -1).image_data
    return cv2.imdecode(np.frombuffer(base64.b64decode(data.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = (cv2.resize(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), (160, 90)).astype(np.float64).ravel() for x in (a, b))
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def best_match(shot: np.ndarray, sink: CollectSink, since: float) -> tuple[float, int]:
    """(similarity, frame number) of the sent frame the screenshot shows best, among those sent after `since`."""
    return max(((similarity(shot, frame), k) for t, k, frame in zip(sink.times, sink.numbers, sink.frames)
                if t >= since), default=(0.0, -1))  # nothing sent yet: no match


@pytest.fixture(scope="module")
def stage(built, media):
    presenter = Presenter(built["cache"] / "clip30")
    speech = load_audio(media["speech"])
    return presenter, speech


def start_engine(presenter, audio, port):
    sink = CollectSink(live=True)
    engine = LiveEngine(presenter, MouthAnimator(presenter.face_size), Compositor(presenter),
                        [MpegTsSink(f"udp://127.0.0.1:{port}?pkt_size=1316"), sink], EngineConfig())
    engine.push(audio)
    engine.buffer.ended.set()
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    return engine, sink, thread


def wait_for_our_frames(obs_studio, presenter, sink, timeout: float = 12.0) -> float:
    """Seconds until OBS shows one of the frames we just sent (it needs a keyframe after connecting)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        shot = screenshot(obs_studio.client(), presenter.width, presenter.height)
        if best_match(shot, sink, time.monotonic() - 2.0)[0] >= SIMILAR:
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"OBS did not show our stream within {timeout} s")


def test_a_request_obs_refuses_is_one_line(obs_studio, caplog):
    """An out-of-range audio offset: OBS answers the request with an error, which becomes one line, no traceback."""
    with caplog.at_level(logging.DEBUG):
        assert setup_media_source(obs_studio.settings, "udp://127.0.0.1:23999", audio_offset_ms=10 ** 7) is None
    ours = [r.getMessage() for r in caplog.records if r.name == "engine.outputs.obs"]
    assert len(ours) == 1 and "OBS refused a request" in ours[0] and "\n" not in ours[0]
    assert not [r for r in caplog.records if r.name.startswith("obsws") and r.levelno >= logging.ERROR]


def test_obs_setup_creates_then_updates_one_input(obs_studio):
    port = free_port()
    args = [sys.executable, "stream_out.py", "obs-setup", "--target", f"udp://127.0.0.1:{port}", "--obs_port",
            str(obs_studio.settings.port), "--obs_password", PASSWORD, "--audio_delay_ms", "120"]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "created input" in first.stdout or "updated input" in first.stdout
    assert "updated input" in second.stdout and "audio sync offset to 120 ms" in second.stdout
    client = obs_studio.client()
    assert [i["inputName"] for i in client.get_input_list().inputs].count(INPUT_NAME) == 1
    assert client.get_input_audio_sync_offset(INPUT_NAME).input_audio_sync_offset == 120
    assert client.get_input_settings(INPUT_NAME).input_settings["input"].startswith(f"udp://127.0.0.1:{port}")


def test_obs_shows_our_presenter_speaking_and_hears_it(obs_studio, stage, tmp_path):
    import obsws_python
    presenter, speech = stage
    speech = np.tile(speech, 3)  # room for OBS's start-up (it shows nothing before a keyframe) plus the shots
    audio = np.concatenate([speech, np.zeros(16000 * 4, np.float32)])  # speech, then 4 s of silence
    port = free_port()
    assert setup_media_source(obs_studio.settings, f"udp://127.0.0.1:{port}")
    levels: list[tuple[float, float]] = []

    def on_input_volume_meters(data):
        for item in data.inputs:
            if item["inputName"] == INPUT_NAME and item["inputLevelsMul"]:
                levels.append((time.monotonic(), max(channel[1] for channel in item["inputLevelsMul"])))

    events = obsws_python.EventClient(host=obs_studio.settings.host, port=obs_studio.settings.port, password=PASSWORD,
                                      subs=obsws_python.Subs.INPUTVOLUMEMETERS)
    events.callback.register(on_input_volume_meters)
    engine, sink, thread = start_engine(presenter, audio, port)
    start = time.monotonic()
    speech_end = len(speech) / 16000
    wait_for_our_frames(obs_studio, presenter, sink)
    client = obs_studio.client()
    shots = []
    while time.monotonic() - start < speech_end - 0.8:  # while speaking, as long as there is speech left
        shots.append((time.monotonic() - start, time.monotonic(), screenshot(client, presenter.width, presenter.height)))
        time.sleep(0.6)
    for when in (speech_end + 2.5, speech_end + 3.0):
        time.sleep(max(0.0, start + when - time.monotonic()))
        shots.append((when, time.monotonic(), screenshot(client, presenter.width, presenter.height)))
    assert len(shots) >= 5, f"OBS took {shots[0][0] if shots else '?'} s to show the stream: too few speech shots"
    thread.join(timeout=30)
    events.disconnect()
    cv2.imwrite(str(tmp_path / "obs_speech.png"), shots[1][2])

    def mouth_change(shot, frame_number):
        index = ping_pong(frame_number, presenter.frames)
        x1, y1, x2, y2 = presenter.box[index]
        mid = (y1 + y2) // 2
        return float(np.abs(shot[mid:y2, x1:x2].astype(int) - presenter.background(index)[mid:y2, x1:x2]).mean())

    speaking, silent = [], []
    for when, taken, shot in shots:
        score, k = best_match(shot, sink, taken - 2.0)
        assert score >= SIMILAR, f"screenshot at {when:.1f} s shows something else (best correlation {score:.2f})"
        (speaking if when < speech_end else silent).append(mouth_change(shot, k))
    assert max(speaking) > 2 * max(silent) + 2, (speaking, silent)
    # audio reached OBS: loud while speaking, near silent after
    t0 = start
    during = [level for t, level in levels if t0 + 1.0 < t < t0 + speech_end]
    after = [level for t, level in levels if t0 + speech_end + 1.5 < t < t0 + speech_end + 3.5]
    assert during and after, f"no volume meter events for {INPUT_NAME}"
    assert max(during) > 0.05 and max(after) < 0.01, (max(during), max(after))


def test_engine_outlives_obs_and_the_input_recovers(obs_studio, stage):
    presenter, speech = stage
    port = free_port()
    obs_studio.stop_obs()  # OBS starts after the engine
    engine, sink, thread = start_engine(presenter, np.tile(speech, 6), port)  # outlasts both restarts
    time.sleep(2)
    obs_studio.start()
    assert setup_media_source(obs_studio.settings, f"udp://127.0.0.1:{port}")
    wait_for_our_frames(obs_studio, presenter, sink)
    obs_studio.stop_obs()  # OBS goes away mid-stream
    frames_before = len(sink.frames)
    time.sleep(1.5)
    assert thread.is_alive() and len(sink.frames) > frames_before + 25  # the engine kept streaming
    obs_studio.start()
    assert setup_media_source(obs_studio.settings, f"udp://127.0.0.1:{port}")
    wait_for_our_frames(obs_studio, presenter, sink)
    engine.stop()
    thread.join(timeout=10)
    assert engine.stats.late <= 0.05 * engine.stats.frames


def test_obs_reads_the_alpha_stream(obs_studio, cutout):
    """--background alpha live: OBS's Media Source plays our WebM and shows the presenter with the cache's matte
    as its alpha (transparent around the presenter, opaque on it)."""
    from engine.render.backdrop import Backdrop
    from engine.outputs.sinks import WebmAlphaSink
    presenter = Presenter(cutout["cache"], load_matte=True)
    url = f"udp://127.0.0.1:{free_port()}?pkt_size=1316"
    assert setup_media_source(obs_studio.settings, url, input_format="webm")  # listening before the stream starts
    sink = CollectSink(live=True)
    engine = LiveEngine(presenter, MouthAnimator(presenter.face_size), Compositor(presenter),
                        [WebmAlphaSink(url), sink], EngineConfig(backdrop=Backdrop("alpha")))
    engine.push(np.zeros(16000 * 10, np.float32))
    engine.buffer.ended.set()
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    best, start = 0.0, time.monotonic()
    try:
        while best < 0.9 and time.monotonic() - start < 12:
            time.sleep(0.5)
            data = obs_studio.client().get_source_screenshot(INPUT_NAME, "png", presenter.width, presenter.height,
                                                             -1).image_data
            shot = cv2.imdecode(np.frombuffer(base64.b64decode(data.split(",", 1)[1]), np.uint8),
                                cv2.IMREAD_UNCHANGED)
            if shot.ndim != 3 or shot.shape[2] != 4:
                continue
            shown = shot[..., 3] > 127
            sent = [frame[..., 3] > 127 for t, frame in zip(sink.times, sink.frames) if t >= time.monotonic() - 2]
            best = max([float((shown & m).sum() / max((shown | m).sum(), 1)) for m in sent], default=0.0)
    finally:
        engine.stop()
        thread.join(timeout=30)
    assert best >= 0.9, f"OBS's picture of the stream has no matching alpha (best IoU {best:.2f})"
