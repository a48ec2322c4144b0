"""The voice-agent avatars (integrations/pipecat, integrations/livekit) against real servers: each runs its own
tests in its own venv (their frameworks' pins clash with ours), made here when missing, as the OBS tests install
OBS. This module starts the servers and hands them the speech, the presenter and its cached frames."""
from __future__ import annotations

import hashlib
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

from conftest import require
from core.net import free_port
from demo.presenter import speak
from engine.render.presenter import Presenter
from engine.serve.routes import ServerConfig
from engine.serve.server import Server
from engine.serve.sessions import SessionsConfig

pytestmark = pytest.mark.slow  # a venv of its own, pipelines of several seconds

require("aiohttp")
ROOT = Path(__file__).resolve().parents[1]
INTEGRATIONS = ROOT / "integrations"
TOKEN = "integration-secret"
VENVS = Path(os.environ.get("STREAM_WAV2LIP_VENVS", Path.home() / ".cache" / "stream-wav2lip" / "venvs"))


def venv_of(name: str) -> Path:
    """The integration's venv, outside the checkout so that a fresh clone (CI) reuses it; made or brought up to
    date by the integration's own setup script."""
    venv = VENVS / name
    subprocess.run(["bash", str(INTEGRATIONS / name / "setup.sh"), str(venv)], check=True, timeout=900)
    return venv


@pytest.fixture(scope="module")
def setting(built, tmp_path_factory):
    """The environment of integrations/checks.py: a server with room for two sessions and a token, a second one
    (a process) to kill, two pieces of 24 kHz speech, the sha1 of every cached frame of the presenter."""
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
    server = Server(None, ServerConfig(port=0, token=TOKEN),
                    SessionsConfig(root=built["root"], max_sessions=2, cpu_cores=2.0)).start()
    port = free_port()
    doomed = subprocess.Popen([sys.executable, str(ROOT / "stream_out.py"), "serve", "--data_dir", str(presenter),
                               "--listen", f"127.0.0.1:{port}", "--session_root", str(built["root"])],
                              env={**os.environ, "STREAM_WAV2LIP_TOKEN": TOKEN}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", doomed)
        yield {**os.environ, "STREAM_WAV2LIP_URL": f"http://127.0.0.1:{server.port}", "STREAM_WAV2LIP_TOKEN": TOKEN,
               "STREAM_WAV2LIP_PRESENTER": str(presenter), "STREAM_WAV2LIP_CACHED": str(cached),
               "STREAM_WAV2LIP_SPEECH": os.pathsep.join(map(str, speeches)),
               "STREAM_WAV2LIP_DOOMED": f"http://127.0.0.1:{port} {doomed.pid}"}
    finally:
        doomed.kill()
        doomed.wait(10)
        server.stop()


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the second server exited"
        try:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not healthy within {seconds:.0f} s")


def run_tests(name: str, setting: dict) -> None:
    venv = venv_of(name)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"{name}/tests"], cwd=INTEGRATIONS, env=setting, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{name}'s tests failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


def test_the_pipecat_video_service(setting):
    run_tests("pipecat", setting)
