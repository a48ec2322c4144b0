"""The presenter without its background: preprocess --matte, and --background alpha | key colour on the output.

The presenter is the astronaut cut out along a known outline and drawn over the studio wall, so each frame's true
matte is known exactly (demo.presenter.person_matte)."""
from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from core.timebase import SAMPLE_RATE
from demo.presenter import FacePath, make_presenter_clip, person_matte
from engine.backdrop import Backdrop, keyed

SECONDS = 1.6
PATH = FacePath()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def cutout(media, tmp_path_factory):
    """A matted cache of the cut-out presenter (with the 50 fps in-betweens), and a 1 s piece of speech for it."""
    import soundfile

    from audio.decode import load_audio
    from preprocess.pipeline import PreprocessConfig, preprocess_video
    root = tmp_path_factory.mktemp("cutout")
    clip = make_presenter_clip(root / "cutout.mp4", SECONDS, 25, path=PATH, cutout=True)
    preprocess_video(clip, root / "cache", PreprocessConfig(matte=True, between_frames=True), progress=False)
    soundfile.write(str(root / "talk.wav"), load_audio(media["speech"])[: SAMPLE_RATE], SAMPLE_RATE)
    return {"cache": root / "cache" / "cutout", "talk": root / "talk.wav", "root": root}


def cache_matte(cache, k: int, folder: str = "matte") -> np.ndarray:
    return cv2.imread(str(cache / folder / f"{k:05d}.png"), cv2.IMREAD_GRAYSCALE)


def test_the_cached_matte_finds_the_presenter(cutout):
    frames = int(SECONDS * 25)
    scores = [iou(cache_matte(cutout["cache"], k) > 127, person_matte(PATH, k / 25) > 0.5) for k in range(frames)]
    assert min(scores) >= 0.9, scores
    between = [iou(cache_matte(cutout["cache"], k, "matte_mid") > 127, person_matte(PATH, k / 25 + 0.02) > 0.5)
               for k in range(0, frames - 1, 4)]  # the in-between frames' own mattes (preprocess --fps 50 --matte)
    assert min(between) >= 0.9, between
    # the rest of the cache is unchanged by the matte, and still serves a render without one
    assert len(list((cutout["cache"] / "bg").glob("*.jpg"))) == frames


def decoded_alpha(path, decoder: list[str], shape) -> np.ndarray:
    """Every frame's alpha plane as ffmpeg decodes the file, (N, H, W) uint8."""
    raw = subprocess.run(["ffmpeg", "-v", "error", *decoder, "-i", str(path), "-vf", "alphaextract", "-f", "rawvideo",
                          "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, *shape)


@pytest.mark.parametrize("suffix, decoder", [(".mov", []), (".webm", ["-c:v", "libvpx-vp9"])])
def test_alpha_files_carry_the_cached_matte(cutout, suffix, decoder):
    from stream_out import main as stream_out
    out = cutout["root"] / f"alpha{suffix}"
    assert stream_out(["--data_dir", str(cutout["cache"]), "--audio_files", str(cutout["talk"]), "--outfile",
                       str(out), "--background", "alpha"]) == 0
    alphas = decoded_alpha(out, decoder, (PATH.height, PATH.width))
    assert len(alphas) == 25
    for k in (0, 12, 24):  # the loop starts at cache frame 0 and plays forward
        error = np.abs(alphas[k].astype(int) - cache_matte(cutout["cache"], k))
        assert error.max() <= 2, (suffix, k, error.max())
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name",
                            "-of", "csv=p=0", str(out)], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(probe) == sorted(["prores,video", "pcm_s16le,audio"] if suffix == ".mov"
                                   else ["vp9,video", "opus,audio"])


def test_green_screen_keys_back_to_the_matte(cutout):
    from stream_out import main as stream_out
    out = cutout["root"] / "green.mp4"
    assert stream_out(["--data_dir", str(cutout["cache"]), "--audio_files", str(cutout["talk"]), "--outfile",
                       str(out), "--background", "green"]) == 0
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-vf",
                          "format=yuva420p,chromakey=0x00b140:0.12:0,alphaextract", "-f", "rawvideo", "-pix_fmt",
                          "gray", "-"], capture_output=True, check=True).stdout
    keyed_back = np.frombuffer(raw, np.uint8).reshape(-1, PATH.height, PATH.width)
    for k in (0, 12, 24):
        score = iou(keyed_back[k] > 127, person_matte(PATH, k / 25) > 0.5)
        assert score >= 0.85, (k, score)


def test_spill_is_taken_out_of_the_kept_edge_only():
    green = Backdrop.parse("green").colour
    frame = np.full((8, 8, 3), (60, 170, 80), np.uint8)  # a greenish presenter (say, lit by a green screen)
    matte = np.zeros((8, 8), np.uint8)
    matte[:, 3:] = 255
    matte[:, 3] = 160  # a soft edge column
    out = keyed(frame, matte, green).astype(int)
    assert (out[:, :3] == green).all()                       # outside: exactly the key colour
    edge = out[:, 3]
    assert (edge[:, 1] <= np.maximum(edge[:, 0], edge[:, 2]) + 1).all()  # no green tint left at the edge
    assert (out[:, -1] == frame[:, -1]).all()                # far inside: untouched


def test_background_choices_are_checked(cutout, built, tmp_path, capsys):
    from stream_out import main as stream_out
    assert Backdrop.parse("#FF0000").colour == (0, 0, 255)
    common = ["--data_dir", str(cutout["cache"]), "--audio_files", str(cutout["talk"])]
    with pytest.raises(SystemExit) as exit_info:
        stream_out([*common, "--background", "purple"])
    assert exit_info.value.code == 2
    for outfile, says in ((str(tmp_path / "x.mp4"), "H.264 carries no alpha"),
                          ("vcam", "a virtual camera carries no alpha")):
        assert stream_out([*common, "--outfile", outfile, "--background", "alpha"]) == 2
        assert says in capsys.readouterr().err
    no_matte = ["--data_dir", str(built["cache"] / "clip25"), "--audio_files", str(cutout["talk"])]
    assert stream_out([*no_matte, "--outfile", str(tmp_path / "x.mp4"), "--background", "green"]) == 2
    assert "--matte" in capsys.readouterr().err  # a cache made without the matte says how to rebuild it
