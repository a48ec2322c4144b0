"""A new user's one-shot render on the CPU: first run with a new checkpoint, then later runs, with peak memory.

python bench/one_shot.py [--runs 2] [--keep DIR] [--reference WAV2LIP_CHECKOUT]
The job of the CPU issue: a 10 s 854x480 presenter clip (preprocessed once, not timed: the reference run used a
fixed --box), 12.08 s of espeak-ng speech and a random-weight Wav2Lip-96 checkpoint in the reference's file layout
({'state_dict' with 'module.' keys, 'optimizer', 'global_step', 'global_epoch'}). Each render is the user's command,
`stream_out.py --checkpoint_path … --data_dir … --audio_files … --outfile x.mp4`, in a fresh process:
  1. first render, empty runtime cache (the checkpoint is converted and calibrated in that run);
  2. the same again (conversion reused), `runs` times;
  3. another presenter (a second clip), same checkpoint.
Printed per render: wall seconds, the time to the first frame (from the log), the peak RSS of the Python process
(ru_maxrss) and of the whole process tree (sampled every 20 ms, ffmpeg included), and the ratio to the reference.

With --reference (a checkout of Rudrabha/Wav2Lip; its code is not in this repository), the reference's own
`inference.py --box …` renders the same job first, in the same session, and the ratios are to its wall time. Two
shims let today's packages run it, neither of which changes its work: librosa >= 0.10 takes the mel filter bank's
arguments by keyword only, and where TensorFlow 1 is missing, `hparams.HParams` gets a plain attribute holder.
Without --reference the ratio is to the issue's 33.6 s, measured on another machine.
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
    caches, clips = [], []
    for name, path in (("anna", FacePath(width=854, height=480)),
                       ("ben", FacePath(width=854, height=480, sway=20, bob=6, scale=0.9, tilt=3, period=5))):
        clip = make_presenter_clip(work / f"{name}.mp4", 10.0, 25, path)
        clips.append(clip)
        caches.append(work / "cache" / preprocess_video(clip, work / "cache", PreprocessConfig(), progress=False).name)
    return {"speech": work / "speech.wav", "checkpoint": work / "wav2lip.pth", "caches": caches, "clips": clips}


def timed(command: list[str], cwd: Path, log_path: Path) -> dict:
    """Runs `command`, logging to `log_path`: wall seconds, peak RSS of its process tree, its output."""
    import psutil
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        child = subprocess.Popen(command, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT)
        parent, tree_peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
                tree_peak = max(tree_peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.02)
    wall = time.perf_counter() - started
    output = log_path.read_text()
    if child.returncode != 0:
        raise SystemExit(f"{command[0]} … failed ({child.returncode}):\n{output[-3000:]}")
    return {"wall": wall, "tree_mib": tree_peak / 2 ** 20, "log": output}


def render(job: dict, cache: Path, runtime_cache: Path, out: Path, dtype: str) -> dict:
    command = [sys.executable, "stream_out.py", "--checkpoint_path", str(job["checkpoint"]), "--data_dir", str(cache),
               "--audio_files", str(job["speech"]), "--outfile", str(out), "--runtime_cache", str(runtime_cache),
               "--dtype", dtype, "--verbose"]
    result = timed(command, ROOT, out.with_suffix(".log"))
    first = re.search(r"first frame after ([\d.]+) s", result["log"])
    peak = re.search(r"peak RSS ([\d.]+) MiB", result["log"])
    return {**result, "first_frame": float(first.group(1)) if first else float("nan"),
            "peak_mib": float(peak.group(1)) if peak else float("nan")}


REFERENCE_SHIMS = """
import runpy, sys, types
import librosa.filters
_mel = librosa.filters.mel
librosa.filters.mel = lambda *args, **kw: _mel(**dict(zip(("sr", "n_fft"), args)), **kw)
try:
    import tensorflow.contrib.training  # noqa: F401
except ImportError:
    class HParams:
        def __init__(self, **values):
            self.__dict__.update(values)
    modules = {name: types.ModuleType(name) for name in ("tensorflow", "tensorflow.contrib",
                                                          "tensorflow.contrib.training")}
    modules["tensorflow.contrib.training"].HParams = HParams
    sys.modules.update(modules)
sys.argv = ["inference.py", *sys.argv[1:]]
runpy.run_path("inference.py", run_name="__main__")
"""


def fixed_box(cache: Path) -> list[int]:
    """The presenter's median Wav2Lip box as the reference's --box (top, bottom, left, right)."""
    x1, y1, x2, y2 = np.median(np.load(cache / "face_det.npz")["box"], axis=0).round().astype(int)
    return [int(y1), int(y2), int(x1), int(x2)]


def reference_command(job: dict, checkout: Path, out: Path) -> tuple[list[str], Path]:
    (checkout / "temp").mkdir(exist_ok=True)  # the reference writes temp/result.avi there
    clip = job["clips"][0]
    return ([sys.executable, "-c", REFERENCE_SHIMS, "--checkpoint_path", str(job["checkpoint"]), "--face", str(clip),
             "--audio", str(job["speech"]), "--outfile", str(out), "--box",
             *map(str, fixed_box(job["caches"][0]))], checkout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="later renders of the first presenter")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp folder)")
    parser.add_argument("--reference", type=Path, help="a Rudrabha/Wav2Lip checkout: time its inference.py --box "
                        "on the same job first, and give the ratios to it")
    parser.add_argument("--dtype", default="auto", help="our --dtype (auto, fp32, int8)")
    args = parser.parse_args()
    print(header())
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-one-shot-"))
    work.mkdir(parents=True, exist_ok=True)
    job = make_job(work)
    runtime_cache = work / "runtime-cache"
    reference_seconds, source = REFERENCE_SECONDS, "the issue's figure, another machine"
    if args.reference:
        command, cwd = reference_command(job, args.reference.resolve(), work / "reference.mp4")
        result = timed(command, cwd, work / "reference.log")
        reference_seconds, source = result["wall"], f"measured now, peak RSS (tree) {result['tree_mib']:.0f} MiB"
    print(f"job: 10 s 854x480 presenter, {SPEECH_SECONDS} s of speech, random-weight Wav2Lip-96 in the reference "
          f"layout; reference inference.py --box: {reference_seconds:.1f} s ({source})")
    print("| render | wall s | first frame s | peak RSS (python) MiB | peak RSS (tree) MiB | x reference |")
    print("|---|---|---|---|---|---|")
    plan = [("first, empty runtime cache", job["caches"][0])]
    plan += [(f"later #{n + 1}, same presenter", job["caches"][0]) for n in range(args.runs)]
    plan += [("later, another presenter", job["caches"][1])]
    for n, (label, cache) in enumerate(plan):
        result = render(job, cache, runtime_cache, work / f"out{n}.mp4", args.dtype)
        print(f"| {label} | {result['wall']:.1f} | {result['first_frame']:.1f} | {result['peak_mib']:.0f} | "
              f"{result['tree_mib']:.0f} | {reference_seconds / result['wall']:.1f} |", flush=True)
        if n == 0:
            for line in result["log"].splitlines():
                if re.search(r"calibrat|convert|int8|spread", line):
                    print(f"    {line.strip()}")


if __name__ == "__main__":
    main()
