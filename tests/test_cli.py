"""stream_out.py as a user runs it: renders after one prepare, presets, every mistake one line with exit code 2,
SIGTERM and a full disk leaving nothing half-written, a live run that ends with its files."""
from __future__ import annotations

import json
import re
import logging
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from conftest import ROOT
from audio.decode import load_audio
from models import wav2lip96
from models.blocks import SyncNet
from models.loader import save_checkpoint
from stream_out import main as stream_out_main


@pytest.fixture(scope="module")
def prepared(checkpoint) -> subprocess.CompletedProcess:
    """`stream_out.py prepare` of the test checkpoint into this run's runtime cache (conftest), as a user runs it
    once: every command line run of the checkpoint after it starts from that conversion."""
    return subprocess.run([sys.executable, "stream_out.py", "prepare", "--checkpoint_path", str(checkpoint)],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_mp4_from_the_command_line_after_one_prepare_for_every_presenter(checkpoint, prepared, built, talk, tmp_path):
    out = tmp_path / "result.mp4"
    short = tmp_path / "short.wav"  # speech, silence, speech: 5 s
    soundfile.write(str(short), talk[1][: 16000 * 5], 16000)
    assert prepared.returncode == 0 and "prepared wav2lip96" in prepared.stdout, prepared.stderr[-2000:]
    assert "calibrating int8" in prepared.stderr  # auto: int8 on every CPU
    second = tmp_path.parent / f"{tmp_path.name}-second.wav"
    soundfile.write(str(second), talk[1][: 16000], 16000)
    renders = []
    for cache, audio, target in (("clip25", short, out), ("clip30", second, tmp_path / "other.mp4")):
        renders.append(subprocess.run([sys.executable, "-X", "importtime", "stream_out.py", "--checkpoint_path",
                                       str(checkpoint),
                                       "--data_dir", str(built["cache"] / cache), "--audio_files", str(audio),
                                       "--outfile", str(target)],
                                      cwd=ROOT, capture_output=True, text=True))
        assert renders[-1].returncode == 0, renders[-1].stderr[-2000:]
    for proc in renders:  # both presenters start from the prepared conversion, found by the file's hash
        assert "from the stored conversion" in proc.stderr and "torch not loaded" in proc.stderr
        assert "converting" not in proc.stderr and "calibrating" not in proc.stderr
        assert re.search(r"first frame after [\d.]+ s", proc.stderr) and "peak RSS" in proc.stderr
        imported = set(re.findall(r"\| +([\w.]+)$", proc.stderr, re.M))
        assert not imported & {"torch", "librosa", "numba", "scipy.signal", "mediapipe", "face_alignment"}
    (tmp_path / "other.mp4").unlink()
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json",
                                       str(out)], capture_output=True, text=True).stdout)
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")
    audio = next(s for s in probe["streams"] if s["codec_type"] == "audio")
    seconds = 5.0
    assert video["r_frame_rate"] == "25/1"
    assert abs(int(video["nb_read_frames"]) - seconds * 25) <= 1
    assert float(audio["duration"]) == pytest.approx(seconds, abs=0.06)
    assert float(video["duration"]) == pytest.approx(seconds, abs=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.mp4", "short.wav"]  # no scratch folder left


@pytest.mark.slow
def test_bad_inputs_give_one_clear_message(checkpoint, prepared, built, cache288, talk, tmp_path, capsys, caplog):
    """Each in one line; a cache that does not fit the model before the model is converted, or, once prepared,
    before its stored conversion is read."""
    runtime = tmp_path / "runtime"
    common = ["--audio_files", str(talk[0]), "--outfile", str(tmp_path / "x.mp4"), "--device", "cpu"]
    assert "no finished presenter cache" in cli_error(
        capsys, "--checkpoint_path", str(checkpoint), "--data_dir", str(tmp_path / "nothing"), *common,
        "--runtime_cache", str(runtime))
    assert "made for 288 px faces but the model needs 96 px" in cli_error(
        capsys, "--checkpoint_path", str(checkpoint), "--data_dir", str(cache288[1] / "clip30"), *common,
        "--runtime_cache", str(runtime))
    assert not runtime.exists() or not any(runtime.rglob("*.xml"))  # nothing was converted for either
    assert prepared.returncode == 0  # the run's runtime cache holds this checkpoint's conversion
    with caplog.at_level(logging.INFO):
        assert "made for 288 px faces but the model needs 96 px" in cli_error(
            capsys, "--checkpoint_path", str(checkpoint), "--data_dir", str(cache288[1] / "clip30"), *common)
    assert not [r for r in caplog.records if "from the stored conversion" in r.getMessage()]
    (tmp_path / "broken.mp3").write_bytes(b"\x00" * 500)
    assert "not a readable audio file" in cli_error(
        capsys, "--checkpoint_path", str(checkpoint), "--data_dir", str(built["cache"] / "clip25"),
        "--audio_files", str(tmp_path / "broken.mp3"), "--outfile", str(tmp_path / "x.mp4"))
    expert = save_checkpoint(SyncNet(wav2lip96.SYNCNET), tmp_path / "lipsync_expert.pth")
    assert "SyncNet lip-sync expert; expected a Wav2Lip generator" in cli_error(
        capsys, "--checkpoint_path", str(expert), "--data_dir", str(built["cache"] / "clip25"), *common)
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.slow
def test_sigterm_finishes_the_mp4_like_ctrl_c(checkpoint, prepared, built, talk, tmp_path):
    """SIGTERM (a service manager, `kill`) goes the Ctrl-C way: the mp4 is finished, nothing else is left."""
    import signal
    assert prepared.returncode == 0  # so the run starts from the stored conversion and is stopped while rendering
    long_audio = tmp_path / "long.wav"
    soundfile.write(str(long_audio), np.tile(talk[1], 4), 16000)
    out = tmp_path / "partial.mp4"
    proc = subprocess.Popen([sys.executable, "stream_out.py", "--checkpoint_path", str(checkpoint), "--data_dir",
                             str(built["cache"] / "clip25"), "--audio_files", str(long_audio), "--outfile", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".render-*.partial/video.mp4")):
        time.sleep(0.2)
    time.sleep(3)  # some frames in
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err[-1500:]
    assert f"stopped: wrote {out} with the first " in err
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json",
                                       str(out)], capture_output=True, text=True).stdout)
    frames = int(next(s for s in probe["streams"] if s["codec_type"] == "video")["nb_read_frames"])
    audio = next(s for s in probe["streams"] if s["codec_type"] == "audio")
    assert 0 < frames < len(talk[1]) * 4 / 640
    assert float(audio["duration"]) == pytest.approx(frames / 25, abs=0.06)  # audio cut with the video
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.wav", "partial.mp4"]  # no scratch folder left


