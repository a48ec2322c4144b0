"""models/syncnet_v2 and audio/mfcc: syncnet_python's SyncNet loads from its released layout and scores as the
reference's SyncNetInstance.evaluate() does (joonson/syncnet_python), with python_speech_features' MFCCs."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from scipy import signal
from scipy.io import wavfile
import cv2

from audio.mfcc import mfcc
from conftest import ROOT, require
from demo.presenter import astronaut_bgr
from models.checkpoint import CheckpointError
from models.evaluate import PaperJudge, TrackError, paper_crops, read_face_track, score_track
from models.syncnet_v2 import (S, audio_windows, calc_pdist, embed, evaluate, lip_windows, load_syncnet_v2, score,
                               window_count)

KEY_TABLE = Path(__file__).resolve().parent / "data" / "keys" / "syncnet_v2.txt"
# From SyncNetModel.py's layers (weights + biases, BatchNorm weight + bias):
# netcnnaud: conv 1->64 3x3 640 + 128, 64->192 3x3 110,784 + 384, 192->384 3x3 663,936 + 768, 384->256 3x3 884,992
#   + 512, 256->256 3x3 590,080 + 512, 256->512 5x4 2,621,952 + 1,024 = 4,875,712;
# netfcaud and netfclip each: 512->512 262,656 + BatchNorm1d 1,024 + 512->1024 525,312 = 788,992;
# netcnnlip: conv3d 3->96 5x7x7 70,656 + 192, 96->256 1x5x5 614,656 + 512, three 256->256 1x3x3 3 x (590,080 + 512),
#   256->512 1x6x6 4,719,104 + 1,024 = 7,177,920. In float32 that is the 52 MiB the released file weighs.
PARAMETERS = 13_631_616
COUNTERS = 14  # BatchNorm num_batches_tracked buffers: 6 in netcnnaud, 6 in netcnnlip, 1 in each head


def random_s(seed: int = 0) -> S:
    """Random weights, the BatchNorm statistics and affine moved off their initial values so that their use is
    tested, scaled so that features of 0-255 pixels stay moderate."""
    torch.manual_seed(seed)
    model = S().eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean"):
                tensor.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("weight") and tensor.ndim == 1:
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("bias") and tensor.ndim == 1:
                tensor.uniform_(-0.1, 0.1)
    return model


def released_state(model: S) -> dict:
    """The released layout: a bare state dict without BatchNorm's num_batches_tracked (the file predates it)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, S]:
    """Saved in torch's legacy (pre-1.6, not zip) format, as a file of its age is."""
    model = random_s()
    path = tmp_path_factory.mktemp("syncnet_v2") / "syncnet_v2.model"
    torch.save(released_state(model), path, _use_new_zipfile_serialization=False)
    return path, model


def reference_calc_pdist(feat1: torch.Tensor, feat2: torch.Tensor, vshift: int) -> list[torch.Tensor]:
    win_size = vshift * 2 + 1
    feat2p = torch.nn.functional.pad(feat2, (0, 0, vshift, vshift))
    return [torch.nn.functional.pairwise_distance(feat1[[i], :].repeat(win_size, 1), feat2p[i:i + win_size, :])
            for i in range(len(feat1))]


def reference_evaluate(model: S, images: list[np.ndarray], audio: np.ndarray, vshift: int = 15,
                       batch_size: int = 20) -> dict:
    """SyncNetInstance.evaluate() from the loaded frames and samples on, step by step (MFCCs from audio.mfcc, which
    test_mfcc_equals_python_speech_features holds equal to python_speech_features.mfcc)."""
    model.eval()
    im = np.stack(images, axis=3)
    im = np.expand_dims(im, axis=0)
    im = np.transpose(im, (0, 3, 4, 1, 2))
    imtv = torch.from_numpy(im.astype(float)).float()
    coefficients = np.stack([np.array(i) for i in zip(*mfcc(audio, 16000))])
    cc = np.expand_dims(np.expand_dims(coefficients, axis=0), axis=0)
    cct = torch.from_numpy(cc.astype(float)).float()
    min_length = min(len(images), math.floor(len(audio) / 640))
    lastframe = min_length - 5
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, lastframe, batch_size):
            im_batch = [imtv[:, :, vframe:vframe + 5, :, :] for vframe in range(i, min(lastframe, i + batch_size))]
            im_feat.append(model.forward_lip(torch.cat(im_batch, 0)).data.cpu())
            cc_batch = [cct[:, :, :, vframe * 4:vframe * 4 + 20] for vframe in range(i, min(lastframe, i + batch_size))]
            cc_feat.append(model.forward_aud(torch.cat(cc_batch, 0)).data.cpu())
    im_feat, cc_feat = torch.cat(im_feat, 0), torch.cat(cc_feat, 0)
    dists = reference_calc_pdist(im_feat, cc_feat, vshift=vshift)
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    offset = vshift - minidx
    conf = torch.median(mdist) - minval
    fdist = np.stack([dist[minidx].numpy() for dist in dists])
    fconf = torch.median(mdist).numpy() - fdist
    fconfm = signal.medfilt(fconf, kernel_size=9)
    return {"offset": int(offset), "min_dist": float(minval), "confidence": float(conf), "dists": mdist.numpy(),
            "framewise_confidence": fconfm, "per_frame": np.array([dist.numpy() for dist in dists]),
            "video_feats": im_feat.numpy(), "audio_feats": cc_feat.numpy()}


