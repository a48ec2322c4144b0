"""Hours without drift: a live session speaks and falls silent for an hour into MPEG-TS, read back as it arrives.

python bench/soak.py [--minutes 60] [--every 10] [--speech WAV]
The weight-free animator on a generated presenter, through the public API (engine.api.Engine) into
udp://127.0.0.1 MPEG-TS; every 20 s it speaks real recorded speech (Debian's Asterisk prompt, else espeak-ng) and is
silent in between. A reader demuxes the stream (PyAV) and stamps each packet's arrival on the monotonic clock.
Printed at the start (the first 10 s), every --every minutes and at the end, each over the last 10 s of packets:
- A/V offset: the audio pts minus the video pts that arrive at the same moment (from the least arrival - pts of each
  stream: packets leave the muxer in bursts, and the least is the one that waited for nothing); it holds the
  encoders' constant delays, so what matters is its change from the start;
- wall-clock lag: the video's arrival - pts, as a change from the start: positive when frames fall behind the clock;
- the video frames and audio seconds received against the stream's pts span (UDP on loopback loses nothing).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402

from machine import header  # noqa: E402  (bench/ is on the path as the script's folder)

from core.net import free_port  # noqa: E402
from demo.presenter import FacePath, make_presenter_clip, speak  # noqa: E402
from engine.api import Engine, LipSync, Presenter  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402

REAL_SPEECH = Path("/usr/share/asterisk/sounds/en_US_f_Allison/vm-intro.wav")
WINDOW = 10.0   # seconds of packets each row reads
PERIOD = 20.0   # one utterance every PERIOD seconds, silence for the rest


class StreamReader:
    """Demuxes MPEG-TS from a UDP port in its own thread; keeps (arrival, pts seconds) per stream for the last
    WINDOW seconds, and counts what came."""

    def __init__(self, port: int):
        self.url = f"udp://127.0.0.1:{port}?fifo_size=1000000&overrun_nonfatal=1"
        self.recent = {"video": deque(), "audio": deque()}
        self.counts = {"video": 0, "audio": 0.0}    # frames; seconds of audio
        self.first_pts: dict[str, float] = {}
        self.last_pts: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            with av.open(self.url, format="mpegts", timeout=(30, 5)) as container:
                for packet in container.demux():
                    if self.stopping.is_set():
                        return
                    if packet.pts is None or packet.stream.type not in self.recent:
                        continue
                    arrival, kind = time.monotonic(), packet.stream.type
                    pts = float(packet.pts * packet.time_base)
                    with self.lock:
                        recent = self.recent[kind]
                        recent.append((arrival, pts))
                        while recent[0][0] < arrival - WINDOW:
                            recent.popleft()
                        self.first_pts.setdefault(kind, pts)
                        self.last_pts[kind] = pts
                        self.counts[kind] += 1 if kind == "video" else float(packet.duration * packet.time_base)
        except Exception as exc:  # the stream ended (its timeout) or could not be read: the row says so
            if not self.stopping.is_set():
                self.error = exc

    def row(self) -> dict:
        with self.lock:
            lags = {kind: min(a - p for a, p in recent) for kind, recent in self.recent.items()
                    if recent}
            if len(lags) < 2:
                raise RuntimeError(f"no stream arrived: {self.error}")
            span = self.last_pts["video"] - self.first_pts["video"]
            return {"offset": lags["video"] - lags["audio"], "lag": lags["video"], "span": span,
                    "frames": self.counts["video"], "audio": self.counts["audio"]}


def presenter_cache(work: Path) -> Path:
    clip = make_presenter_clip(work / "still.mp4", 2.0, 25, path=FacePath(sway=0, bob=0, zoom=0, tilt=0))
    return work / "cache" / preprocess_video(clip, work / "cache", PreprocessConfig(), progress=False).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the session runs")
    parser.add_argument("--every", type=float, default=10.0, help="minutes between rows")
    parser.add_argument("--speech", type=Path, help="the utterance spoken every 20 s (default: Asterisk's prompt)")
    args = parser.parse_args()
    if args.minutes * 60 < 2 * WINDOW or args.every <= 0:
        parser.error(f"--minutes must cover at least {2 * WINDOW:g} s and --every be positive")
    print(header())
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    speech = args.speech or (REAL_SPEECH if REAL_SPEECH.exists() else
                             speak("The quarterly numbers are in, and they look better than we hoped.",
                                   work / "speech.wav"))
    presenter = Presenter.open(presenter_cache(work))
    port = free_port("udp")
    reader = StreamReader(port)
    engine = Engine(presenter, LipSync.open(), [f"udp://127.0.0.1:{port}?pkt_size=1316"], live=True)
    started = time.monotonic()
    end = started + args.minutes * 60
    marks = sorted({WINDOW, *[m * 60 for m in _steps(args.every, args.minutes)], args.minutes * 60})
    print(f"{args.minutes:g} min live into MPEG-TS, speech ({speech.name}) every {PERIOD:g} s; each row is the last "
          f"{WINDOW:g} s of packets")
    print("| minute | A/V offset (ms) | its change | wall-clock lag change (ms) | video frames / pts span "
          "| audio s received | late frames |")
    print("|---|---|---|---|---|---|---|")
    first = None
    next_speech = started
    try:
        for mark in marks:
            while (now := time.monotonic()) < started + mark:
                if now >= next_speech and now < end - PERIOD:
                    engine.speak(speech)
                    next_speech += PERIOD
                time.sleep(min(0.2, started + mark - now))
            row = reader.row()
            first = first or row
            print(f"| {mark / 60:.2f} | {1000 * row['offset']:.1f} | {1000 * (row['offset'] - first['offset']):+.1f} "
                  f"| {1000 * (row['lag'] - first['lag']):+.1f} | {row['frames']} / {row['span'] * 25 + 1:.0f} "
                  f"| {row['audio']:.1f} | {engine.stats.late} |", flush=True)
    finally:
        stats = engine.close()
        reader.stopping.set()
    print(f"presented {stats.presented} frames, {stats.late} late (worst {stats.max_late_ms:.0f} ms)")


def _steps(every: float, minutes: float) -> list[float]:
    count = int(minutes // every)
    return [every * k for k in range(1, count + 1)]


if __name__ == "__main__":
    main()
