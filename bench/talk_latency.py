"""Browser talk round trip: from a sound onset in the page's microphone to the first frame the page shows with the
presenter's mouth open.

python bench/talk_latency.py [--onsets 8] [--latency_ms 300]
Headless Chromium (Debian's) plays a wav as its fake microphone: [1.5 s of room noise at -55 dBFS, 2 s of espeak-ng
speech] twice, looped. The server's own page talks in always-on mode to a still presenter with the weight-free
mouth animator. Both ends are timed on the page's clock: the onset where the microphone's level (a Web Audio
analyser, polled every 5 ms) rises past -35 dBFS after a second under it, and each shown frame's
requestVideoFrameCallback expectedDisplayTime with the darkness of the mouth's box, open at 5 levels over closed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from machine import header  # noqa: E402  (bench/ is on the path as the script's folder)

from chromium import Chromium, find_chromium, mouth_box, round_trips_ms, talk_wav  # noqa: E402
from audio.decode import load_audio  # noqa: E402
from demo.presenter import FacePath, make_presenter_clip, speak  # noqa: E402
from engine.render.composite import Compositor  # noqa: E402
from engine.render.loop import EngineConfig, LiveEngine  # noqa: E402
from engine.render.presenter import Presenter  # noqa: E402
from engine.serve.server import Server, ServerConfig  # noqa: E402
from models.mouthwarp import MouthAnimator  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onsets", type=int, default=8, help="speech onsets to time")
    parser.add_argument("--latency_ms", type=float, default=300.0, help="the engine's latency target")
    args = parser.parse_args()
    print(header())
    work = Path(tempfile.mkdtemp(prefix="bench-talk-"))
    clip = make_presenter_clip(work / "still.mp4", 2.0, 25, path=FacePath(sway=0, bob=0, zoom=0, tilt=0))
    presenter = Presenter(work / "cache" / preprocess_video(clip, work / "cache", PreprocessConfig(),
                                                            progress=False).name)
    speech = load_audio(speak("Hello there. Can you hear me talking now?", work / "speech.wav"))[:32000]
    wav = talk_wav(speech, work / "microphone.wav")
    animator, compositor = MouthAnimator(presenter.face_size), Compositor(presenter)
    animator.warm_up()
    engine = LiveEngine(presenter, animator, compositor, [], EngineConfig(latency_ms=args.latency_ms))
    server = Server(engine, ServerConfig(port=0)).start()
    executable = find_chromium()
    if executable is None:
        sys.exit("Debian's chromium is not installed and cannot be (apt-get install chromium)")
    try:
        with Chromium(executable, wav) as page:
            page.goto(f"http://127.0.0.1:{server.port}/#talk=always")
            page.wait_for("preview.connected")
            page.evaluate(f"preview.mouthBox = {mouth_box(presenter, animator, compositor)}")
            started = time.monotonic()
            page.wait_for(f"preview.onsets.length >= {args.onsets + 1}", timeout=10 * args.onsets + 30)
            time.sleep(1.0)
            record = page.evaluate("({frames: preview.frames, onsets: preview.onsets})")
            seconds = time.monotonic() - started
    finally:
        server.stop()
    trips = round_trips_ms(record)[:args.onsets]
    shown = [f["shown"] for f in record["frames"]]
    rate = (len(shown) - 1) / ((shown[-1] - shown[0]) / 1000)
    print(f"presenter {presenter.width}x{presenter.height}, mouth animator, engine latency target "
          f"{args.latency_ms:.0f} ms; {len(record['onsets'])} onsets in {seconds:.0f} s, page showed {rate:.1f} "
          f"frames/s")
    print(f"round trip, onset to first open mouth shown: {len(trips)} onsets, median {np.median(trips):.0f} ms, "
          f"min {min(trips):.0f}, max {max(trips):.0f}; each: {', '.join(f'{t:.0f}' for t in trips)}")


if __name__ == "__main__":
    main()
