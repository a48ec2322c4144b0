"""Nothing half-written survives: scratch left by a killed process, caches replaced without a moment of absence,
a publish killed between its two renames."""
from __future__ import annotations

import logging
import subprocess
import sys
import threading

import numpy as np

from conftest import ROOT


def test_scratch_left_by_a_killed_process_goes_at_the_next_start(tmp_path, caplog):
    """kill -9 cannot be caught: the next writer into the folder removes what the dead process left, and says so."""
    import signal
    code = "import sys, time; from core.scratch import make_scratch; make_scratch(sys.argv[1], 'out.mp4'); " \
           "print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    from core.scratch import HOST
    left = tmp_path / f".out.mp4.swl-{HOST}-{proc.pid}.partial"
    alive = tmp_path / f".other.swl-{HOST}-1.partial"  # pid 1 is alive: its scratch must stay
    elsewhere = tmp_path / f".other.swl-{HOST}x-{proc.pid}.partial"  # another machine's pid means nothing here
    alive.mkdir()
    elsewhere.mkdir()
    assert left.is_dir()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with caplog.at_level(logging.WARNING, logger="scratch"):
        from engine.outputs.sinks import Mp4Sink
        sink = Mp4Sink(tmp_path / "out.mp4")
        sink.open(64, 64)
        own = sink._tmp
        sink.write(np.zeros((64, 64, 3), np.uint8), np.zeros(640, np.float32), 0)
        sink.close()
    assert not left.exists() and alive.exists() and elsewhere.exists() and not own.exists()
    assert f"left behind by process {proc.pid}" in caplog.text


def test_a_cache_is_replaced_without_a_moment_of_absence(tmp_path):
    from core.scratch import make_scratch, publish
    final = tmp_path / "presenter"
    final.mkdir()
    (final / "manifest.json").write_text("0")
    missing, seen, stop = [], set(), threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add((final / "manifest.json").read_text())
            except FileNotFoundError:
                missing.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 200):
            new = make_scratch(tmp_path, "presenter")
            (new / "manifest.json").write_text(str(version))
            publish(new, final)
    finally:
        stop.set()
        thread.join()
    assert not missing and (final / "manifest.json").read_text() == "199" and len(seen) > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["presenter"]


def test_a_publish_killed_between_its_two_renames_is_undone_at_the_next_start(tmp_path):
    """Where no atomic swap exists, the old cache is renamed aside first; a process killed right then leaves it
    there, and the next sweep puts it back rather than deleting the only copy."""
    from core.scratch import HOST, make_scratch
    aside = tmp_path / f".presenter.swl-{HOST}-4194305.old"  # above Linux's largest pid: no process has it
    aside.mkdir()
    (aside / "manifest.json").write_text("old")
    make_scratch(tmp_path, "presenter")  # any writer's start sweeps the folder
    assert (tmp_path / "presenter" / "manifest.json").read_text() == "old"
