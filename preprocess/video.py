"""Reading source videos with ffmpeg: probe, decode once to 25 fps constant frame rate, extract 16 kHz mono audio.

Wav2Lip models were trained on 25 fps footage (5 frames <-> 16 mel frames), so every source is normalised to
25 fps here, once, and nothing downstream ever sees another rate.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from core.errors import UserError
from core.ffmpeg import Child, find_tool
from core.timebase import FPS, SAMPLE_RATE



class VideoError(UserError):
    """A source video that cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float
    duration: float
    has_audio: bool

    @property
    def expected_frames(self) -> int:
        """Frames after normalising to 25 fps (ffmpeg's fps filter rounds to the nearest output slot)."""
        return int(round(self.duration * FPS))


def probe(path: Path) -> VideoInfo:
    """Read stream facts with ffprobe; raise VideoError for missing, empty, corrupt or video-less files."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: the file is empty")
    cmd = [find_tool("ffprobe"), "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "ffprobe failed"
        raise VideoError(f"{path}: not a readable video ({reason})")
    meta = json.loads(result.stdout or "{}")
    streams = meta.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and s.get("disposition", {}).get("attached_pic") != 1), None)
    if video is None:
        raise VideoError(f"{path}: the file has no video stream")
    fps = _parse_rate(video.get("avg_frame_rate")) or _parse_rate(video.get("r_frame_rate"))
    duration = float(video.get("duration") or meta.get("format", {}).get("duration") or 0.0)
    if not fps or duration <= 0:
        raise VideoError(f"{path}: not a readable video (no frame rate or duration)")
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    return VideoInfo(path, int(video["width"]), int(video["height"]), fps, duration, has_audio)


def _parse_rate(text: str | None) -> float:
    if not text or text in ("0/0", "0"):
        return 0.0
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def decode_frames(info: VideoInfo) -> Iterator[np.ndarray]:
    """Yield BGR uint8 frames at exactly 25 fps CFR, decoding the source once through an ffmpeg pipe."""
    w, h = info.width, info.height
    frame_bytes = w * h * 3
    count = 0
    with Child(["ffmpeg", "-v", "error", "-nostdin", "-i", str(info.path), "-map", "0:v:0", "-vf", f"fps={FPS}",
                "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"], stdout=subprocess.PIPE, bufsize=frame_bytes) as child:
        # leaving early (the consumer stopped or failed) closes the child: no ffmpeg is left running
        while len(buf := child.stdout.read(frame_bytes)) == frame_bytes:
            count += 1
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
        code = child.wait()
    if code != 0 and count == 0:
        raise VideoError(f"{info.path}: ffmpeg could not decode any frame ({child.error()})")


def extract_audio(info: VideoInfo, out_wav: Path) -> bool:
    """Write the first audio track as 16 kHz mono PCM; return False (and write nothing) when there is none."""
    if not info.has_audio:
        return False
    cmd = [find_tool("ffmpeg"), "-v", "error", "-nostdin", "-y", "-i", str(info.path), "-map", "0:a:0",
           "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", str(out_wav)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise VideoError(f"{info.path}: audio track could not be decoded ({result.stderr.strip()[-200:]})")
    return True
