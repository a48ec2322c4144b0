"""The weight-free mouth animator through the real engine, and the one-command demo."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, CollectSink
from audio.decode import load_audio
from engine.render.composite import Compositor
from engine.render.loop import render_file
from engine.render.presenter import Presenter, ping_pong
from engine.render.timeline import FrameTimeline
from models.mouthwarp import MouthAnimator, audio_features
from models.mouthwarp.animator import paint_interior
from models.mouthwarp.geometry import MEDIAPIPE_478, mouth_opening, polygon_mask
from models.mouthwarp.library import LIBRARY_FILE, OPENING_BINS, library_for


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    """A presenter recorded talking, with known openings per frame (demo/talking.py says how it is made), through
    the real preprocessing."""
    from demo.talking import known_openings, make_talking_clip
    from preprocess.pipeline import PreprocessConfig, preprocess_video
    root = tmp_path_factory.mktemp("talking")
    openings = known_openings(125)
    preprocess_video(make_talking_clip(root / "talk.mp4", openings), root / "cache", PreprocessConfig(),
                     progress=False)
    return Presenter(root / "cache" / "talk"), openings


@pytest.fixture(scope="module", params=["drawn", "recorded"])
def animated(request, built, media, talking):
    """The speech rendered by the engine with the drawn mouth (a still presenter) or the recorded ones."""
    if request.param == "drawn":
        presenter = Presenter(built["cache"] / "clip30")  # the face is visible on every frame
        animator = MouthAnimator(presenter.face_size)
    else:
        presenter = talking[0]
        animator = MouthAnimator(presenter.face_size, library=library_for(presenter))
        assert animator.library is not None
    speech = load_audio(media["speech"])
    audio = np.concatenate([speech, np.zeros(16000, np.float32)])
    sink = CollectSink()
    stats = render_file(audio, presenter, animator, Compositor(presenter), [sink], progress=False)
    timeline = FrameTimeline()
    units = timeline.push(audio) + timeline.finish()
    return presenter, audio, sink.frames, units, stats, request.param


def mouth_change(presenter, frame, index) -> float:
    """How much the lower half of the face box differs from the cached frame (a pixel measure of mouth opening)."""
    x1, y1, x2, y2 = presenter.box[index]
    mid = (y1 + y2) // 2
    return float(np.abs(frame[mid:y2, x1:x2].astype(int) - presenter.background(index)[mid:y2, x1:x2].astype(int)).mean())


@pytest.mark.slow
def test_mouth_motion_follows_the_audio(animated):
    presenter, audio, frames, units, _, mouths = animated
    if mouths == "recorded":
        pytest.skip("the talking presenter's own loop moves its mouth: measured on the still presenter")
    change = np.array([mouth_change(presenter, frames[u.index], ping_pong(u.index, presenter.frames)) for u in units])
    energy = np.array([np.sqrt(np.mean(np.square(u.audio))) for u in units])
    correlation = np.corrcoef(change, energy)[0, 1]
    assert correlation >= 0.6, f"mouth motion vs audio energy correlation {correlation:.2f}"
    assert change.max() > 5  # the mouth really opens


@pytest.mark.slow
def test_silence_is_untouched_and_only_the_lower_face_changes(animated):
    presenter, audio, frames, units, stats, _ = animated
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


@pytest.mark.slow
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


def spearman(a, b) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).correlation)


def test_preprocess_keeps_a_library_of_the_presenters_mouths_that_follows_the_target(talking):
    presenter, known = talking
    assert (presenter.dir / LIBRARY_FILE).is_file()
    library = library_for(presenter)
    assert library.usable and 6 <= len(library.openings) <= 2 * OPENING_BINS
    measured = [mouth_opening(presenter.crop_landmarks(i), MEDIAPIPE_478) for i in range(presenter.frames)]
    assert spearman(measured, known[:presenter.frames]) >= 0.8  # the mesh sees the openings the clip was made with
    from demo.talking import known_openings
    targets = known_openings(80, seed=1)  # another utterance, frame after frame, switching cost included
    targets = targets[targets > 1e-3]  # the animator leaves a closed mouth alone: no choice is made there
    chosen = [library.openings[library.choose(target, 0.0)] for target in targets]
    assert spearman(targets, chosen) >= 0.8


def test_a_steady_target_keeps_its_entry(talking):
    library = library_for(talking[0])
    rng = np.random.default_rng(0)
    for level in (0.3, 0.6, 0.9):
        picks = {library.choose(level + rng.uniform(-0.02, 0.02), 0.0) for _ in range(12)}
        assert len(picks) == 1, f"flicker at {level}: entries {picks}"


def test_a_silent_loop_has_no_usable_library(built):
    presenter = Presenter(built["cache"] / "clip30")  # a still photo: its mouth never opens
    assert not library_for(presenter).usable
    assert MouthAnimator(presenter.face_size, library=library_for(presenter)).library is None


def test_the_drawn_mouth_keeps_its_lips_and_the_face_mesh_still_finds_them():
    """On the photo (a face 100 px wide), the widest drawn opening, measured by the face mesh on the output."""
    from demo.presenter import astronaut_bgr
    from demo.talking import photo_landmarks
    from preprocess.detect import make_detector
    photo, rest = astronaut_bgr(), photo_landmarks()
    out = MouthAnimator(96).animate(photo, rest, 1.0, 0.0)
    detector = make_detector("mediapipe")
    try:
        found = detector.detect(out)
    finally:
        detector.close()
    assert found is not None and found.landmarks is not None
    seen = found.landmarks

    def lower_lip(points):
        return float(np.linalg.norm(points[17] - points[14]))  # outer to inner edge, in the middle

    width = np.linalg.norm(rest[291] - rest[61])
    assert lower_lip(seen) >= 0.6 * lower_lip(rest)
    opened = mouth_opening(seen, MEDIAPIPE_478) - mouth_opening(rest, MEDIAPIPE_478)
    assert 0.1 <= opened <= 0.5, f"opening grew by {opened:.2f} of the mouth width"
    assert np.linalg.norm(seen[291] - seen[61]) >= 0.85 * width  # the corners stay where they were


def test_the_inside_is_shaded_from_the_lip_colour_with_teeth_not_a_flat_fill():
    face = np.full((96, 96, 3), 170, np.uint8)
    x = np.linspace(30, 66, 11)
    arch = np.sin(np.pi * np.linspace(0, 1, 11))
    upper = np.stack([x, 60 - 2 * arch], 1).astype(np.float32)
    lower = np.stack([x, 60 + 14 * arch], 1).astype(np.float32)
    lips = np.array([110, 100, 170], np.float32)  # BGR: pink-red lips
    out = paint_interior(face, upper, lower, lips, width=36.0, opening=1.0).astype(np.float32)
    inside = polygon_mask((96, 96), np.concatenate([upper, lower[::-1]])) > 0.99
    pixels = out[inside]
    assert pixels.std(axis=0).mean() > 8  # shaded, not one colour
    assert (pixels.mean(0) < lips).all() and pixels[:, 2].mean() > pixels[:, 0].mean()  # darker than lips, red
    band = np.zeros_like(inside)
    band[59:62, 42:55] = True  # just under the middle of the upper lip: the drawn teeth
    assert out[band & inside].mean() > pixels.mean() + 50
