"""The voice-agent avatars (integrations/pipecat, integrations/livekit) against real servers: each runs its own
tests in its own venv (their frameworks' pins clash with ours), made here when missing, as the OBS tests install
OBS. This module starts the servers and hands them the speech, the presenter and its cached frames."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile
import soxr

from chromium import Chromium, mouth_box, still_presenter
from conftest import ROOT, require
from wsclient import wait_healthy
from core.net import free_port
from demo.presenter import speak
from engine.render.composite import Compositor
from engine.render.presenter import Presenter
from engine.serve.routes import ServerConfig
from engine.serve.server import Server
from engine.serve.sessions import LoadMeter, SessionsConfig
from models.mouthwarp import MouthAnimator

pytestmark = pytest.mark.slow  # a venv of its own, pipelines of several seconds

require("aiohttp")
INTEGRATIONS = ROOT / "integrations"
TOKEN = "integration-secret"
CHECKOUT_PACKAGES = os.pathsep.join(str(INTEGRATIONS / name) for name in ("client", "pipecat", "livekit"))
VENVS = Path(os.environ.get("STREAM_WAV2LIP_VENVS", Path.home() / ".cache" / "stream-wav2lip" / "venvs"))


def venv_of(name: str) -> Path:
    """The integration's venv, outside the checkout so that a fresh clone (CI) reuses it; made or brought up to
    date by the integration's own setup script. Its packages may be another checkout's: CHECKOUT_PACKAGES, first
    on the path, make it run this one's."""
    venv = VENVS / name
    subprocess.run(["bash", str(INTEGRATIONS / name / "setup.sh"), str(venv)], check=True, timeout=900)
    return venv


@pytest.fixture(scope="module")
def setting(built, tmp_path_factory):
    """The environment of integrations/checks.py but the server to kill (`doomed`): a server with room for two
    sessions and a token, two pieces of 24 kHz speech, the sha1 of every cached frame of the presenter."""
    folder = tmp_path_factory.mktemp("agents")
    presenter = built["cache"] / "clip30"
    speeches = []
    for n, text in enumerate(["Hello, I am your assistant. How can I help you today?",
                              "The weather is fine, and the train leaves at nine in the morning."]):
        pcm, rate = soundfile.read(speak(text, folder / f"speech{n}.wav"), dtype="float32")
        speeches.append(folder / f"speech{n}_24k.wav")
        soundfile.write(speeches[-1], soxr.resample(pcm, rate, 24000), 24000, subtype="PCM_16")
    frames = Presenter(presenter)
    cached = folder / "cached.sha1"
    cached.write_text("".join(hashlib.sha1(cv2.cvtColor(frames.background(i), cv2.COLOR_BGR2RGB).tobytes())
                              .hexdigest() + "\n" for i in range(frames.frames)))
    server = Server(None, ServerConfig(port=0, token=TOKEN), SessionsConfig(root=built["root"], max_sessions=2))
    # admission by the session cap alone: a session's first late frames,
    # while another starts beside it on these two cores, must not refuse the other
    server.sessions.meter = LoadMeter(cap_only=True)
    server.start()
    try:
        yield {**os.environ, "PYTHONPATH": CHECKOUT_PACKAGES,
               "STREAM_WAV2LIP_URL": f"http://127.0.0.1:{server.port}", "STREAM_WAV2LIP_TOKEN": TOKEN,
               "STREAM_WAV2LIP_PRESENTER": str(presenter), "STREAM_WAV2LIP_CACHED": str(cached),
               "STREAM_WAV2LIP_SPEECH": os.pathsep.join(map(str, speeches))}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def doomed(built) -> dict[str, str]:
    """Per integration, a second server that its tests kill mid-stream (a process of its own, started together):
    its URL and pid. It runs no session of its own, so its admission has nothing to measure (or find late, on these
    busy cores) when the test's session comes."""
    servers = {}
    for name in ("pipecat", "livekit"):
        port = free_port()
        servers[name] = port, subprocess.Popen(
            [sys.executable, str(ROOT / "stream_out.py"), "serve", "--listen", f"127.0.0.1:{port}",
             "--session_root", str(built["root"])],
            env={**os.environ, "STREAM_WAV2LIP_TOKEN": TOKEN}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port, process in servers.values():
            wait_healthy(f"http://127.0.0.1:{port}/health", process, TOKEN)
        yield {name: f"http://127.0.0.1:{port} {process.pid}" for name, (port, process) in servers.items()}
    finally:
        for _, process in servers.values():
            process.kill()
            process.wait(10)


def run_tests(name: str, setting: dict, doomed: dict[str, str]) -> None:
    venv = venv_of(name)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"{name}/tests"], cwd=INTEGRATIONS, env={**setting, "STREAM_WAV2LIP_DOOMED": doomed[name]},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{name}'s tests failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


