"""ARKit blendshape weights of the presenter's mouth, measured on the real landmarks of the preprocessed clip (and
those landmarks opened by the mouth animator), and the Live Link Face CSV they are written to."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from engine.render.presenter import Presenter
from models.mouthwarp.animator import MAX_GAP, opened_lips
from models.mouthwarp.blendshapes import (ARKIT_NAMES, LIVE_LINK_COLUMNS, mouth_weights, rest_mouth,
                                          write_live_link_csv)
from models.mouthwarp.library import every_frames_landmarks
from models.mouthwarp.geometry import MEDIAPIPE_478, mouth_opening, mouth_width

MOUTH = tuple(name for name in ARKIT_NAMES if name.startswith(("jaw", "mouth")))
SETTLE = 5  # the landmarker's first frames after a face appears are its warm-up: their mouth is about 2 px off


@pytest.fixture(scope="module")
def clip(built):
    """Every frame's landmarks (NaN where no face), the resting mouth, and frames the landmarker has tracked for a
    while (the clip is a still photo moved around: its mouth never moves)."""
    presenter = Presenter(built["cache"] / "clip25", 96)
    landmarks = every_frames_landmarks(presenter)
    has = presenter.has_face
    steady = [i for i in range(SETTLE, presenter.frames) if has[i - SETTLE:i + 1].all()]
    assert len(steady) >= 40
    return landmarks, rest_mouth(landmarks), steady


def opened(points: np.ndarray, gap: float, rounding: float = 0.0) -> np.ndarray:
    """The landmarks opened as draw_open_mouth opens them: the lips `gap` mouth widths apart in the middle (rounded
    lips a little less), the chin following."""
    peak_gap = gap * mouth_width(points, MEDIAPIPE_478) * (1 - 0.3 * max(rounding, 0.0))
    return opened_lips(points, MEDIAPIPE_478, peak_gap, rounding)[0]


def test_a_resting_mouth_weighs_nothing(clip):
    landmarks, rest, steady = clip
    weights = mouth_weights(rest, rest)
    assert tuple(weights) == ARKIT_NAMES and len(ARKIT_NAMES) == 52 == len(set(ARKIT_NAMES))
    assert max(weights.values()) <= 0.01
    for i in steady:  # head motion (sway, bob, zoom, tilt) and landmark jitter do not count
        weights = mouth_weights(landmarks[i], rest)
        assert all(0.0 <= w <= 1.0 for w in weights.values())
        assert weights["jawOpen"] <= 0.05 and max(weights[name] for name in MOUTH) <= 0.1, (i, weights)
    no_face = landmarks[~np.isfinite(landmarks).all(axis=(1, 2))][0]  # the card covers the face
    assert mouth_weights(no_face, rest) == dict.fromkeys(ARKIT_NAMES, 0.0)


def test_jaw_open_follows_the_opening(clip):
    landmarks, rest, steady = clip
    points = landmarks[steady[len(steady) // 2]]
    openings = np.linspace(0, 1, 11)
    moved = [opened(points, MAX_GAP * opening) for opening in openings]
    weights = [mouth_weights(m, rest) for m in moved]
    jaw = np.array([w["jawOpen"] for w in weights])
    assert np.all(np.diff(jaw) > 0) and jaw[0] <= 0.05
    assert np.corrcoef(jaw, [mouth_opening(m, MEDIAPIPE_478) for m in moved])[0, 1] >= 0.9
    assert max(w["mouthClose"] for w in weights) <= 0.05  # the lips part with the jaw
    assert all(0.0 <= v <= 1.0 for w in weights for v in w.values())
    wide = mouth_weights(opened(points, 0.55), rest)  # a wide-open speaking mouth
    assert 0.6 <= wide["jawOpen"] <= 0.9


def test_a_jaw_dropped_behind_closed_lips_is_mouth_close(clip):
    _, rest, _ = clip
    jaw_drop = 0.25 * mouth_width(rest, MEDIAPIPE_478)
    weights = mouth_weights(opened_lips(rest, MEDIAPIPE_478, 0.0, 0.0, jaw_drop)[0], rest)
    assert weights["jawOpen"] >= 0.4 and weights["mouthClose"] >= weights["jawOpen"] - 0.05


def test_rounded_lips_pucker_and_funnel_spread_ones_stretch(clip):
    landmarks, rest, steady = clip
    points = landmarks[steady[0]]
    for opening in (0.0, 0.3, 0.7):
        rounded = mouth_weights(opened(points, MAX_GAP * opening, 1.0), rest)
        spread = mouth_weights(opened(points, MAX_GAP * opening, -1.0), rest)
        assert rounded["mouthPucker"] + rounded["mouthFunnel"] >= spread["mouthPucker"] + spread["mouthFunnel"] + 0.3
        for side in ("Left", "Right"):
            assert spread["mouthStretch" + side] >= rounded["mouthStretch" + side] + 0.3
    assert mouth_weights(opened(points, 0.0, 1.0), rest)["mouthPucker"] >= 0.3  # closed: pucker, not funnel
    assert mouth_weights(opened(points, MAX_GAP, 1.0), rest)["mouthFunnel"] >= 0.3


def test_lips_alone(clip):
    """Lips moved without the jaw: their own shapes, on the face's own sides (the image's right is the face's
    left)."""
    _, rest, _ = clip
    width, layout = mouth_width(rest, MEDIAPIPE_478), MEDIAPIPE_478

    def moved(indices, by) -> dict[str, float]:
        points = rest.copy()
        points[list(indices)] += by
        return mouth_weights(points, rest)

    smile = moved([layout.corners[1]], (0.0, -0.1 * width))
    assert smile["mouthSmileLeft"] >= 0.5 and smile["mouthSmileRight"] == 0.0
    assert moved(layout.lips, (0.1 * width, 0.0))["mouthLeft"] >= 0.5
    lower = moved(layout.lower_outer[1:-1] + layout.lower_inner[1:-1], (0.0, 0.1 * width))
    assert min(lower["mouthLowerDownLeft"], lower["mouthLowerDownRight"]) >= 0.5
    upper = moved(layout.upper_outer[1:-1] + layout.upper_inner[1:-1], (0.0, -0.1 * width))
    assert min(upper["mouthUpperUpLeft"], upper["mouthUpperUpRight"]) >= 0.5
    pressed = rest.copy()
    for outer, inner in ((layout.upper_outer[1:-1], layout.upper_inner[1:-1]),
                         (layout.lower_outer[1:-1], layout.lower_inner[1:-1])):
        pressed[list(outer)] = (rest[list(outer)] + rest[list(inner)]) / 2  # both lips half as thick
    press = mouth_weights(pressed, rest)
    assert min(press["mouthPressLeft"], press["mouthPressRight"]) >= 0.8 and press["jawOpen"] <= 0.05


def test_head_motion_does_not_count(clip):
    landmarks, rest, steady = clip
    moved = opened(landmarks[steady[-1]], 0.3, 0.5)
    angle, scale, shift = np.radians(4.0), 1.08, np.array([3.0, -2.0])
    turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([48.0, 48.0])
    other = ((moved - centre) @ turn.T + centre + shift).astype(np.float32)
    before, after = mouth_weights(moved, rest), mouth_weights(other, rest)
    assert max(abs(before[name] - after[name]) for name in ARKIT_NAMES) <= 0.02
    assert before["jawOpen"] >= 0.2


def test_rest_mouth_says_what_is_wrong():
    with pytest.raises(ValueError, match="finite"):
        rest_mouth(np.full((3, 478, 2), np.nan))
    with pytest.raises(ValueError, match="478"):
        rest_mouth(np.zeros((3, 100, 2)))


def test_live_link_csv(clip, tmp_path):
    landmarks, rest, steady = clip
    rows = [mouth_weights(opened(landmarks[i], MAX_GAP * (k % 10) / 9), rest) for k, i in enumerate(steady[:30])]
    rows[3] = {**rows[3], "jawLeft": 0.25, "jawRight": 0.75, "mouthLeft": 0.125, "mouthRight": 0.875}
    path = write_live_link_csv(tmp_path / "take.csv", rows)
    with open(path, newline="") as file:
        header = next(csv.reader(file))
        file.seek(0)
        table = list(csv.DictReader(file))
    assert tuple(header) == LIVE_LINK_COLUMNS and len(header) == 63 and len(table) == len(rows)
    assert [table[i]["Timecode"] for i in (0, 1, 25)] == ["00:00:00:00.000", "00:00:00:01.000", "00:00:01:00.000"]
    assert {row["BlendShapeCount"] for row in table} == {"61"}
    assert np.allclose([float(row["JawOpen"]) for row in table], [row["jawOpen"] for row in rows], atol=1e-9)
    assert [float(table[3][name]) for name in ("JawLeft", "JawRight", "MouthLeft", "MouthRight")] == [
        0.25, 0.75, 0.125, 0.875]
    assert all(float(row[name]) == 0.0 for row in table for name in LIVE_LINK_COLUMNS[54:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.csv"]


def test_a_failed_csv_leaves_nothing(clip, tmp_path):
    _, rest, _ = clip

    def rows():
        yield mouth_weights(rest, rest)
        raise RuntimeError("the renderer died")

    with pytest.raises(RuntimeError):
        write_live_link_csv(tmp_path / "take.csv", rows())
    with pytest.raises(ValueError, match="jawopen"):
        write_live_link_csv(tmp_path / "take.csv", [{"jawopen": 0.5}])
    assert list(tmp_path.iterdir()) == []


def test_a_render_writes_weights_that_follow_the_mouth_it_shows(built, media, tmp_path):
    """stream_out.py with --blendshapes_csv beside an mp4: one row per video frame, the 52 ARKit columns, JawOpen
    following the mouth opening that a face mesh measures on the rendered frames (r >= 0.7 while speech plays) and
    near 0 in silence; --blendshapes_only (no lip model, no video) gives the same weights."""
    import subprocess

    import soundfile

    from audio.decode import load_audio
    from preprocess.detect import make_detector
    from stream_out import main as stream_out
    cache, mp4, csv_path = built["cache"] / "clip30", tmp_path / "x.mp4", tmp_path / "x.csv"
    speech = load_audio(media["speech"])[:16000 * 3]
    wav = tmp_path / "talk.wav"
    soundfile.write(str(wav), np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(16000, np.float32)]),
                    16000)
    common = ["--data_dir", str(cache), "--audio_files", str(wav)]
    assert stream_out([*common, "--outfile", str(mp4), "--blendshapes_csv", str(csv_path)]) == 0
    assert stream_out([*common, "--blendshapes_only", "--blendshapes_csv", str(tmp_path / "only.csv")]) == 0
    rows = list(csv.reader(open(csv_path)))
    assert tuple(rows[0]) == LIVE_LINK_COLUMNS
    assert rows[1:] == list(csv.reader(open(tmp_path / "only.csv")))[1:]
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp4), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                         capture_output=True, check=True).stdout
    presenter = Presenter(cache, 96)
    frames = np.frombuffer(raw, np.uint8).reshape(-1, presenter.height, presenter.width, 3)
    assert len(frames) == len(rows) - 1
    jaw = np.array([float(r[LIVE_LINK_COLUMNS.index("JawOpen")]) for r in rows[1:]])
    detector = make_detector("mediapipe")
    try:
        faces = [detector.detect(frame) for frame in frames]
    finally:
        detector.close()
    seen = np.array([mouth_opening(f.landmarks, MEDIAPIPE_478) if f is not None else np.nan for f in faces])
    speaking, silent = np.arange(25, 25 + 75), np.r_[np.arange(0, 20), np.arange(len(jaw) - 15, len(jaw))]
    ok = speaking[np.isfinite(seen[speaking])]
    assert len(ok) >= 60 and np.corrcoef(jaw[ok], seen[ok])[0, 1] >= 0.7
    assert jaw[silent].max() <= 0.05
    values = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert values.min() >= 0 and values.max() <= 1


def test_weights_read_on_the_generated_pixels_follow_the_mouth_drawn(built, media):
    """--blendshapes_from pixels (the default with a Wav2Lip checkpoint): the face mesh reads every generated crop.
    On the mouth animator's crops, whose shape is known, the jawOpen read on the pixels follows the shape drawn
    (r >= 0.7), and auto picks pixels for any lip model but the animator."""
    import argparse
    import copy

    from audio.decode import load_audio
    from engine.assemble import blendshape_meter
    from engine.render.blendshapes import BlendshapeMeter
    from engine.render.loop import lip_sync
    from engine.render.model_worker import SharedModel
    from engine.render.timeline import frame_units
    from models.mouthwarp import MouthAnimator
    from models.mouthwarp.library import library_for
    from preprocess.detect import CropMesh
    presenter = Presenter(built["cache"] / "clip25", 96)
    animator = MouthAnimator(96, library=library_for(presenter))
    drawn, read = BlendshapeMeter(presenter, animator), BlendshapeMeter(presenter, read_pixels=CropMesh())
    speech = load_audio(media["speech"])[:16000 * 3]
    pairs, silent = [], []
    for mouths in lip_sync(frame_units(np.concatenate([np.zeros(8000, np.float32), speech])), presenter, animator,
                           8, meter=read):
        if mouths.faces is not None:
            pairs += [(drawn.driven(u.window, i)["jawOpen"], u.blendshapes)
                      for u, i in zip(mouths.units, mouths.indices)]
        elif mouths.units[0].index < 10:  # the half second of silence first: the cached mouth, read the same way
            silent.append(mouths.units[0].blendshapes["jawOpen"])
    shape = np.array([p[0] for p in pairs])
    seen = np.array([p[1]["jawOpen"] for p in pairs])
    assert len(pairs) >= 40 and read.unread <= 0.1 * len(pairs)
    assert np.corrcoef(shape, seen)[0, 1] >= 0.7 and seen.max() >= 0.2
    assert all(0.0 <= v <= 1.0 for _, w in pairs for v in w.values())
    assert len(silent) >= 5 and max(silent) <= 0.05

    other = copy.copy(presenter)  # a cache from another detector (sfd: 68 points): reading pixels needs none of them
    other.landmarks = np.zeros((presenter.frames, 68, 2), np.float32)
    shown = [i for i in range(presenter.frames) if presenter.has_face[i]][:5]
    again = BlendshapeMeter(other, read_pixels=CropMesh())
    assert [again.still(i)["jawOpen"] for i in shown] == pytest.approx([read.still(i)["jawOpen"] for i in shown],
                                                                       abs=0.02)
    read.close()

    flags = argparse.Namespace(blendshapes=True, blendshapes_csv=None, blendshapes_from="auto")
    assert isinstance(blendshape_meter(flags, presenter, object()).read_pixels, CropMesh)  # any other lip model
    assert blendshape_meter(flags, presenter, animator).read_pixels is None
    assert blendshape_meter(flags, presenter, SharedModel(None, animator)).read_pixels is None  # a session's
    assert blendshape_meter(flags, presenter, None).read_pixels is None  # --blendshapes_only: no pixels
