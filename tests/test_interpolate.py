"""--fps 50: an optical-flow frame between each pair the lip model makes. Measured on the presenter photo moving
along a known, fast path (drawn in memory at 50 frames/s, so every in-between frame has its true counterpart),
and on a render's frame count and clock."""
from __future__ import annotations

import logging
import subprocess

import numpy as np
import pytest

from demo.presenter import FacePath, frame_at
from core.flow import FlowInterpolator
from engine.render.interpolate import in_between_weights, interleaved, audio_share

FAST = FacePath(sway=120.0, bob=30.0, zoom=0.1, tilt=4.0, period=1.0)  # up to 30 px between two 25 fps frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inner = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return float(inner / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inner))


def face_box(frame: np.ndarray) -> np.ndarray:
    """The face mesh's box, from a detector of its own (a tracking one's first frame differs from its later ones)."""
    from preprocess.detect import make_detector
    detector = make_detector("mediapipe")
    try:
        return detector.detect(frame).box
    finally:
        detector.close()


def test_the_in_between_frame_is_halfway_and_beats_repeating_a_frame():
    interpolator = FlowInterpolator()
    for t in (0.1, 0.3, 0.55, 0.8):  # fast sideways, turning, fast the other way
        before, truth, after = (frame_at(FAST, t + dt) for dt in (0.0, 0.02, 0.04))
        made = interpolator.midpoint(before, after)
        assert psnr(made, truth) >= psnr(before, truth) + 3, t
        boxes = [face_box(f) for f in (truth, made, before)]
        assert iou(boxes[1], boxes[0]) >= 0.9, t
        assert iou(boxes[2], boxes[0]) < 0.9, t  # the motion is large enough for the test to mean something


def test_doubling_keeps_the_audio_and_puts_every_frame_on_a_20_ms_clock():
    rng = np.random.default_rng(0)
    frames = [((rng.normal(size=640).astype(np.float32), 640 * i), np.full((16, 16, 3), 10 * i, np.uint8), i)
              for i in range(5)]
    flow = FlowInterpolator()
    out = list(interleaved(iter(frames), lambda a, b, i, j: flow.midpoint(a, b)))
    parts = [audio_share(*item.tag, item, 50) for item in out]
    assert len(out) == 10 and [pts for _, pts in parts] == [320 * k for k in range(10)]
    assert np.array_equal(np.concatenate([a for a, _ in parts]), np.concatenate([a for (a, _), _, _ in frames]))
    assert [int(item.frame[0, 0, 0]) for item in out] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 40]  # the last twice
    # the cache frames shown
    assert [(item.cache_from, item.cache_to) for item in out[:4]] == [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert [item.frame for item in interleaved(iter([(None, None, 0)] * 2), pytest.fail)] == [None] * 4
    rows = list(in_between_weights([{"jawOpen": 0.2}, {"jawOpen": 0.4}]))
    assert [row["jawOpen"] for row in rows] == pytest.approx([0.2, 0.3, 0.4, 0.4])  # blendshapes follow the frames


def test_a_50_fps_render_has_twice_the_frames_and_the_same_sound(built, media, tmp_path):
    import soundfile

    from audio.decode import load_audio
    from core.timebase import SAMPLE_RATE, frames_for
    from stream_out import main as stream_out
    speech = load_audio(media["speech"])[: 2 * SAMPLE_RATE + 123]
    soundfile.write(str(tmp_path / "talk.wav"), speech, SAMPLE_RATE)
    common = ["--data_dir", str(built["cache"] / "clip25"), "--audio_files", str(tmp_path / "talk.wav")]
    assert stream_out([*common, "--outfile", str(tmp_path / "50.mp4"), "--fps", "50"]) == 0

    def probe(path, stream: str, entries: str) -> list[str]:
        return subprocess.run(["ffprobe", "-v", "error", "-select_streams", stream, "-count_frames", "-show_entries",
                               f"stream={entries}", "-of", "csv=p=0", str(path)], capture_output=True,
                              text=True, check=True).stdout.strip().split(",")

    rate, count = probe(tmp_path / "50.mp4", "v:0", "r_frame_rate,nb_read_frames")
    assert rate == "50/1" and int(count) == 2 * frames_for(len(speech))
    assert float(probe(tmp_path / "50.mp4", "a:0", "duration")[0]) == pytest.approx(frames_for(len(speech)) / 25,
                                                                                    abs=0.06)


@pytest.fixture(scope="module")
def fast_cache(tmp_path_factory):
    """A cache of the presenter moving fast, made with preprocess --fps 50 (the in-between backgrounds)."""
    from demo.presenter import make_presenter_clip
    from preprocess.pipeline import PreprocessConfig, preprocess_video
    root = tmp_path_factory.mktemp("fast")
    clip = make_presenter_clip(root / "fast.mp4", 1.2, 25, FAST)
    preprocess_video(clip, root / "cache", PreprocessConfig(between_frames=True), progress=False)
    return root / "cache" / "fast"


@pytest.mark.slow
def test_a_cache_made_for_50_fps_interpolates_only_the_face_region(fast_cache, media, tmp_path, caplog):
    """preprocess --fps 50 stores the in-between background of every pair; a 50 fps render then runs the flow on
    the face region only: outside it the in-between frame is that stored background, pixel for pixel. Live, the
    frames keep a 20 ms clock."""
    from audio.decode import load_audio
    from conftest import CollectSink
    from engine.render.composite import Compositor
    from engine.render.loop import EngineConfig, render_file
    from engine.render.presenter import Presenter, ping_pong
    from models.mouthwarp import MouthAnimator
    presenter = Presenter(fast_cache, 96, load_between=True)
    assert Presenter(fast_cache, 96).background_between(4, 5) is None  # a 25 fps render: not read
    flow = FlowInterpolator()
    stored = presenter.background_between(4, 5)
    assert stored is not None and presenter.background_between(5, 4) is not None
    assert psnr(stored, flow.midpoint(presenter.background(4), presenter.background(5))) >= 35  # (JPEG q95)
    sink = CollectSink()
    speech = load_audio(media["speech"])[: 16000 * 2]
    render_file(speech, presenter, MouthAnimator(96), Compositor(presenter), [sink], EngineConfig(fps=50),
                progress=False)
    assert len(sink.frames) == 2 * 50
    checked = 0
    for k in range(0, len(sink.frames) - 2, 2):
        i, j = ping_pong(k // 2, presenter.frames), ping_pong(k // 2 + 1, presenter.frames)
        middle, background = sink.frames[k + 1].astype(int), presenter.background_between(i, j).astype(int)
        (x1, y1), (x2, y2) = presenter.box[[i, j], :2].min(0), presenter.box[[i, j], 2:].max(0)
        w, h = x2 - x1, y2 - y1  # the union of both face boxes, a quarter of its size added around it
        region = np.zeros(middle.shape[:2], bool)
        region[max(0, y1 - h // 4 - 1):y2 + h // 4 + 1, max(0, x1 - w // 4 - 1):x2 + w // 4 + 1] = True
        assert np.array_equal(middle[~region], background[~region]), k  # untouched outside the face region
        checked += np.abs(middle[region] - background[region]).max() > 10  # the face's own flow inside it
    assert checked >= 40

    # live (an MPEG-TS stream into a file, in real time): the same frames on a 20 ms clock
    import soundfile
    from stream_out import main as stream_out
    caplog.set_level(logging.INFO)
    soundfile.write(str(tmp_path / "talk.wav"), speech[:16000], 16000)
    assert stream_out(["--data_dir", str(fast_cache), "--audio_files", str(tmp_path / "talk.wav"),
                       "--outfile", str(tmp_path / "50.ts"), "--fps", "50"]) == 0
    assert "in-between frame waits for the next frame" in caplog.text  # the latency it adds is shown
    times = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                            "-of", "csv=p=0", str(tmp_path / "50.ts")], capture_output=True, text=True,
                           check=True).stdout.split()
    assert len(times) >= 2 * 25 and len(times) % 2 == 0  # each 25 fps frame and its in-between
    assert np.diff([float(t.split(",")[0]) for t in times]) == pytest.approx(0.02, abs=1e-3)
    audio = subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "50.ts"), "-map", "0:a", "-f", "s16le",
                            "-ac", "1", "-ar", "16000", "-"], capture_output=True, check=True).stdout
    # the sound of every frame, no more (AAC adds its 1024-sample priming and pads its last frame)
    assert 0 <= len(audio) // 2 - len(times) * 320 <= 2048


