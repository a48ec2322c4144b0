"""Peak memory of a live run on a 10 s 1080p presenter cache: the real command line, measured from outside.

python bench/memory.py [--seconds 10] [--device auto]
Builds the cache, saves a random-weight Wav2Lip-96 checkpoint in the released layout, then runs
`stream_out.py --outfile udp://…` live (MPEG-TS encode included) for `seconds` and reports the child's peak RSS
(host memory; GPU memory is not measured here).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import header  # noqa: E402

from demo.presenter import FacePath, make_presenter_clip, speak  # noqa: E402
from models import wav2lip96  # noqa: E402
from models.blocks import Wav2Lip  # noqa: E402
from models.loader import save_checkpoint  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(header())
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    clip = make_presenter_clip(work / "presenter.mp4", 10.0, 25, FacePath(width=1920, height=1080, scale=2.0))
    preprocess_video(clip, work / "cache", PreprocessConfig(), progress=False)
    cache_mb = sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file()) / 2**20
    checkpoint = save_checkpoint(Wav2Lip(wav2lip96.GENERATOR), work / "wav2lip.pth")
    speech = speak("Memory check: the presenter keeps talking while the loop runs live, frame after frame, for as "
                   "long as the benchmark asks, so that every cached frame is shown at least once.", work / "s.wav")
    command = [sys.executable, str(ROOT / "stream_out.py"), "--checkpoint_path", str(checkpoint),
               "--data_dir", str(work / "cache"), "--audio_files", str(speech), "--outfile",
               "udp://127.0.0.1:23999?pkt_size=1316", "--seconds", str(args.seconds), "--device", args.device]
    print(f"10 s 1080p cache ({cache_mb:.0f} MB on disk), live Wav2Lip-96 for {args.seconds:.0f} s:")
    for run in ("first run (int8 calibration included)", "later run (stored model)"):
        started = time.perf_counter()
        peak, result = peak_rss(command)
        print(f"  {run}: peak RSS {peak:.0f} MB, {time.perf_counter() - started:.0f} s with start-up; "
              f"{result.strip().splitlines()[-1]}")


def peak_rss(command: list[str]) -> tuple[float, str]:
    """Run `command`; return its peak RSS (MB, the kernel's VmHWM read until it exits) and its stdout."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = Path(f"/proc/{child.pid}/status")
    peak = 0.0
    while child.poll() is None:
        try:
            line = next(l for l in status.read_text().splitlines() if l.startswith("VmHWM"))
            peak = max(peak, int(line.split()[1]) / 1024)
        except (OSError, StopIteration):
            pass
        time.sleep(0.1)
    out, err = child.communicate()
    if child.returncode:
        sys.exit(f"live run failed:\n{err[-2000:]}")
    return peak, out


if __name__ == "__main__":
    main()
