"""Lip-sync metrics of face tracks: LSE-D, LSE-C and the AV offset, scored as joonson/syncnet_python scores them.

A track is 25 fps BGR face crops and the 16 kHz samples under them. Two judges embed it:
- `PaperJudge`: syncnet_python's S (syncnet_v2.model) on 224 x 224 crops and MFCC windows. Its numbers are the
  ones lip-sync papers report (Wav2Lip: LSE-D 6.386, LSE-C 7.789 on LRS2).
- `ExpertJudge`: one of our Wav2Lip SyncNet experts on the lower halves of its own crops and Wav2Lip's mel windows.
  Its embeddings are L2-normalised (distances in [0, 2]): good for checks during training, not comparable with
  papers.
Both go through the one scoring (`models.syncnet_v2.score`): mean distance per offset over ±vshift frames, LSE-D the
minimum, LSE-C the median minus it, and the AV offset in the reference's sign: -k when the audio lags the lips by k.

`read_face_track` reads a video that already is a face track exactly as the reference's evaluate() does (ffmpeg to
JPEG frames read by cv2, ffmpeg to pcm_s16le read by scipy), so that its scores equal the reference's.
`paper_crops` cuts run_pipeline.py's crops out of full frames, given face boxes.

python -m models.evaluate video.mp4 --syncnet_v2 syncnet_v2.model   (the command line is tools/evaluate.py)
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal
from scipy.io import wavfile

from audio.mel import melspectrogram
from audio.mfcc import mfcc
from core.errors import UserError
from core.ffmpeg import find_tool
from core.timebase import MEL_WINDOW, SAMPLE_RATE, SYNC_FRAMES, mel_start

from .blocks import SyncNet
from .syncnet_v2 import (BATCH_SIZE, CROP, VSHIFT, S, SyncScore, audio_windows, embed, lip_windows, score,
                         window_count)

CROP_SCALE = 0.40         # run_pipeline.py --crop_scale
SMOOTH_TAPS = 13          # its median filter over the boxes' centres and sizes
PAD_VALUE = 110           # the grey it pads frames with before cutting


class TrackError(UserError):
    """A face-track video that cannot be scored; the message says why, in one line."""


@dataclass(frozen=True)
class FaceTrack:
    frames: np.ndarray    # (T, H, W, 3) uint8 BGR, 25 fps
    samples: np.ndarray   # int16 16 kHz mono, starting with the first frame (as scipy's wavfile.read gives them)
    first: int = 0        # the first frame's index in the source video


class Judge(Protocol):
    def features(self, track: FaceTrack) -> tuple[np.ndarray, np.ndarray]:
        """(windows, D) video and audio features of the reference's windows over the track."""


@dataclass
class PaperJudge:
    """syncnet_python's S, fed as its evaluate() feeds it."""
    model: S
    batch_size: int = BATCH_SIZE

    def features(self, track: FaceTrack) -> tuple[np.ndarray, np.ndarray]:
        count = window_count(len(track.frames), len(track.samples))
        device = next(self.model.parameters()).device
        self.model.eval()
        return (embed(self.model.forward_lip, lip_windows(track.frames, count), device, self.batch_size),
                embed(self.model.forward_aud, audio_windows(mfcc(track.samples), count), device,
                      self.batch_size))


