"""A clean stop at any moment: SIGTERM each command at several delays and print how each run ended.

python bench/stops.py [--root CHECKOUT] [--commands live,iplap,...] [--delays 1.5,3,4.5,6,9] [--repeat 1]
Runs `stream_out.py` from --root (default: this checkout; pass an older checkout to measure it the same way) on
assets made here: a generated presenter cache (and one at IP_LAP's 128 px), espeak-ng speech, and random-weight
checkpoints in the released layouts (Wav2Lip-96, IP_LAP's two networks, syncnet_python's SyncNet). For each run it
prints the exit code, the last stderr line, whether the process aborted ("terminate called", a negative exit code)
and the scratch entries left behind; then a count per command.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from machine import header  # noqa: E402  (bench/ is on the path as the script's folder)

from demo.presenter import FacePath, make_presenter_clip, speak  # noqa: E402
from models import wav2lip96  # noqa: E402
from models.blocks import Wav2Lip  # noqa: E402
from models.iplap import LandmarkGenerator, Renderer  # noqa: E402
from models.loader import save_checkpoint  # noqa: E402
from models.syncnet_v2 import S  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402


def assets(work: Path) -> dict[str, Path]:
    clip = make_presenter_clip(work / "presenter.mp4", 4.0, 25, FacePath(width=960, height=540, scale=1.2))
    made = {"clip": clip, "speech": speak("Hello there. This sentence is long enough to be stopped in the middle "
                                          "of its frames, and then some more words follow it.", work / "speech.wav"),
            "wav2lip": save_checkpoint(Wav2Lip(wav2lip96.GENERATOR), work / "wav2lip_gan.pth", global_step=1)}
    made["cache"] = work / "cache" / preprocess_video(clip, work / "cache", PreprocessConfig(), progress=False).name
    made["iplap_cache"] = work / "iplap" / preprocess_video(clip, work / "iplap", PreprocessConfig(face_size=128),
                                                            progress=False).name
    for name, model in (("landmark", LandmarkGenerator()), ("renderer", Renderer())):
        made[name] = work / f"{name}.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "global_step": 1},
                   made[name])
    made["syncnet_v2"] = work / "syncnet_v2.model"
    torch.save({k: v for k, v in S().state_dict().items() if not k.endswith("num_batches_tracked")},
               made["syncnet_v2"], _use_new_zipfile_serialization=False)
    return made


def commands(a: dict[str, Path], out: Path) -> dict[str, list[str]]:
    speech = ["--audio_files", str(a["speech"])]
    return {
        "render": ["--data_dir", str(a["cache"]), *speech, "--outfile", str(out / "render.mp4")],
        "wav2lip": ["--checkpoint_path", str(a["wav2lip"]), "--data_dir", str(a["cache"]), *speech,
                    "--outfile", str(out / "wav2lip.mp4")],
        "iplap": ["--model", "iplap", "--landmark_checkpoint", str(a["landmark"]), "--renderer_checkpoint",
                  str(a["renderer"]), "--data_dir", str(a["iplap_cache"]), *speech, "--outfile",
                  str(out / "iplap.mp4"), "--device", "cpu"],
        "live": ["--data_dir", str(a["cache"]), *speech, "--outfile", str(out / "live.ts")],
        "serve": ["serve", "--data_dir", str(a["cache"]), "--listen", "127.0.0.1:0"],
        "preprocess": ["preprocess", str(a["clip"]), "--out", str(out / "caches")],
        "demo": ["demo", "--out", str(out / "demo")],
        "prepare": ["prepare", "--checkpoint_path", str(a["wav2lip"]), "--runtime_cache", str(out / "runtime")],
        "evaluate": ["evaluate", str(a["clip"]), "--syncnet_v2", str(a["syncnet_v2"])],
    }


def stop_once(root: Path, argv: list[str], delay: float, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "stream_out.py", *argv], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        err += "\n(still running 120 s after SIGTERM: killed)"
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("W0000", "I0000", "INFO:"))]
    return {"code": proc.returncode, "last": lines[-1] if lines else "",
            "aborted": proc.returncode < 0 or "terminate called" in err,
            "scratch": sorted(p.name for p in out.rglob("*") if ".swl-" in p.name)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout whose stream_out.py is stopped")
    parser.add_argument("--commands", default="render,wav2lip,iplap,live,serve,preprocess,demo,prepare,evaluate")
    parser.add_argument("--delays", default="1.5,3,4.5,6,9", help="seconds from the start to SIGTERM")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stops-"))
    made = assets(work)
    runs = commands(made, work / "out")
    print(header())
    print(f"stream_out.py from {args.root}, SIGTERM after each delay")
    print("| command | delay s | exit code | last line | aborted | scratch left |")
    print("|---|---|---|---|---|---|")
    tally: dict[str, Counter] = {}
    for name in args.commands.split(","):
        for _ in range(args.repeat):
            for delay in map(float, args.delays.split(",")):
                result = stop_once(args.root, runs[name], delay, work / "out")
                tally.setdefault(name, Counter())["aborted" if result["aborted"] else str(result["code"])] += 1
                print(f"| {name} | {delay:g} | {result['code']} | {result['last'][:90]} | "
                      f"{'yes' if result['aborted'] else 'no'} | {', '.join(result['scratch']) or '-'} |", flush=True)
    print("\n| command | runs by how they ended |")
    print("|---|---|")
    for name, counts in tally.items():
        print(f"| {name} | {', '.join(f'{count} {how}' for how, count in sorted(counts.items()))} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
