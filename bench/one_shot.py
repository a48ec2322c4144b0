"""A new user's one-shot render on the CPU: first run with a new checkpoint, then later runs, with peak memory.

python bench/one_shot.py [--runs 2] [--keep DIR]
The job of the CPU issue: a 10 s 854x480 presenter clip (preprocessed once, not timed: the reference run used a
fixed --box), 12.08 s of espeak-ng speech and a random-weight Wav2Lip-96 checkpoint in the reference's file layout
({'state_dict' with 'module.' keys, 'optimizer', 'global_step', 'global_epoch'}). Each render is the user's command,
`stream_out.py --checkpoint_path … --data_dir … --audio_files … --outfile x.mp4`, in a fresh process:
  1. first render, empty runtime cache (the checkpoint is converted and calibrated in that run);
  2. the same again (conversion reused), `runs` times;
  3. another presenter (a second clip), same checkpoint.
Printed per render: wall seconds, the time to the first frame (from the log), the peak RSS of the Python process
(ru_maxrss) and of the whole process tree (sampled every 20 ms, ffmpeg included), and the ratio to the reference's
33.6 s for this job (measured in the issue on this machine type; it drifts ±20% with host load and is not re-run
here: the reference code is not in this repository).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import header  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SECONDS = 33.6
SPEECH_SECONDS = 12.08
TEXT = ("Welcome back to the stream. Today we look at how a lip sync engine keeps audio and video together, frame "
        "by frame, while the presenter loops quietly behind the words you are hearing now.")


def make_job(work: Path) -> dict:
    import soundfile
    import torch

    from audio.decode import load_audio
    from core.timebase import SAMPLE_RATE
    from demo.presenter import FacePath, make_presenter_clip, speak
    from models import wav2lip96
    from models.blocks import Wav2Lip
    from preprocess.pipeline import PreprocessConfig, preprocess_video

    speech = load_audio(speak(TEXT, work / "tts.wav"))
    want = int(round(SPEECH_SECONDS * SAMPLE_RATE))
    speech = np.pad(speech, (0, max(0, want - len(speech))))[:want]
    soundfile.write(work / "speech.wav", speech, SAMPLE_RATE)
    model = Wav2Lip(wav2lip96.GENERATOR)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "optimizer": {},
                "global_step": 0, "global_epoch": 0}, work / "wav2lip.pth")
    caches = []
    for name, path in (("anna", FacePath(width=854, height=480)),
                       ("ben", FacePath(width=854, height=480, sway=20, bob=6, scale=0.9, tilt=3, period=5))):
        clip = make_presenter_clip(work / f"{name}.mp4", 10.0, 25, path)
        caches.append(work / "cache" / preprocess_video(clip, work / "cache", PreprocessConfig(), progress=False).name)
    return {"speech": work / "speech.wav", "checkpoint": work / "wav2lip.pth", "caches": caches}


def render(job: dict, cache: Path, runtime_cache: Path, out: Path) -> dict:
    import psutil
    command = [sys.executable, "stream_out.py", "--checkpoint_path", str(job["checkpoint"]), "--data_dir", str(cache),
               "--audio_files", str(job["speech"]), "--outfile", str(out), "--runtime_cache", str(runtime_cache),
               "--verbose"]
    log_path = out.with_suffix(".log")
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        child = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        parent, tree_peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
                tree_peak = max(tree_peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.02)
    wall = time.perf_counter() - started
    status = child.returncode
    output = log_path.read_text()
    if status != 0:
        raise SystemExit(f"render failed ({status}):\n{output[-3000:]}")
    first = re.search(r"first frame after ([\d.]+) s", output)
    peak = re.search(r"peak RSS ([\d.]+) MiB", output)
    return {"wall": wall, "first_frame": float(first.group(1)) if first else float("nan"),
            "peak_mib": float(peak.group(1)) if peak else float("nan"), "tree_mib": tree_peak / 2 ** 20,
            "log": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="later renders of the first presenter")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp folder)")
    args = parser.parse_args()
    print(header())
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-one-shot-"))
    work.mkdir(parents=True, exist_ok=True)
    job = make_job(work)
    runtime_cache = work / "runtime-cache"
    print(f"job: 10 s 854x480 presenter, {SPEECH_SECONDS} s of speech, random-weight Wav2Lip-96 in the reference "
          f"layout; reference inference.py --box: {REFERENCE_SECONDS} s (the issue's figure)")
    print("| render | wall s | first frame s | peak RSS (python) MiB | peak RSS (tree) MiB | x reference |")
    print("|---|---|---|---|---|---|")
    plan = [("first, empty runtime cache", job["caches"][0])]
    plan += [(f"later #{n + 1}, same presenter", job["caches"][0]) for n in range(args.runs)]
    plan += [("later, another presenter", job["caches"][1])]
    for n, (label, cache) in enumerate(plan):
        result = render(job, cache, runtime_cache, work / f"out{n}.mp4")
        print(f"| {label} | {result['wall']:.1f} | {result['first_frame']:.1f} | {result['peak_mib']:.0f} | "
              f"{result['tree_mib']:.0f} | {REFERENCE_SECONDS / result['wall']:.1f} |", flush=True)
        if n == 0:
            for line in result["log"].splitlines():
                if re.search(r"calibrat|convert|int8|spread", line):
                    print(f"    {line.strip()}")


if __name__ == "__main__":
    main()