def face_crops(count: int) -> list[np.ndarray]:
    """224 x 224 BGR crops of the astronaut photo, the camera drifting a few pixels a frame."""
    photo = astronaut_bgr()
    return [np.ascontiguousarray(photo[30 + 3 * i:254 + 3 * i, 150 + (5 * i) % 17:374 + (5 * i) % 17])
            for i in range(count)]


def voice(samples: int, seed: int = 0) -> np.ndarray:
    """int16 samples of a buzzy vowel whose loudness and pitch wander, plus a little noise."""
    t = np.arange(samples) / 16000
    rng = np.random.default_rng(seed)
    pitch = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 1.3 * t)) / 16000
    wave = sum(np.sin(k * pitch) / k for k in range(1, 12)) * (0.3 + 0.7 * np.abs(np.sin(2 * np.pi * 2.1 * t)))
    return np.clip(6000 * wave + 200 * rng.standard_normal(samples), -32768, 32767).astype(np.int16)


def test_key_table_and_parameter_count():
    with torch.device("meta"):
        model = S()
    table = [(key, [int(d) for d in shape.strip("[]").split(",") if d.strip()])
             for key, shape in (line.split(" ", 1) for line in KEY_TABLE.read_text().splitlines())]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == table
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    assert sum(k.endswith("num_batches_tracked") for k, _ in table) == COUNTERS


