"""Headless Chromium (Debian's /usr/bin/chromium) driven over the DevTools protocol, with a fake microphone that plays
a wav file: how the tests and bench/talk_latency.py use the server's page as a browser would."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio",
         "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
         "--disable-features=WebRtcHideLocalIpsWithMdns"]  # aiortc cannot resolve the browser's mDNS candidates
FAKE_MICROPHONE = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def find_chromium() -> Optional[str]:
    """Debian's chromium, installed on first use where apt can (scripts/setup.sh does not: only these tests and
    bench/talk_latency.py need it)."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True)
        found = shutil.which("chromium")
    return found


class Chromium:
    """One browser, one tab. `call(method, **params)` is a DevTools command; `evaluate(js)` runs an expression in
    the page (promises awaited) and returns its JSON value. With `microphone_wav` the page's microphone plays that
    file (looped) and permission prompts are answered yes."""

    def __init__(self, executable: str, microphone_wav: Optional[Path] = None, flags: tuple[str, ...] = ()):
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        flags = [*FLAGS, *flags] + ([*FAKE_MICROPHONE, f"--use-file-for-fake-audio-capture={microphone_wav}"]
                                    if microphone_wav else [])
        self.proc = subprocess.Popen([executable, *flags, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._ids = iter(range(1, 1 << 30))
        self._call(self._connect())

    def _call(self, coroutine, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _connect(self) -> None:
        import aiohttp
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start")
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            page = next(t for t in await response.json() if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    async def _send(self, method: str, params: dict) -> dict:
        ident = next(self._ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = json.loads((await self.ws.receive()).data)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        return self._call(self._send(method, params), timeout)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str, timeout: float = 60.0):
        result = self.call("Runtime.evaluate", timeout, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never had {condition}")
            time.sleep(0.1)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._call(self.session.close(), 5)
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.loop.call_soon_threadsafe(self.loop.stop)
        shutil.rmtree(self.profile, ignore_errors=True)


def talk_wav(speech, path: Path, gap_seconds: float = 1.5, noise_db: float = -55.0) -> Path:
    """What the fake microphone plays (looped): [room noise, speech] twice, then room noise; the noise (white, at
    `noise_db` dBFS) is what the input gate must keep from moving the mouth."""
    rng = np.random.default_rng(0)
    gap = lambda: (rng.standard_normal(int(gap_seconds * 16000)) * 10 ** (noise_db / 20)).astype(np.float32)
    soundfile.write(str(path), np.concatenate([gap(), speech, gap(), speech, gap()]), 16000, subtype="PCM_16")
    return path


def still_presenter(folder: Path):
    """A presenter who holds still, so that a page can watch the mouth in one fixed box (mouth_box)."""
    from demo.presenter import FacePath, make_presenter_clip
    from engine.render.presenter import Presenter
    from preprocess.pipeline import PreprocessConfig, preprocess_video
    folder.mkdir(parents=True, exist_ok=True)
    clip = make_presenter_clip(folder / "still.mp4", 2.0, 25, path=FacePath(sway=0, bob=0, zoom=0, tilt=0))
    return Presenter(folder / "cache" / preprocess_video(clip, folder / "cache", PreprocessConfig(),
                                                         progress=False).name)


def mouth_box(presenter, animator, compositor) -> list[int]:
    """[x, y, w, h] in frame pixels: where a wide-open mouth changes any frame of the loop."""
    changed = np.zeros((presenter.height, presenter.width), bool)
    for i in np.flatnonzero(presenter.has_face):
        opened = animator.animate(presenter.face(i), presenter.crop_landmarks(i), 1.0, 0.0)
        frame = compositor.compose([int(i)], opened[None])[0]
        changed |= np.abs(frame.astype(int) - compositor.passthrough(int(i)).astype(int)).sum(axis=2) > 30
    ys, xs = np.nonzero(changed)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def mouth_series(page_record: dict):
    """(display times ms, mouth darkness, threshold) of the frames the page showed; open = darkness > threshold,
    5 levels above the darkness of the closed mouth (the 10th percentile: at least that share of frames is
    closed)."""
    frames = [f for f in page_record["frames"] if f["darkness"] is not None]
    shown = np.array([f["shown"] for f in frames])
    darkness = np.array([f["darkness"] for f in frames])
    return shown, darkness, float(np.percentile(darkness, 10)) + 5.0


def round_trips_ms(page_record: dict) -> list[float]:
    """Per microphone sound onset after the page began to watch the mouth: ms until the first frame shown with the
    mouth open."""
    shown, darkness, threshold = mouth_series(page_record)
    trips = []
    for onset in (t for t in page_record["onsets"] if t > shown[0]):
        opened = np.flatnonzero((shown >= onset) & (darkness > threshold))
        if len(opened):
            trips.append(float(shown[opened[0]] - onset))
    return trips
