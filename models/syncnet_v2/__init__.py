"""syncnet_python's SyncNet and its scoring: the LSE-D (min dist) and LSE-C (confidence) that lip-sync papers report.

Read in joonson/syncnet_python: SyncNetModel.py (class S), SyncNetInstance.py (`evaluate`, `calc_pdist`,
`loadParameters`), run_syncnet.py (batch_size 20, vshift 15, data/syncnet_v2.model), run_pipeline.py (face
tracks cropped and resized to 224 x 224, 25 fps, 16 kHz mono audio) and download_model.sh (where the file comes from):
- the file is a bare state dict of S (`netcnnaud.0.weight` ...; the current SyncNetInstance.py reads it with
  torch.load(weights_only=True)). `loadParameters` copies each of its entries into the model's own state dict, so an
  entry the file lacks keeps the model's initial value, and one the model lacks is a KeyError. The file predates
  BatchNorm's `num_batches_tracked` (torch 0.4.1; public code that audits its keys finds exactly the 14 counters
  absent): here they may be absent or present (their value is unused in eval mode); every other entry must be there
  with its shape, and nothing else may.
- frames are cv2's BGR uint8 images, unnormalised (0-255, as floats), stacked to (1, 3, T, H, W); window i is frames
  i..i+4, fed as (N, 3, 5, 224, 224) to `forward_lip`.
- audio: `python_speech_features.mfcc(audio, 16000)` (audio.mfcc here), transposed to (13, T) and cast to float32;
  window i is MFCC steps 4i..4i+19 (100 Hz against 25 fps), fed as (N, 1, 13, 20) to `forward_aud`.
- windows i = 0 .. min(frames, samples // 640) - 6 (the reference stops one window short of the last full one).
- `calc_pdist`: the audio features zero-padded by vshift rows at both ends; for video feature i the
  `pairwise_distance` (Euclidean norm of the difference plus 1e-6) to audio features i - vshift .. i + vshift.
  Their mean over frames per offset; offset = vshift - argmin; min dist = the minimum; confidence = median - min;
  framewise confidence = median - each frame's distance at the best offset, median-filtered over 9 frames.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from audio.mfcc import N_COEFFICIENTS, mfcc
from core.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

from ..predictor import pick_device
from ..registry import SYNCNET_V2, Family, describe_difference, load, shapes_of, what_is_it
from .arch import S

__all__ = ["S", "SyncScore", "audio_windows", "calc_pdist", "embed", "evaluate", "lip_windows", "load_syncnet_v2",
           "score", "window_count"]

log = logging.getLogger("models")

WHERE_FROM = ("use data/syncnet_v2.model from joonson/syncnet_python's download_model.sh "
              "(http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model)")
CROP = 224               # run_pipeline.py's crop size
WINDOW_FRAMES = 5
MFCC_PER_FRAME = 4       # 100 MFCC steps a second against 25 video frames
MFCC_WINDOW = 20         # five frames of MFCCs
VSHIFT = 15              # run_syncnet.py's default
BATCH_SIZE = 20          # run_syncnet.py's default
MEDIAN_TAPS = 9
Device = Union[str, torch.device, None]


def what_syncnet_v2_is_not(state: dict, container: str) -> str:
    """What a state dict that is not syncnet_v2.model is, as far as its keys tell."""
    known = what_is_it(state, container)
    if known is not None and known[0] == "syncnet":
        return "this is Wav2Lip's SyncNet lip-sync expert (face_encoder/audio_encoder), not syncnet_python's S"
    if known is not None and known[0] != "syncnet_v2":
        return f"this is {known[1]}, not syncnet_python's S"
    shapes = shapes_of(state)
    return f"not syncnet_python's S ({len(state)} entries): {describe_difference(shapes, SYNCNET_V2.expected(shapes))}"


FAMILY = Family((SYNCNET_V2,), WHERE_FROM, what_syncnet_v2_is_not)


def load_syncnet_v2(path: Union[str, Path], device: Device = None) -> S:
    """S from the released syncnet_v2.model, in eval mode on `device` (None: CUDA when present, else CPU). Raises
    CheckpointError, one line, for a missing, corrupt or different file."""
    return load(path, FAMILY).model.to(pick_device(None if device is None else str(device)))


@dataclass
class SyncScore:
    """The reference's results. `dists[k]` is the mean distance at offset vshift - k; a positive offset means each
    frame's sound lies that many frames earlier in the audio track."""
    offset: int                        # AV offset in frames
    min_dist: float                    # LSE-D
    confidence: float                  # LSE-C: median - min of `dists`
    dists: np.ndarray                  # (2 * vshift + 1,) mean distance per offset
    framewise_confidence: np.ndarray   # (windows,) median - distance at the best offset, 9-tap median filtered