def test_live_50_fps_keeps_a_20_ms_clock_and_an_interrupt_mutes_both_frames_of_a_pair(fast_cache, media):
    """The live engine at 50 frames/s, driven directly: every frame the sinks get is on the 20 ms grid, sent about
    20 ms after the one before, with exactly its share of the input audio; events come once per 25 fps frame; after
    an interrupt, both the frame and its in-between frame show the still cached picture with silence."""
    import threading
    import time

    from audio.decode import load_audio
    from conftest import CollectSink
    from engine.render.composite import Compositor
    from engine.render.loop import EngineConfig, LiveEngine
    from engine.render.presenter import Presenter, ping_pong
    from models.mouthwarp import MouthAnimator
    presenter = Presenter(fast_cache, 96, load_between=True)
    speech = load_audio(media["speech"])[: 16000 * 2]
    sink = CollectSink(live=True)
    engine = LiveEngine(presenter, MouthAnimator(96), Compositor(presenter), [sink], EngineConfig(fps=50))
    events: list = []
    engine.on_event = events.append
    engine.push(speech, "talk")
    engine.close("talk")
    engine.buffer.ended.set()
    runner = threading.Thread(target=engine.run)
    runner.start()
    time.sleep(1.2)
    assert engine.interrupt() == ["talk"]
    runner.join(timeout=30)
    n = len(sink.frames)
    assert n % 2 == 0 and sink.pts == [320 * k for k in range(n)]
    assert np.median(np.diff(sink.times)) == pytest.approx(0.02, abs=0.004)
    assert engine.stats.presented == n == 2 * engine.stats.frames
    cut = next(e["frame"] for e in events if e["type"] == "speech_interrupted")
    heard = np.concatenate(sink.audio)
    assert np.array_equal(heard[: cut * 640], speech[: cut * 640])  # every sample before the cut, untouched
    assert not heard[cut * 640: len(speech)].any()  # the dropped speech, silent in both halves of each frame
    for k in range(cut, cut + 6):  # the frame and its in-between frame: the still cached picture
        still = presenter.background(ping_pong(k, presenter.frames))
        assert np.array_equal(sink.frames[2 * k], still) and np.array_equal(sink.frames[2 * k + 1], still), k
    kinds = [e["type"] for e in events]
    assert kinds.count("speech_started") == 1 and kinds.count("speech_interrupted") == 1, kinds
