"""The built-in default job: a sample presenter speaks sample speech, through the real engine, into demo.mp4.

python stream_out.py demo [--out out/demo] [--short] [engine flags, e.g. --outfile obs or --checkpoint_path X]
Everything comes from what is installed: the face is scikit-image's astronaut photo moving in a gentle loop, the
voice espeak-ng (an English and a Mandarin sentence), the lip model the weight-free mouth animator unless a Wav2Lip
checkpoint is given.
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Optional

from core.scratch import written
from core.timebase import SAMPLE_RATE
from preprocess.pipeline import PreprocessConfig, run_batch, summary_table

from .presenter import FacePath, make_presenter_clip, speak

SENTENCES = (("en-us", "Hello! I am your stream presenter. Everything you hear, my lips will follow, live."),
             ("cmn", "大家好，欢迎来到直播间。"))
SHORT = (("en-us", "Hello, I am your stream presenter."),)


def make_speech(folder: Path, sentences=SENTENCES) -> Path:
    """The sentences one after another, a short pause between, as one 16 kHz mono wav."""
    parts = [speak(text, folder / f"speech_{i}.wav", voice) for i, (voice, text) in enumerate(sentences)]
    out = folder / "speech.wav"
    filters = "".join(f"[{i}:a]aresample={SAMPLE_RATE},apad=pad_dur=0.4[a{i}];" for i in range(len(parts)))
    concat = "".join(f"[a{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=0:a=1[out]"
    cmd = ["ffmpeg", "-v", "error", "-y", *sum((["-i", str(p)] for p in parts), []),
           "-filter_complex", filters + concat, "-map", "[out]", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "wav"]
    with written(out) as partial:
        subprocess.run([*cmd, str(partial)], check=True)
    return out


def prepare(argv: list[str] | None = None) -> tuple[list[str], Optional[Path]]:
    """Make the sample presenter's cache and speech; the engine's argv that speaks them, and the video it writes
    (None when the flags send it elsewhere). The engine's own command line runs it (stream_out.py)."""
    parser = argparse.ArgumentParser(prog="python stream_out.py demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where the sample media, cache and video go")
    parser.add_argument("--short", action="store_true", help="one short sentence and a 2 s presenter loop (tests)")
    parser.add_argument("--face_size", type=int, default=96, choices=(96, 288, 384))
    args, engine_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    speech = make_speech(args.out, SHORT if args.short else SENTENCES)
    path = FacePath(width=960, height=540, scale=1.2)
    clip = make_presenter_clip(args.out / "presenter.mp4", seconds=2.0 if args.short else path.period, path=path)
    results = run_batch([clip], args.out / "cache", PreprocessConfig(face_size=args.face_size))
    print(summary_table(results))
    if results[0].status == "failed":
        raise RuntimeError(f"the sample presenter could not be preprocessed: {results[0].message}")
    video = None
    if "--outfile" not in engine_args:
        video = args.out / "demo.mp4"
        engine_args += ["--outfile", str(video)]
    return ["--data_dir", str(args.out / "cache" / results[0].name), "--audio_files", str(speech),
            *engine_args], video


if __name__ == "__main__":
    import stream_out
    from core.cli import exit_with
    exit_with(stream_out.main(["demo", *sys.argv[1:]]))