@dataclass
class ExpertJudge:
    """One of our SyncNet experts: crops at its size, lower halves of 5 frames on the channels, 0.2 s of mel."""
    syncnet: SyncNet
    batch_size: int = 32

    def features(self, track: FaceTrack) -> tuple[np.ndarray, np.ndarray]:
        size = self.syncnet.spec.size
        if track.frames.shape[1:] != (size, size, 3):
            raise ValueError(f"this expert judges {size} x {size} crops; got {track.frames.shape[1:3]}")
        count = window_count(len(track.frames), len(track.samples))
        lower = sliding_window_view(track.frames[:, size // 2:], SYNC_FRAMES, axis=0)  # (T-4, S/2, S, 3, 5)
        faces = lower.transpose(0, 4, 3, 1, 2)[:count]                                # (count, 5, 3, S/2, S)
        mel = melspectrogram(track.samples.astype(np.float32) / 32768)
        starts = [mel_start(i) for i in range(count)]
        audio = sliding_window_view(mel, MEL_WINDOW, axis=1)[:, starts].transpose(1, 0, 2)[:, None]
        device = next(self.syncnet.parameters()).device
        self.syncnet.eval()
        return (embed(lambda x: self.syncnet.embed_faces(x.flatten(1, 2) / 255), faces, device, self.batch_size),
                embed(self.syncnet.embed_audio, audio, device, self.batch_size))


def score_track(judge: Judge, track: FaceTrack, vshift: int = VSHIFT) -> SyncScore:
    return score(*judge.features(track), vshift)


def paper_crops(frames: Iterable[np.ndarray], face_boxes: np.ndarray, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """run_pipeline.py's crop_video on one track: the boxes' half-size and centre median-filtered over 13 frames,
    the frame padded with grey 110, a square of 2.8 half-sizes reaching 1.8 below the centre and 1.4 either side,
    resized to 224 x 224 (cv2's bilinear). frames: read one at a time; face_boxes: (T, 4) x1, y1, x2, y2 per frame,
    T >= 13, the filter's length (it pads with zeros at a track's ends, as in the reference, where tracks are at
    least 100 frames)."""
    boxes = np.asarray(face_boxes, np.float64)
    if len(boxes) < SMOOTH_TAPS:
        raise ValueError(f"a track to crop needs {SMOOTH_TAPS} frames or more (the box filter's length); got "
                         f"{len(boxes)}")
    half = signal.medfilt(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2, SMOOTH_TAPS)
    centre_y = signal.medfilt((boxes[:, 1] + boxes[:, 3]) / 2, SMOOTH_TAPS)
    centre_x = signal.medfilt((boxes[:, 0] + boxes[:, 2]) / 2, SMOOTH_TAPS)
    crops = np.empty((len(boxes), CROP, CROP, 3), np.uint8)
    for i, frame in enumerate(frames):
        bs = half[i]
        pad = int(bs * (1 + 2 * crop_scale))
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=PAD_VALUE)
        my, mx = centre_y[i] + pad, centre_x[i] + pad
        face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                      int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
        crops[i] = cv2.resize(face, (CROP, CROP))
    return crops


def read_face_track(video: Path, scratch: Path) -> FaceTrack:
    """A 224 x 224 face-track video with sound, read as SyncNetInstance.evaluate() reads it: every frame through
    ffmpeg's default JPEG (`-f image2 %06d.jpg`) and cv2.imread, the sound through
    `-async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000` and scipy's wavfile.read. scratch: an empty folder."""
    def ffmpeg(*args: str, what: str) -> None:
        result = subprocess.run([find_tool("ffmpeg"), "-nostdin", "-v", "error", "-y", "-i", str(video), *args],
                                capture_output=True, text=True)
        if result.returncode != 0:
            said = result.stderr.strip().splitlines()
            raise TrackError(f"{video}: {what} ({said[-1] if said else 'ffmpeg failed'})")

    ffmpeg("-threads", "1", "-f", "image2", str(scratch / "%06d.jpg"), what="ffmpeg could not read its frames")
    names = sorted(scratch.glob("*.jpg"))
    if not names:
        raise TrackError(f"{video}: has no video frames")
    frames = np.stack([cv2.imread(str(name)) for name in names])
    if frames.shape[1:3] != (CROP, CROP):
        raise TrackError(f"{video}: --cropped takes a {CROP} x {CROP} face track (as syncnet_python's "
                         f"run_pipeline.py writes them); this is {frames.shape[2]} x {frames.shape[1]}: leave "
                         f"out --cropped to find the face first")
    ffmpeg("-async", "1", "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", str(SAMPLE_RATE),
           str(scratch / "audio.wav"), what="has no audio track to judge")
    return FaceTrack(frames, wavfile.read(scratch / "audio.wav")[1])


if __name__ == "__main__":  # the command line sits above the video pipeline: see tools/evaluate.py
    from core.cli import exit_with, run_command
    from tools.evaluate import main
    exit_with(run_command(main))
