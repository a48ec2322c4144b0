"""The built-in default job: make a sample presenter with speech, then preprocess it into a cache.

python -m demo [--out out/demo]   (also: python stream_out.py demo)
Everything comes from packages already installed: the face is scikit-image's astronaut photo, the voice espeak-ng.
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from preprocess.pipeline import PreprocessConfig, run_batch, summary_table

from .presenter import FacePath, make_presenter_clip, speak

SENTENCES = (("en-us", "Hello! I am your stream presenter. Everything you hear, my lips will follow, live."),
             ("cmn", "大家好，欢迎来到直播间。"))


def make_speech(folder: Path) -> Path:
    """English then Mandarin, a short pause between, as one 16 kHz mono wav."""
    parts = [speak(text, folder / f"speech_{i}.wav", voice) for i, (voice, text) in enumerate(SENTENCES)]
    out = folder / "speech.wav"
    filters = "".join(f"[{i}:a]aresample=16000,apad=pad_dur=0.4[a{i}];" for i in range(len(parts)))
    concat = "".join(f"[a{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=0:a=1[out]"
    cmd = ["ffmpeg", "-v", "error", "-y", *sum((["-i", str(p)] for p in parts), []),
           "-filter_complex", filters + concat, "-map", "[out]", "-ac", "1", "-ar", "16000", str(out)]
    subprocess.run(cmd, check=True)
    return out


def audio_seconds(path: Path) -> float:
    import soundfile
    return soundfile.info(str(path)).duration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python stream_out.py demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where the sample and its cache go")
    parser.add_argument("--face_size", type=int, default=96, choices=(96, 288, 384))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    speech = make_speech(args.out)
    clip = make_presenter_clip(args.out / "presenter.mp4", seconds=round(audio_seconds(speech) + 0.5, 1),
                               path=FacePath(width=960, height=540, scale=1.2), audio=speech)
    print(f"sample presenter: {clip}")
    results = run_batch([clip], args.out / "cache", PreprocessConfig(face_size=args.face_size))
    print(summary_table(results))
    if results[0].status == "failed":
        return 1
    print(f"cache ready: {(args.out / 'cache' / results[0].name).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
