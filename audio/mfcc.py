"""The SyncNet (syncnet_python) audio front end: 13 MFCCs at 100 Hz, exactly `python_speech_features.mfcc(audio,
16000)` with its default arguments, as joonson/syncnet_python SyncNetInstance.py `evaluate()` calls it on the
16 kHz pcm_s16le samples `scipy.io.wavfile.read` returns (int16 values, not scaled to [-1, 1]).

The defaults of python_speech_features 0.6 (base.py `mfcc`/`fbank`/`get_filterbanks`/`lifter`, sigproc.py
`framesig`/`powspec`/`preemphasis`): pre-emphasis 0.97 (the first sample kept as it is); frames of
round_half_up(0.025 * rate) = 400 samples every round_half_up(0.01 * rate) = 160, as many as 1 + ceil((n - 400) /
160) (one when n <= 400), the last zero-padded; no window (rectangular); power spectrum |rfft(frame, 512)|^2 / 512;
26 triangular filters between 0 Hz and rate / 2 on the HTK mel scale 2595 * log10(1 + f / 700), their edges at FFT
bins floor(513 * f / rate); log of the filter energies (zeros replaced by float eps), DCT-II with orthonormal
scaling, the first 13 kept, lifter 1 + 11 * sin(pi * n / 22); then coefficient 0 replaced by the log of the frame's
total power (zero replaced by eps).
Written in numpy so the metric needs no extra package; tests/test_syncnet_v2.py holds it equal to
python_speech_features.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

import numpy as np

WINDOW_SECONDS = 0.025
STEP_SECONDS = 0.01
N_FFT = 512
N_FILTERS = 26
N_COEFFICIENTS = 13
PREEMPHASIS = 0.97
LIFTER = 22
EPS = np.finfo(float).eps  # what python_speech_features puts in place of a zero energy before its log


def mfcc(samples: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(frames, 13) float64 MFCCs, 100 a second, of mono samples in the int16 scale."""
    signal = np.asarray(samples, np.float64).reshape(-1)
    if signal.size == 0:
        raise ValueError("mfcc needs at least one sample")
    frames = split_frames(np.append(signal[0], signal[1:] - PREEMPHASIS * signal[:-1]), sample_rate)
    power = np.square(np.abs(np.fft.rfft(frames, N_FFT))) / N_FFT
    energy = power.sum(axis=1)
    bands = power @ mel_filters(sample_rate).T
    cepstra = np.log(np.where(bands == 0, EPS, bands)) @ dct_matrix()[:N_COEFFICIENTS].T
    cepstra *= 1 + (LIFTER / 2) * np.sin(np.pi * np.arange(N_COEFFICIENTS) / LIFTER)
    cepstra[:, 0] = np.log(np.where(energy == 0, EPS, energy))
    return cepstra


def round_half_up(value: float) -> int:
    """python_speech_features' rounding of the frame length and step (decimal ROUND_HALF_UP on the float)."""
    return int(Decimal(value).quantize(Decimal("1"), rounding=ROUND_HALF_UP))


def split_frames(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """Overlapping frames, the last padded with zeros to a full one."""
    length, step = round_half_up(WINDOW_SECONDS * sample_rate), round_half_up(STEP_SECONDS * sample_rate)
    count = 1 if signal.size <= length else 1 + -(-(signal.size - length) // step)
    padded = np.concatenate((signal, np.zeros((count - 1) * step + length - signal.size)))
    return padded[np.arange(count)[:, None] * step + np.arange(length)]


@lru_cache(maxsize=4)
def mel_filters(sample_rate: int) -> np.ndarray:
    """(26, 257) triangular filters, with python_speech_features' bin edges and ramps."""
    top_mel = 2595 * np.log10(1 + (sample_rate / 2) / 700.0)
    hz = 700 * (10 ** (np.linspace(0.0, top_mel, N_FILTERS + 2) / 2595.0) - 1)
    edges = np.floor((N_FFT + 1) * hz / sample_rate)
    filters = np.zeros((N_FILTERS, N_FFT // 2 + 1))
    for band, (low, centre, high) in enumerate(zip(edges[:-2], edges[1:-1], edges[2:])):
        rising, falling = np.arange(int(low), int(centre)), np.arange(int(centre), int(high))
        filters[band, rising] = (rising - low) / (centre - low)
        filters[band, falling] = (high - falling) / (high - centre)
    return filters


@lru_cache(maxsize=1)
def dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II over the 26 bands (scipy.fftpack.dct(type=2, norm='ortho') as a matrix)."""
    k, n = np.arange(N_FILTERS)[:, None], np.arange(N_FILTERS)[None, :]
    matrix = np.sqrt(2.0 / N_FILTERS) * np.cos(np.pi * k * (2 * n + 1) / (2 * N_FILTERS))
    matrix[0] /= np.sqrt(2.0)
    return matrix