@pytest.mark.parametrize("counters", [False, True])
def test_released_file_loads_with_or_without_the_batchnorm_counters(released, tmp_path, counters):
    path, model = released
    if counters:
        path = tmp_path / "resaved.model"
        torch.save(model.state_dict(), path)
    loaded = load_syncnet_v2(path, device="cpu")
    assert not loaded.training
    for (name, ours), theirs in zip(loaded.state_dict().items(), model.state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_windows_have_the_shapes_and_order_forward_takes():
    frames = np.zeros((8, 224, 224, 3), np.uint8)
    frames[..., 0] = np.arange(8)[:, None, None]  # blue channel: the frame number
    windows = lip_windows(frames, 3)
    assert windows.shape == (3, 3, 5, 224, 224)
    assert windows[2, 0, :, 0, 0].tolist() == [2, 3, 4, 5, 6] and windows[:, 1:].max() == 0
    steps = np.arange(40 * 13, dtype=float).reshape(40, 13)
    audio = audio_windows(steps, 6)
    assert audio.shape == (6, 1, 13, 20) and audio.dtype == np.float32
    assert np.array_equal(audio[5, 0], steps[20:40].T)
    assert window_count(36, 33 * 640 + 639) == 28
    with pytest.raises(ValueError, match="needs at least 6 frames"):
        window_count(5, 10 * 640)
    with pytest.raises(ValueError, match="224, 224, 3"):
        lip_windows(np.zeros((8, 96, 96, 3), np.uint8), 3)


def test_score_equals_the_reference_evaluate(released):
    _, model = released
    images = face_crops(30)
    audio = voice(27 * 640 + 200)  # the audio is the shorter: 27 frames' worth, so 22 windows (batches of 20 and 2)
    expected = reference_evaluate(model, images, audio)
    count = window_count(len(images), len(audio))
    assert count == len(expected["video_feats"]) == 22
    video_feats = embed(model.forward_lip, lip_windows(images, count), torch.device("cpu"))
    audio_feats = embed(model.forward_aud, audio_windows(mfcc(audio), count), torch.device("cpu"))
    np.testing.assert_allclose(video_feats, expected["video_feats"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(audio_feats, expected["audio_feats"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(calc_pdist(video_feats, audio_feats), expected["per_frame"], rtol=1e-5, atol=1e-5)
    for result in (score(video_feats, audio_feats), evaluate(model, images, audio)):
        assert result.offset == expected["offset"]
        assert abs(result.min_dist - expected["min_dist"]) <= 1e-5 * max(1.0, expected["min_dist"])
        assert abs(result.confidence - expected["confidence"]) <= 1e-5 * max(1.0, expected["min_dist"])
        np.testing.assert_allclose(result.dists, expected["dists"], rtol=1e-5, atol=1e-5)
        assert result.dists.shape == (31,) and result.framewise_confidence.shape == (22,)
        np.testing.assert_allclose(result.framewise_confidence, expected["framewise_confidence"],
                                   rtol=1e-5, atol=1e-5 * max(1.0, expected["min_dist"]))


@pytest.mark.parametrize("delay", [-4, 0, 3])
def test_score_finds_a_known_offset(delay):
    """Video feature i close to audio feature i - delay (each frame's sound `delay` frames earlier in the audio
    track): the offset is `delay`, the minimum clearly below the other offsets' distances."""
    rng = np.random.default_rng(1)
    audio_feats = rng.standard_normal((60, 1024)).astype(np.float32)
    video_feats = np.roll(audio_feats, delay, axis=0) + 0.01 * rng.standard_normal((60, 1024)).astype(np.float32)
    reference = reference_calc_pdist(torch.from_numpy(video_feats), torch.from_numpy(audio_feats), 15)
    np.testing.assert_allclose(calc_pdist(video_feats, audio_feats), torch.stack(reference).numpy(), rtol=1e-6)
    result = score(video_feats, audio_feats)
    assert result.offset == delay
    assert result.confidence > 10 and result.min_dist < result.dists[15 - delay + 1]
    unrelated = score(rng.standard_normal((60, 1024)).astype(np.float32), audio_feats)
    assert unrelated.confidence < 0.1 * result.confidence  # no offset stands out


def test_mfcc_equals_python_speech_features():
    python_speech_features = require("python_speech_features")
    rng = np.random.default_rng(3)
    clips = [voice(n) for n in (1, 399, 400, 401, 560, 16_000, 48_123)]
    clips += [np.zeros(5000, np.int16), (rng.standard_normal(7000) * 30000).astype(np.int16)]
    for clip in clips:
        ours, theirs = mfcc(clip), python_speech_features.mfcc(clip, 16000)
        assert ours.shape == theirs.shape == (max(1, 1 + math.ceil((len(clip) - 400) / 160)), 13)
        assert np.abs(ours - theirs).max() <= 1e-5, len(clip)
    assert len(mfcc(voice(16_000 * 2))) == 199  # 100 a second: 4 per 25 fps frame


@pytest.mark.parametrize("case, says", [
    ("missing", "no such file"),
    ("random bytes", "corrupt"),
    ("wav2lip", "this is a Wav2Lip generator, not syncnet_python's S"),
    ("wav2lip syncnet", "this is Wav2Lip's SyncNet lip-sync expert (face_encoder/audio_encoder)"),
    ("one key removed", "missing: netfclip.3.bias"),
    ("one key added", "unexpected: netfclip.4.weight"),
    ("wrong shape", "wrong shape: netcnnlip.0.weight (96, 3, 3, 7, 7) (expected (96, 3, 5, 7, 7))"),
])
def test_wrong_files_say_what_they_are_in_one_line(released, tmp_path, case, says):
    path = tmp_path / "syncnet_v2.model"
    state = released_state(released[1])
    if case == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "wav2lip":
        torch.save({"state_dict": {"module.face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(16, 6, 7, 7)},
                    "global_step": 1}, path)
    elif case == "wav2lip syncnet":
        torch.save({"state_dict": {"module.face_encoder.0.conv_block.0.weight": torch.zeros(32, 15, 7, 7),
                                   "module.audio_encoder.0.conv_block.0.weight": torch.zeros(32, 1, 3, 3)}}, path)
    elif case == "one key removed":
        del state["netfclip.3.bias"]
        torch.save(state, path)
    elif case == "one key added":
        state["netfclip.4.weight"] = torch.zeros(3)
        torch.save(state, path)
    elif case == "wrong shape":
        state["netcnnlip.0.weight"] = torch.zeros(96, 3, 3, 7, 7)
        torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_syncnet_v2(path, "cpu")
    message = str(error.value)
    assert says in message and "download_model.sh" in message and "syncnet_v2.model" in message
    assert "\n" not in message


def face_track_video(path: Path, frames: list[np.ndarray], samples: Optional[np.ndarray]) -> Path:
    """An mp4 face track with sound (None: without), as published test sets ship them: H.264 frames, AAC audio."""
    height, width = frames[0].shape[:2]
    sound = []
    if samples is not None:
        wavfile.write(path.with_suffix(".wav"), 16000, samples)
        sound = ["-i", str(path.with_suffix(".wav")), "-c:a", "aac", "-shortest"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}",
                    "-r", "25", "-i", "-", *sound, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", str(path)],
                   input=np.stack(frames).tobytes(), check=True)
    return path


def reference_load(video: Path, work: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """SyncNetInstance.evaluate()'s "Convert files", "Load video" and "Load audio", step by step."""
    work.mkdir()
    subprocess.run(["ffmpeg", "-y", "-i", str(video), "-threads", "1", "-f", "image2", str(work / "%06d.jpg")],
                   check=True, capture_output=True)
    subprocess.run(["ffmpeg", "-y", "-i", str(video), "-async", "1", "-ac", "1", "-vn", "-acodec", "pcm_s16le",
                    "-ar", "16000", str(work / "audio.wav")], check=True, capture_output=True)
    images = [cv2.imread(str(name)) for name in sorted(work.glob("*.jpg"))]
    _, audio = wavfile.read(work / "audio.wav")
    return images, audio


@pytest.fixture(scope="module")
def track_video(tmp_path_factory) -> Path:
    """34 frames of a drifting 224 x 224 face with 1.3 s of voice: 28 windows (batches of 20 and 8)."""
    folder = tmp_path_factory.mktemp("track")
    return face_track_video(folder / "track.mp4", face_crops(34), voice(34 * 640))


@pytest.fixture(scope="module")
def track_reference(released, track_video, tmp_path_factory) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """The track as the reference loads it (frames, samples) and its reference scores."""
    images, audio = reference_load(track_video, tmp_path_factory.mktemp("reference") / "frames")
    return images, audio, reference_evaluate(released[1], images, audio)


def test_cropped_track_scores_equal_the_reference(released, track_video, track_reference, tmp_path):
    _, model = released
    images, audio, expected = track_reference
    track = read_face_track(track_video, tmp_path)
    assert np.array_equal(track.frames, np.stack(images)) and np.array_equal(track.samples, audio)
    result = score_track(PaperJudge(model), track)
    assert result.offset == expected["offset"]
    np.testing.assert_allclose([result.min_dist, result.confidence], [expected["min_dist"], expected["confidence"]],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.dists, expected["dists"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.framewise_confidence, expected["framewise_confidence"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_command_line_scores_a_filelist_with_mean_and_csv(released, track_video, track_reference, tmp_path):
    """`python -m models.evaluate --cropped --filelist`: the reference's lines per video, the mean, a CSV row per
    track, and a one-line reason for each video it could not score."""
    path = released[0]
    expected = track_reference[2]
    face_track_video(tmp_path / "small.mp4", [f[:96, :96].copy() for f in face_crops(10)], voice(6400))
    face_track_video(tmp_path / "short.mp4", face_crops(5), voice(5 * 640))  # a track too short for a window
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{track_video}\n# a comment\n\nsmall.mp4\nshort.mp4\nmissing.mp4\n")
    table = tmp_path / "scores.csv"
    result = subprocess.run([sys.executable, "-m", "models.evaluate", "--syncnet_v2", str(path), "--cropped",
                             "--filelist", str(listing), "--csv", str(table), "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{track_video} track 1 (frames 0-33)"
    assert lines[1:4] == [f"AV offset: \t{expected['offset']:d} ", f"Min dist: \t{expected['min_dist']:.3f}",
                          f"Confidence: \t{expected['confidence']:.3f}"]
    assert lines[4] == (f"Mean over 1 tracks of 1 videos (2 videos failed, 1 tracks failed): Min dist "
                        f"{expected['min_dist']:.3f}  Confidence {expected['confidence']:.3f}")
    assert "small.mp4: --cropped takes a 224 x 224 face track" in result.stderr and "96 x 96" in result.stderr
    assert "missing.mp4: no such file" in result.stderr and "short.mp4 track 1: SyncNet scoring needs" in result.stderr
    rows = list(csv.DictReader(table.open()))
    assert [r["video"] for r in rows] == [str(tmp_path / name) if name != "track" else str(track_video)
                                          for name in ("track", "short.mp4", "small.mp4", "missing.mp4")]
    assert rows[1]["frames"] == "5" and rows[1]["min_dist"] == "" and "needs at least 6 frames" in rows[1]["error"]
    assert rows[0]["frames"] == "34" and int(rows[0]["av_offset"]) == expected["offset"] and rows[0]["error"] == ""
    assert abs(float(rows[0]["min_dist"]) - expected["min_dist"]) <= 1e-5 * max(1.0, expected["min_dist"])
    assert abs(float(rows[0]["confidence"]) - expected["confidence"]) <= 1e-5 * max(1.0, expected["min_dist"])
    assert rows[2]["min_dist"] == "" and "224 x 224" in rows[2]["error"]


def test_paper_crops_follow_run_pipeline_geometry():
    """A box of 100 x 120 at (200, 100): half-size 60, so 1.8 x 60 = 108 of grey padding, rows from 60 above the
    centre to 108 below, columns 84 either side; a box at the corner takes in the grey."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(13)]
    crops = paper_crops(frames, np.array([[200, 100, 300, 220]] * 13))
    for frame, crop in zip(frames, crops):
        assert np.array_equal(crop, cv2.resize(frame[100:268, 166:334], (224, 224)))
    corner = paper_crops(frames, np.array([[0, 0, 100, 100]] * 13))[6]  # columns -20 .. 120 of rows 0 .. 140
    assert (corner[:, :30] == 110).all() and (corner[:, 40:] != 110).any(axis=2).mean() > 0.9
    with pytest.raises(ValueError, match="13 frames or more"):
        paper_crops(frames[:12], np.array([[200, 100, 300, 220]] * 12))


def test_a_cropped_video_without_sound_is_one_line(tmp_path):
    video = face_track_video(tmp_path / "silent.mp4", face_crops(8), None)
    (tmp_path / "work").mkdir()
    with pytest.raises(TrackError, match="silent.mp4: has no audio track to judge") as error:
        read_face_track(video, tmp_path / "work")
    assert "\n" not in str(error.value)


def test_a_preprocessed_video_is_one_track_per_run_of_frames_with_a_face(built):
    """clip25: a card hides the face from 2.0 s to 2.6 s, so two tracks, each with the sound under its frames;
    the paper judge gets run_pipeline.py's crops of the full frames, an expert its own crops."""
    from audio.decode import load_audio
    from preprocess import cache
    from tools.evaluate import cached_tracks, face_runs

    assert face_runs(np.array([1] * 13 + [0] + [1] * 12 + [0, 0] + [1] * 20, bool)) == [(0, 13), (28, 48)]
    folder = built["cache"] / "clip25"
    face_det = cache.read_face_det(folder)
    samples = np.round(load_audio(folder / cache.AUDIO) * 32768).astype(np.int16)
    tracks = list(cached_tracks(folder, paper=True))
    assert [t.first for t in tracks] == [start for start, _ in face_runs(face_det["has_face"])]
    assert len(tracks) == 2 and tracks[0].first == 0 and 50 <= tracks[1].first <= 66
    for track in tracks:
        frames = len(track.frames)
        assert track.frames.shape == (frames, 224, 224, 3) and face_det["has_face"][track.first:][:frames].all()
        assert np.array_equal(track.samples, samples[track.first * 640:(track.first + frames) * 640])
        bg = [cv2.imread(str(folder / "bg" / cache.frame_name(i, "bg"))) for i in range(track.first,
                                                                                         track.first + frames)]
        assert np.array_equal(track.frames, paper_crops(bg, face_det["face_box"][track.first:track.first + frames]))
    experts = list(cached_tracks(folder, paper=False))
    assert [t.frames.shape for t in experts] == [(len(t.frames), 96, 96, 3) for t in tracks]