def window_count(frame_count: int, sample_count: int) -> int:
    """How many windows the reference scores: min(frames, samples // 640) - 5."""
    count = min(frame_count, sample_count // SAMPLES_PER_FRAME) - WINDOW_FRAMES
    if count < 1:
        raise ValueError(f"SyncNet scoring needs at least {WINDOW_FRAMES + 1} frames and "
                         f"{(WINDOW_FRAMES + 1) * SAMPLES_PER_FRAME} samples of 16 kHz audio; got {frame_count} "
                         f"frames and {sample_count} samples")
    return count


def lip_windows(frames: Union[np.ndarray, Sequence[np.ndarray]], count: int) -> np.ndarray:
    """(count, 3, 5, 224, 224) windows of BGR 224 x 224 crops (T, 224, 224, 3), channels kept in cv2's order. A view
    of the frames: `embed` casts each batch to float32 (exact for uint8, as the reference's cast)."""
    video = np.asarray(frames)
    if video.ndim != 4 or video.shape[1:] != (CROP, CROP, 3):
        raise ValueError(f"lip_windows takes BGR crops (T, {CROP}, {CROP}, 3); got {video.shape}")
    if not 1 <= count <= len(video) - WINDOW_FRAMES + 1:
        raise ValueError(f"{len(video)} frames hold at most {len(video) - WINDOW_FRAMES + 1} windows; asked {count}")
    windows = sliding_window_view(video.transpose(3, 0, 1, 2), WINDOW_FRAMES, axis=1)  # (3, T - 4, H, W, 5)
    return windows.transpose(1, 0, 4, 2, 3)[:count]


def audio_windows(coefficients: np.ndarray, count: int) -> np.ndarray:
    """(count, 1, 13, 20) float32 windows of the (steps, 13) MFCCs `audio.mfcc.mfcc` returns, 4 steps apart."""
    steps = np.asarray(coefficients)
    if steps.ndim != 2 or steps.shape[1] != N_COEFFICIENTS:
        raise ValueError(f"audio_windows takes (steps, {N_COEFFICIENTS}) MFCCs; got {steps.shape}")
    needed = (count - 1) * MFCC_PER_FRAME + MFCC_WINDOW
    if count < 1 or len(steps) < needed:
        raise ValueError(f"{count} windows need {needed} MFCC steps; got {len(steps)}")
    windows = sliding_window_view(steps.T, MFCC_WINDOW, axis=1)[:, :count * MFCC_PER_FRAME:MFCC_PER_FRAME]
    return windows.transpose(1, 0, 2)[:, None].astype(np.float32)


@torch.inference_mode()
def embed(forward: Callable[[torch.Tensor], torch.Tensor], windows: np.ndarray, device: torch.device,
          batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(N, 1024) float32 features of `windows` through `forward` (S.forward_lip or S.forward_aud), in batches."""
    batches = (torch.from_numpy(np.ascontiguousarray(windows[start:start + batch_size], dtype=np.float32))
               for start in range(0, len(windows), batch_size))
    return torch.cat([forward(batch.to(device)).float().cpu() for batch in batches]).numpy()


def calc_pdist(feat1: np.ndarray, feat2: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
    """(N, 2 * vshift + 1): column k is the distance from video feature i to audio feature i + k - vshift (zeros
    beyond the ends), as the reference's list of per-frame rows."""
    video, audio = torch.from_numpy(np.asarray(feat1, np.float32)), torch.from_numpy(np.asarray(feat2, np.float32))
    if video.ndim != 2 or video.shape != audio.shape:
        raise ValueError(f"calc_pdist takes video and audio features of one shape (N, D); got {tuple(video.shape)} "
                         f"and {tuple(audio.shape)}")
    padded = F.pad(audio, (0, 0, vshift, vshift))
    shifted = padded.unfold(0, 2 * vshift + 1, 1).transpose(1, 2)  # (N, 2 * vshift + 1, D)
    return F.pairwise_distance(video[:, None, :], shifted).numpy()


def score(video_feats: np.ndarray, audio_feats: np.ndarray, vshift: int = VSHIFT) -> SyncScore:
    """Offset, LSE-D, LSE-C and the framewise confidence from the two streams' features, as `evaluate()`."""
    per_frame = torch.from_numpy(calc_pdist(video_feats, audio_feats, vshift))
    mean = per_frame.T.contiguous().mean(1)  # the reference's stack(dists, 1) and mean over frames
    min_dist, best = torch.min(mean, 0)
    median = torch.median(mean)
    framewise = (median - per_frame[:, best]).numpy()
    return SyncScore(offset=vshift - int(best), min_dist=float(min_dist), confidence=float(median - min_dist),
                     dists=mean.numpy(), framewise_confidence=signal.medfilt(framewise, kernel_size=MEDIAN_TAPS))


def evaluate(model: S, frames: Union[np.ndarray, Sequence[np.ndarray]], samples: np.ndarray, vshift: int = VSHIFT,
             batch_size: int = BATCH_SIZE) -> SyncScore:
    """The reference's `evaluate()` on 25 fps BGR 224 x 224 face crops and their 16 kHz mono samples (int16 scale,
    as scipy's wavfile.read gives pcm_s16le)."""
    frame_count, sample_count = len(frames), len(samples)
    if sample_count != frame_count * SAMPLES_PER_FRAME:
        log.warning("audio (%.4f s) and video (%.4f s) lengths differ", sample_count / SAMPLE_RATE, frame_count / FPS)
    count = window_count(frame_count, sample_count)
    model.eval()
    device = next(model.parameters()).device
    video_feats = embed(model.forward_lip, lip_windows(frames, count), device, batch_size)
    audio_feats = embed(model.forward_aud, audio_windows(mfcc(samples), count), device, batch_size)
    return score(video_feats, audio_feats, vshift)