def test_sigterm_before_the_first_frame_says_stopped_and_leaves_nothing(checkpoint, prepared, built, talk,
                                                                              tmp_path):
    """Stopped as soon as the mp4's scratch folder appears: one line, exit 143, no file and no scratch left (it was
    "error: could not write out.mp4: no frames", exit 2)."""
    import signal
    out = tmp_path / "early.mp4"
    proc = subprocess.Popen([sys.executable, "stream_out.py", "--checkpoint_path", str(checkpoint), "--data_dir",
                             str(built["cache"] / "clip25"), "--audio_files", str(talk[0]), "--outfile", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".render-*.partial")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 143 and "Traceback" not in err and not any(l.startswith("error:") for l in lines), err
    assert lines[-1] == "stopped before the first frame: nothing written" or \
        lines[-1].startswith(f"stopped: wrote {out}"), lines[-1]  # the first frame can beat the signal
    assert sorted(p.name for p in tmp_path.iterdir()) == (["early.mp4"] if out.exists() else [])


def test_presets_set_engine_defaults_and_flags_win(tmp_path):
    from engine.cli import parse_args
    args = parse_args(["--config", "wav2lip288", "--audio_files", "a.wav"])
    assert (args.batch_size, args.live_batch_size, args.enhance, args.latency_ms) == (8, 2, "none", 400)
    args = parse_args(["--config", "wav2lip384", "--batch_size", "2", "--audio_files", "a.wav"])
    assert args.batch_size == 2 and args.live_batch_size == 1
    bad = tmp_path / "bad.yaml"
    for text in ("no_such_flag: 1", "fps: 30", "blendshapes_from: pixel"):  # a default skips argparse's choices
        bad.write_text(f"stream_out:\n  {text}\n")
        with pytest.raises(SystemExit):
            parse_args(["--config", str(bad)])


def cli_error(capsys, *args: str, progress: bool = False) -> str:
    """Run the command line in-process: exit code 2 and one stderr line (after the progress bar, if it rendered)."""
    code = stream_out_main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if progress is False or not line.startswith("\rrender")]
    lines = [line for line in lines if not (progress and "render:" in line)]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, \
        (code, err[-2000:])
    return lines[0]


