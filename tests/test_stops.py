"""A clean stop, always: SIGTERM in the middle of each command ends it with one line starting "stopped", exit code
143 (Ctrl-C: "interrupted", 130), no traceback and no native abort; what it was writing is finished or removed,
and no scratch entry is left (serve's is in tests/test_server.py). Also the two ways a stop used to abort the
process (core/threads.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import ROOT
from core.threads import Worker
from test_syncnet_v2 import random_s, released_state

NATIVE_WORK_AT_EXIT = """
import time
import numpy as np, cv2
from core.cli import exit_with
from core.threads import Worker
image = np.zeros((2000, 2000, 3), np.uint8)
def blur():
    while True:
        cv2.GaussianBlur(image, (31, 31), 0)
for _ in range(2):
    Worker(blur, "blur").start()
time.sleep(0.3)
exit_with(143)
"""


def stop(argv: list[str], ready: Callable[[], bool], signum: int = signal.SIGTERM, after: float = 0.0,
         ) -> tuple[int, list[str]]:
    """Run `stream_out.py argv`, send `signum` once `ready()` (and `after` seconds more): exit code, stderr lines."""
    proc = subprocess.Popen([sys.executable, "stream_out.py", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(after)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=90)
    return proc.returncode, [line for line in err.splitlines() if line.strip()]


def assert_clean(code: int, lines: list[str], word: str = "stopped", expected_code: int = 143) -> None:
    assert code == expected_code and lines and lines[-1].startswith(word), (code, lines[-6:])
    assert not any(line.startswith(("error:", "Traceback")) or "terminate called" in line for line in lines), lines


def scratch_left(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".swl-" in p.name]


def frames_in(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.stdout.split() else 0


def test_a_worker_interrupted_while_joined_is_still_waited_for():
    """Thread.join interrupted by an exception marks a running thread as stopped (CPython 3.11); a Worker is not."""
    def interrupted_join(thread: threading.Thread) -> float:
        thread.start()
        previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        try:
            with pytest.raises(KeyboardInterrupt):
                while thread.is_alive():
                    thread.join(timeout=0.5)
        finally:
            signal.signal(signal.SIGALRM, previous)
        started = time.monotonic()
        thread.join(timeout=5)
        return time.monotonic() - started
    assert interrupted_join(threading.Thread(target=time.sleep, args=(1.0,), daemon=True)) < 0.1  # the bug
    assert interrupted_join(Worker(time.sleep, "sleeper", (1.0,))) > 0.5


def test_exiting_while_a_worker_is_inside_native_code_does_not_abort():
    result = subprocess.run([sys.executable, "-c", NATIVE_WORK_AT_EXIT], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 143 and "terminate called" not in result.stderr, result.stderr[-500:]


def test_a_live_run_stopped_finishes_its_recording(built, media, tmp_path):
    recording = tmp_path / "live.ts"
    argv = ["--data_dir", str(built["cache"] / "clip25"), "--audio_files", str(media["speech"]),
            "--outfile", str(recording)]
    code, lines = stop(argv, lambda: recording.exists() and recording.stat().st_size > 0, after=1.0)
    assert_clean(code, lines)
    assert lines[-1].startswith("stopped: streamed ") and frames_in(recording) > 10


def test_preprocess_stopped_mid_video_leaves_no_half_cache(media, tmp_path):
    out = tmp_path / "caches"
    code, lines = stop(["preprocess", str(media["clip25"]), "--out", str(out)], lambda: bool(scratch_left(out)))
    assert_clean(code, lines)
    assert not scratch_left(out) and not list(out.glob("*/manifest.json"))


def test_the_demo_stopped_while_preprocessing_leaves_no_half_file(tmp_path):
    out = tmp_path / "demo"
    code, lines = stop(["demo", "--short", "--out", str(out)], lambda: bool(scratch_left(out / "cache"))
                       if (out / "cache").exists() else False)
    assert_clean(code, lines)
    assert not scratch_left(out) and not (out / "demo.mp4").exists()
    assert frames_in(out / "presenter.mp4") == 50  # made before the stop, whole


def test_prepare_stopped_while_converting_leaves_no_conversion(checkpoint, tmp_path):
    cache = tmp_path / "runtime"
    started = time.monotonic()
    code, lines = stop(["prepare", "--checkpoint_path", str(checkpoint), "--runtime_cache", str(cache)],
                       lambda: time.monotonic() - started > 3.0)
    assert_clean(code, lines)
    assert not scratch_left(cache) and not list(cache.glob("wav2lip96-*"))


def test_evaluate_interrupted_by_ctrl_c_says_so(media, tmp_path):
    model = tmp_path / "syncnet_v2.model"
    torch.save(released_state(random_s()), model, _use_new_zipfile_serialization=False)
    started = time.monotonic()
    code, lines = stop(["evaluate", str(media["clip25"]), "--syncnet_v2", str(model)],
                       lambda: time.monotonic() - started > 2.5, signal.SIGINT)
    assert_clean(code, lines, "interrupted", 130)
