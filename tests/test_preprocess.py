"""preprocess/ on real clips: 25 fps normalisation, boxes on the known path, flags, cache layout, crash safety."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import soundfile

from conftest import CLIP30_SECONDS, CLIP_SECONDS, COVER, ROOT
from demo.presenter import FacePath, make_presenter_clip
from core.scratch import HOST
from preprocess import cache
from preprocess.detect import Face
from preprocess.geometry import FFHQ_TEMPLATE_512, apply_affine
from preprocess.pipeline import PreprocessConfig, run_batch
from preprocess.smooth import smooth_stream

PATH = FacePath()


def iou(a, b) -> float:
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_videos_come_out_at_25_fps_with_the_right_frame_count(built):
    for name, seconds, source_fps in (("clip25", CLIP_SECONDS, 25), ("clip30", CLIP30_SECONDS, 30)):
        manifest = cache.read_manifest(built["cache"] / name)
        assert manifest["fps"] == 25 and manifest["source_fps"] == pytest.approx(source_fps)
        assert manifest["frames"] == int(seconds * 25) == len(list((built["cache"] / name / "bg").glob("*.jpg")))
        assert manifest["format_version"] == cache.FORMAT_VERSION and len(manifest["source_sha256"]) == 64
        assert len(cache.read_face_det(built["cache"] / name)["has_face"]) == manifest["frames"]


def test_boxes_follow_the_known_face_path(built):
    for name in ("clip25", "clip30"):
        det = cache.read_face_det(built["cache"] / name)
        ious = [iou(det["face_box"][i], PATH.box_at(i / 25)) for i in np.flatnonzero(det["has_face"])]
        assert len(ious) > 50 and min(ious) >= 0.8, f"{name}: worst IoU {min(ious):.3f}"


def test_covered_frames_are_flagged_and_kept(built):
    det = cache.read_face_det(built["cache"] / "clip25")
    times = np.arange(len(det["has_face"])) / 25
    covered = (times >= COVER[0]) & (times < COVER[1])
    clear = (times < COVER[0] - 0.08) | (times >= COVER[1] + 0.08)  # the tracker may need a frame to re-acquire
    assert not det["has_face"][covered].any()
    assert det["has_face"][clear].all()
    assert np.isnan(det["landmarks"][covered]).all()
    # every frame keeps its background; face crops exist exactly for frames with a face
    folder = built["cache"] / "clip25"
    assert len(list((folder / "bg").glob("*.jpg"))) == len(times)
    with_crops = {int(p.stem) for p in (folder / "body_face").glob("*.jpg")}
    assert with_crops == set(np.flatnonzero(det["has_face"]).tolist())
    assert built["results"]["clip25"].faces == len(with_crops)


def test_heads_are_upright_and_invert_back_to_the_frame(built):
    folder = built["cache"] / "clip25"
    det = cache.read_face_det(folder)
    for i in np.flatnonzero(det["has_face"]):
        in_head = apply_affine(det["head_affine"][i], det["points5"][i])
        eye_dx, eye_dy = in_head[1] - in_head[0]
        assert abs(np.degrees(np.arctan2(eye_dy, eye_dx))) < 2.0  # the source tilts up to 6 degrees
        assert np.abs(in_head - FFHQ_TEMPLATE_512).max() < 20
        back = apply_affine(det["head_affine_inv"][i], in_head)
        assert np.abs(back - det["points5"][i]).max() < 1e-2
    i = int(np.flatnonzero(det["has_face"])[0])
    assert cv2.imread(str(folder / "heads" / cache.frame_name(i, "heads"))).shape == (512, 512, 3)
    assert cv2.imread(str(folder / "body_face" / cache.frame_name(i, "body_face"))).shape == (96, 96, 3)
    assert not (folder / "head_face").exists()  # nothing read it: no longer written
    x1, y1, x2, y2 = det["head_box"][i]
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512


def test_body_face_is_the_padded_box_of_the_frame(built):
    folder = built["cache"] / "clip25"
    det = cache.read_face_det(folder)
    i = int(np.flatnonzero(det["has_face"])[10])
    x1, y1, x2, y2 = det["box"][i]
    fx1, fy1, fx2, fy2 = det["face_box"][i].astype(int)
    assert (x1, y1, x2, y2) == (fx1, fy1, fx2, fy2 + 10)  # default pads 0 10 0 0
    frame = cv2.imread(str(folder / "bg" / cache.frame_name(i, "bg")))
    expected = cv2.resize(frame[y1:y2, x1:x2], (96, 96)).astype(float)
    crop = cv2.imread(str(folder / "body_face" / cache.frame_name(i, "body_face"))).astype(float)
    assert np.abs(crop - expected).mean() < 3  # same pixels, up to JPEG


def test_audio_is_16k_mono_and_absent_without_a_track(built):
    info = soundfile.info(str(built["cache"] / "clip25" / "audio.wav"))
    assert info.samplerate == 16000 and info.channels == 1
    assert info.duration == pytest.approx(CLIP_SECONDS, abs=0.1)
    wav, _ = soundfile.read(str(built["cache"] / "clip25" / "audio.wav"))
    assert np.abs(wav).max() > 0.05  # the speech is there
    assert not (built["cache"] / "clip30" / "audio.wav").exists()
    assert cache.read_manifest(built["cache"] / "clip30")["has_audio"] is False


def test_training_export_has_the_lrs2_layout(built):
    train = built["train"]
    clip = train / "clip25"
    crops = sorted(clip.glob("*.jpg"))
    det = cache.read_face_det(built["cache"] / "clip25")
    assert [int(p.stem) for p in crops] == np.flatnonzero(det["has_face"]).tolist()
    assert cv2.imread(str(crops[0])).shape == (96, 96, 3)
    assert (clip / "audio.wav").is_file()
    # clip30 has no audio, so it cannot be trained on and is not listed
    assert (train / "train.txt").read_text().split() == ["clip25"]
    assert (train / "val.txt").read_text().split() == ["clip25"]
    assert not list(train.glob(".*partial"))


def test_rerun_skips_finished_caches_and_rebuilds_changed_settings(built, media, cache288, tmp_path):
    again = run_batch([media["clip30"]], built["cache"], built["cfg"], progress=False)
    assert again[0].status == "skipped" and again[0].frames == 75
    built288, root288 = cache288
    assert built288.status == "done" and built288.frames == 75
    assert cv2.imread(str(next((root288 / "clip30" / "body_face").glob("*.jpg")))).shape == (288, 288, 3)
    assert run_batch([media["clip30"]], root288, PreprocessConfig(face_size=288), progress=False)[0].status == "skipped"
    shutil.copytree(root288 / "clip30", tmp_path / "clip30")  # that 288 px cache, asked for at 96 px: rebuilt
    rebuilt = run_batch([media["clip30"]], tmp_path, PreprocessConfig(), progress=False)
    assert rebuilt[0].status == "done"
    assert cv2.imread(str(next((tmp_path / "clip30" / "body_face").glob("*.jpg")))).shape == (96, 96, 3)
    forced = run_batch([media["clip30"]], tmp_path, PreprocessConfig(force=True), progress=False)
    assert forced[0].status == "done"


def test_bad_inputs_fail_alone_with_clear_messages(media, tmp_path, capsys):
    from preprocess.__main__ import main

    code = main([str(media["corrupt"]), str(media["empty"]), str(media["noface"]), str(media["clip30"]),
                 "--out", str(tmp_path / "cache"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith("cache:")}
    assert "failed" in rows["corrupt"] and "not a readable video" in rows["corrupt"]
    assert "failed" in rows["empty"] and "empty" in rows["empty"]
    assert "failed" in rows["noface"] and "no face found" in rows["noface"]
    assert "done" in rows["clip30"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["clip30"]  # nothing half-written


def test_a_truncated_video_fails_unless_allowed(media, tmp_path):
    whole = tmp_path / "whole.mp4"  # index first, so a cut file still opens and declares all its frames
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(media["clip30"]), "-c", "copy", "-movflags", "+faststart",
                    str(whole)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    failed, = run_batch([cut], tmp_path / "cache", PreprocessConfig(), progress=False)
    assert failed.status == "failed" and "frames its container declares" in failed.message
    assert "--allow_truncated" in failed.message and not (tmp_path / "cache" / "cut").exists()
    kept, = run_batch([cut], tmp_path / "cache", PreprocessConfig(allow_truncated=True), progress=False)
    assert kept.status == "done" and 0 < kept.frames < 0.95 * CLIP30_SECONDS * 25


def test_sfd_without_weights_says_what_is_missing(media, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run([sys.executable, "-m", "preprocess", str(media["clip30"]), "--out", str(tmp_path / "c"),
                           "--detector", "sfd", "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "s3fd-619a316812.pth" in errors[0] and "2DFAN4" in errors[0]
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "s3fd-619a316812.pth").exists()  # nothing fetched


@pytest.mark.slow
def test_killed_run_resumes_to_a_correct_cache(media, tmp_path):
    long_clip = make_presenter_clip(tmp_path / "long.mp4", 4.0, 25)
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "preprocess", str(media["clip30"]), str(long_clip), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial_bg = out / f".long.swl-{HOST}-{proc.pid}.partial" / "bg"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(partial_bg.glob("*.jpg"))) < 20:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert cache.read_manifest(out / "clip30") is not None  # the first video was complete
    assert not (out / "long").exists()  # the unfinished one never appears as a cache

    again = run_batch([media["clip30"], long_clip], out, PreprocessConfig(), progress=False)
    assert [r.status for r in again] == ["skipped", "done"]
    manifest = cache.read_manifest(out / "long")
    assert manifest["frames"] == 100 == len(list((out / "long" / "bg").glob("*.jpg")))
    assert json.loads((out / "long" / "manifest.json").read_text())["faces"] == 100
    assert sorted(p.name for p in out.iterdir()) == ["clip30", "long"]  # the stale partial folder is gone


def _face(x: float) -> Face:
    return Face(np.array([x, 0, x + 10, 10], np.float32), np.full((5, 2), x, np.float32), np.full((3, 2), x, np.float32))


def test_smoothing_averages_within_runs_and_never_across_gaps():
    rng = np.random.default_rng(1)
    xs = 100 + rng.normal(0, 3, 30)
    faces = [_face(x) for x in xs[:15]] + [None] * 3 + [_face(x + 200) for x in xs[18:]]
    out = list(smooth_stream(enumerate(faces), radius=2))
    assert [i for i, _ in out] == list(range(30))
    smoothed = np.array([f.box[0] if f is not None else np.nan for _, f in out])
    assert np.all(np.isnan(smoothed[15:18]))
    assert np.nanstd(np.diff(smoothed[2:13])) < np.std(np.diff(xs[2:13]))  # jitter goes down
    assert smoothed[18] > 250 and smoothed[14] < 120  # no pull across the gap
    assert smoothed[5] == pytest.approx(np.mean(xs[3:8]), abs=1e-4)
    assert [f is None for _, f in smooth_stream(enumerate(faces), radius=0)] == [f is None for f in faces]


def test_small_faces_are_found_from_the_first_frame(tmp_path):
    """A face about a tenth of the frame wide (a presenter filmed at 720p) must be found at once, not after a second."""
    path = FacePath(width=1280, height=720, scale=1.4)
    clip = make_presenter_clip(tmp_path / "small.mp4", 1.0, 25, path)
    run_batch([clip], tmp_path / "cache", PreprocessConfig(), progress=False)
    det = cache.read_face_det(tmp_path / "cache" / "small")
    assert det["has_face"].all()
    assert min(iou(det["face_box"][i], path.box_at(i / 25)) for i in range(25)) >= 0.8


def test_a_face_leaving_the_frame_is_flagged_not_fatal(tmp_path):
    path = FacePath(sway=420, tilt=0, zoom=0)  # the face swings fully out of the 640 px frame and back
    clip = make_presenter_clip(tmp_path / "exit.mp4", 4.0, 25, path)
    result = run_batch([clip], tmp_path / "cache", PreprocessConfig(), progress=False)[0]
    assert result.status == "done"
    det = cache.read_face_det(tmp_path / "cache" / "exit")
    outside = [i for i in range(100) if path.box_at(i / 25)[0] > 640 or path.box_at(i / 25)[2] < 0]
    assert outside and not det["has_face"][outside].any()
    assert det["has_face"].sum() > 20
    boxes = det["box"][det["has_face"]]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 640).all() and (boxes[:, 2] - boxes[:, 0] >= 2).all()


def test_padded_box_clips_to_the_frame_and_gives_up_outside_it():
    from preprocess.geometry import padded_box
    assert padded_box(np.array([100, 50, 200, 150], np.float32), (0, 10, 0, 0), 640, 360).tolist() == [100, 50, 200, 160]
    assert padded_box(np.array([600, 300, 700, 400], np.float32), (0, 10, 0, 0), 640, 360).tolist() == [600, 300, 640, 360]
    assert padded_box(np.array([639.5, 10, 740, 110], np.float32), (0, 10, 0, 0), 640, 360) is None
