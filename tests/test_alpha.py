"""The presenter without its background: preprocess --matte, and --background alpha | key colour on the output.

The presenter is the astronaut cut out along a known outline and drawn over the studio wall, so each frame's true
matte is known exactly (demo.presenter.person_matte)."""
from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from demo.presenter import person_matte
from engine.render.backdrop import Backdrop, keyed

from conftest import CUTOUT_PATH as PATH, CUTOUT_SECONDS as SECONDS


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def cache_matte(cache, k: int, folder: str = "matte") -> np.ndarray:
    return cv2.imread(str(cache / folder / f"{k:05d}.png"), cv2.IMREAD_GRAYSCALE)


@pytest.mark.slow
def test_the_cached_matte_finds_the_presenter(cutout):
    frames = int(SECONDS * 25)
    scores = [iou(cache_matte(cutout["cache"], k) > 127, person_matte(PATH, k / 25) > 0.5) for k in range(frames)]
    assert min(scores) >= 0.9, scores
    between = [iou(cache_matte(cutout["cache"], k, "matte_mid") > 127, person_matte(PATH, k / 25 + 0.02) > 0.5)
               for k in range(0, frames - 1, 4)]  # the in-between frames' own mattes (preprocess --fps 50 --matte)
    assert min(between) >= 0.9, between


def decoded_alpha(path, decoder: list[str], shape) -> np.ndarray:
    """Every frame's alpha plane as ffmpeg decodes the file, (N, H, W) uint8."""
    raw = subprocess.run(["ffmpeg", "-v", "error", *decoder, "-i", str(path), "-vf", "alphaextract", "-f", "rawvideo",
                          "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, *shape)


@pytest.mark.parametrize("suffix, decoder, fps", [(".mov", [], 25), (".webm", ["-c:v", "libvpx-vp9"], 25),
                                                  (".mov", [], 50)])
@pytest.mark.slow
def test_alpha_files_carry_the_cached_matte(cutout, suffix, decoder, fps):
    from stream_out import main as stream_out
    out = cutout["root"] / f"alpha{fps}{suffix}"
    assert stream_out(["--data_dir", str(cutout["cache"]), "--audio_files", str(cutout["talk"]), "--outfile",
                       str(out), "--background", "alpha", "--fps", str(fps)]) == 0
    alphas = decoded_alpha(out, decoder, (PATH.height, PATH.width))
    step = fps // 25
    assert len(alphas) == 25 * step
    for k in (0, 12, 23):  # the loop starts at cache frame 0 and plays forward
        error = np.abs(alphas[step * k].astype(int) - cache_matte(cutout["cache"], k))
        assert error.max() <= 2, (suffix, k, error.max())
        if step == 2:  # the in-between frame carries the in-between frame's own matte
            error = np.abs(alphas[2 * k + 1].astype(int) - cache_matte(cutout["cache"], k, "matte_mid"))
            assert error.max() <= 2, (suffix, k, "in between", error.max())
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
                          "format=yuva420p,chromakey=0x00b140:0.2:0,alphaextract", "-f", "rawvideo", "-pix_fmt",
                          "gray", "-"], capture_output=True, check=True).stdout
    keyed_back = np.frombuffer(raw, np.uint8).reshape(-1, PATH.height, PATH.width)
    for k in (0, 12, 24):
        score = iou(keyed_back[k] > 127, person_matte(PATH, k / 25) > 0.5)
        assert score >= 0.85, (k, score)
    # no green fringe: on the pixels the keyer keeps next to its cut, green stands out of red and blue no more than
    # on the presenter's own pixels there, and far less than where the key colour was simply blended in
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                         capture_output=True, check=True).stdout
    shown = np.frombuffer(raw, np.uint8).reshape(-1, PATH.height, PATH.width, 3)
    green = np.array(Backdrop.parse("green").colour, np.float32)
    for k in (0, 12, 24):
        kept = keyed_back[k] > 127
        rim = kept & (cv2.dilate((~kept).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
        matte = cache_matte(cutout["cache"], k).astype(np.float32)[..., None] / 255
        recorded = cv2.imread(str(cutout["cache"] / "bg" / f"{k:05d}.jpg")).astype(np.float32)
        blended = recorded * matte + green * (1 - matte)
        fringe, own, naive = (green_excess(image, rim) for image in (shown[k], recorded, blended))
        assert fringe <= own + 5 and fringe < naive / 3, (k, fringe, own, naive)  # (H.264 moves a few levels)


def green_excess(image: np.ndarray, where: np.ndarray) -> float:
    """Mean of how far green stands above the larger of red and blue, over `where` (BGR levels)."""
    pixels = image[where].astype(np.float32)
    return float(np.maximum(pixels[:, 1] - np.maximum(pixels[:, 0], pixels[:, 2]), 0).mean())


def test_spill_is_taken_out_of_the_kept_edge_only():
    green = Backdrop.parse("green").colour
    frame = np.full((8, 12, 3), (60, 170, 80), np.uint8)  # a greenish presenter (say, lit by a green screen)
    matte = np.zeros((8, 12), np.uint8)
    matte[:, 4:] = 255
    matte[:, 4] = 160  # a soft edge column
    out = keyed(frame, matte, green).astype(int)
    assert (out[:, :4] == green).all()                       # outside: exactly the key colour
    edge = out[:, 4]
    assert (edge[:, 1] <= np.maximum(edge[:, 0], edge[:, 2]) + 1).all()  # no green tint left at the edge
    assert (out[:, -1] == frame[:, -1]).all()                # far inside: untouched
    matte[:, 3] = 200  # a cut through a 2x2 chroma block moves to the block's edge: key and presenter never share one
    out = keyed(frame, matte, green)
    assert (out[:, :2] == green).all() and not (out[:, 2:] == green).all(axis=-1).any()


def test_background_choices_are_checked(cutout, built, tmp_path, capsys):
    from stream_out import main as stream_out
    assert Backdrop.parse("#FF0000").colour == (0, 0, 255)
    common = ["--data_dir", str(cutout["cache"]), "--audio_files", str(cutout["talk"])]
    with pytest.raises(SystemExit) as exit_info:
        stream_out([*common, "--background", "purple"])
    assert exit_info.value.code == 2
    for outfile, says in ((str(tmp_path / "x.mp4"), "H.264 carries no alpha"),
                          ("vcam", "a virtual camera carries no alpha"),
                          (str(tmp_path / "x.ts"), "MPEG-TS (H.264) carries no alpha")):
        assert stream_out([*common, "--outfile", outfile, "--background", "alpha"]) == 2
        assert says in capsys.readouterr().err
    assert stream_out([*common, "--listen", "127.0.0.1:0", "--background", "alpha"]) == 2
    assert "WebRTC carries no alpha" in capsys.readouterr().err
    no_matte = ["--data_dir", str(built["cache"] / "clip25"), "--audio_files", str(cutout["talk"])]
    assert stream_out([*no_matte, "--outfile", str(tmp_path / "x.mp4"), "--background", "green"]) == 2
    assert "--matte" in capsys.readouterr().err  # a cache made without the matte says how to rebuild it