def test_the_pipecat_video_service(setting, doomed):
    run_tests("pipecat", setting, doomed)


def open_share(shown: np.ndarray, values: np.ndarray, threshold: float, start_ms: float, end_ms: float) -> float:
    inside = (shown >= start_ms) & (shown <= end_ms)
    assert inside.sum() >= 10, "the page showed too few frames"
    return float((values[inside] > threshold).mean())


def test_the_example_bot_answers_typed_lines_and_a_new_line_interrupts(setting, chromium, built):
    """integrations/pipecat/example/bot.py in Chromium: the page shows the presenter; a typed line is spoken with
    sound and a moving mouth; a second line cuts the first short, and after it the mouth and the sound stop."""
    venv = venv_of("pipecat")
    port = free_port()
    presenter = still_presenter(built["root"] / "still")
    box = mouth_box(presenter, MouthAnimator(presenter.face_size), Compositor(presenter))
    bot = subprocess.Popen([str(venv / "bin" / "python"), str(INTEGRATIONS / "pipecat" / "example" / "bot.py"),
                            "--server", setting["STREAM_WAV2LIP_URL"], "--presenter", str(presenter.dir),
                            "--listen", f"127.0.0.1:{port}"], env=setting, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/", bot)
        with Chromium(chromium) as page:
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for("bot.connected")
            page.evaluate(f"bot.mouthBox = {box}")
            page.wait_for("bot.frames.filter(f => f.darkness !== null).length >= 25")
            page.evaluate("say('This is a long answer. It goes on for quite a while, so that a new line can cut it "
                          "short, long before it would have ended.')")
            time.sleep(2.0)
            page.evaluate("say('Stop.')")
            time.sleep(5.0)
            record = page.evaluate("({frames: bot.frames.filter(f => f.darkness !== null), said: bot.said})")
    finally:
        bot.terminate()
        _, errors = bot.communicate(timeout=20)
    request = urllib.request.Request(setting["STREAM_WAV2LIP_URL"] + "/status",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.load(answer)["sessions"] == {}, "the stopped bot left its session on the server"
    frames = record["frames"]
    shown = np.array([f["shown"] for f in frames])
    darkness = np.array([f["darkness"] for f in frames])
    level = np.array([f["level"] or 0.0 for f in frames])
    closed = float(np.percentile(darkness, 10)) + 5.0
    first, second = record["said"]
    assert len(frames) / ((shown[-1] - shown[0]) / 1000) >= 20, "the page shows the presenter, 25 frames a second"
    assert open_share(shown, darkness, closed, first - 1000, first) <= 0.05, "the mouth moved before the line"
    assert open_share(shown, darkness, closed, first + 700, second) >= 0.3, "the mouth does not speak the line"
    assert open_share(shown, level, 0.01, first + 700, second) >= 0.3, "the line is not heard"
    # the first line alone would go on ~7 s; cut short, the bot is silent and closed-mouthed 2.5 s after the second
    assert open_share(shown, darkness, closed, second + 2500, second + 5000) <= 0.05, "the first line went on"
    assert open_share(shown, level, 0.01, second + 2500, second + 5000) <= 0.05, "the first line is still heard"
    assert "ERROR" not in errors, errors[-2000:]


def test_the_livekit_avatar(setting, doomed):
    run_tests("livekit", setting, doomed)