def test_every_mistake_in_the_table_is_one_line_and_exit_code_2(checkpoint, built, talk, tmp_path, capsys,
                                                                 monkeypatch):
    import torch
    cache = built["cache"] / "clip25"
    out = tmp_path / "x.mp4"
    common = ["--data_dir", str(cache), "--audio_files", str(talk[0]), "--outfile", str(out)]
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
    assert "truncated or corrupt" in cli_error(capsys, "--checkpoint_path", str(noise), *common)
    if not torch.cuda.is_available():
        assert "sees no CUDA GPU" in cli_error(capsys, "--device", "cuda", *common)
    (tmp_path / "a_file").write_text("not a folder")
    assert "cannot write there" in cli_error(capsys, *common[:-1], str(tmp_path / "a_file" / "x.mp4"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert "cannot listen" in cli_error(capsys, "serve", "--data_dir", str(cache), "--listen",
                                            f"127.0.0.1:{port}")
    old = tmp_path / "old_cache"
    shutil.copytree(cache, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    assert "another version of stream-wav2lip" in cli_error(capsys, *common[:1], str(old), *common[2:])
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(talk[0].read_bytes()[: talk[0].stat().st_size // 2])
    assert "truncated" in cli_error(capsys, *common[:3], str(truncated), *common[4:])
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    assert "'ffmpeg' is not installed" in cli_error(capsys, *common)
    monkeypatch.undo()
    assert not out.exists()
    assert stream_out_main([*common[:3], str(truncated), *common[4:], "--allow_truncated"]) == 0
    assert out.exists()


def test_verbose_shows_the_traceback(built, talk, tmp_path, capsys):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(b"\x80" + bytes(1000))
    code = stream_out_main(["--verbose", "--checkpoint_path", str(noise), "--data_dir", str(built["cache"] / "clip25"),
                            "--audio_files", str(talk[0]), "--outfile", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_a_full_disk_is_one_line_and_leaves_nothing(built, talk, tmp_path, capsys):
    """A real full file system: a 256 KiB tmpfs, mounted for the test (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        long_audio = tmp_path / "long.wav"
        soundfile.write(str(long_audio), np.tile(talk[1], 2), 16000)
        message = cli_error(capsys, "--data_dir", str(built["cache"] / "clip25"), "--audio_files", str(long_audio),
                            "--outfile", str(disk / "out.mp4"), progress=True)
        assert "No space left on device" in message and "disk is full" in message and "out.mp4" in message
        assert list(disk.iterdir()) == []  # neither the mp4 nor its scratch folder
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_live_run_streams_its_audio_files_and_ends_with_them(built, media, tmp_path):
    """--audio_files live: a feeder thread streams the decoded files a few seconds ahead of the clock, and the run
    ends when they are spoken. An MPEG-TS file is a live sink, so the run is paced like a stream to OBS."""
    out = tmp_path / "live.ts"
    started = time.monotonic()
    assert stream_out_main(["--data_dir", str(built["cache"] / "clip25"), "--audio_files", str(media["speech"]),
                            "--outfile", str(out)]) == 0
    seconds = len(load_audio(media["speech"])) / 16000
    assert time.monotonic() - started >= seconds  # paced in real time, not rendered as fast as possible
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(out)],
                                      capture_output=True, text=True).stdout)
    audio = next(s for s in probe["streams"] if s["codec_type"] == "audio")
    assert float(audio["duration"]) == pytest.approx(seconds, abs=0.2)
