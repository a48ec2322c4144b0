"""The Wav2Lip audio front end, exactly: 80-band mel at 80 frames/s and one 80x16 window per 25 fps video frame.

Parameters (identical in every reference repository): 16 kHz, pre-emphasis 0.97, STFT n_fft 800 / hop 200 /
win 800 (periodic Hann, centred, reflect padding as in the pinned librosa 0.7), |STFT| -> 80 Slaney mel bands
55-7600 Hz, 20*log10(max(1e-5, m)) - 20, then clip(8*(S+100)/100 - 4, -4, 4). Written in numpy (librosa only
supplies the reference filter bank the tests compare ours to), so there is no numba compile and the streaming
version shares every line.

Frame i at fps f uses mel[:, int(i*80/f) : +16], i.e. it looks about 212 ms ahead: the latency floor of any
streaming Wav2Lip. The last window is mel[:, T-16:], after which the reference stops.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from core.timebase import FPS, HOP, MEL_WINDOW, N_FFT, N_MELS, SAMPLE_RATE, mel_start

log = logging.getLogger("audio.mel")

PREEMPHASIS = 0.97
SILENCE = -4.0  # the value of digital silence after normalisation


MEL_STEP = 200.0 / 3                  # Slaney's mel scale (librosa's htk=False): linear below 1 kHz...
LOG_FROM_HZ = 1000.0
LOG_FROM_MEL = LOG_FROM_HZ / MEL_STEP
LOG_STEP = np.log(6.4) / 27.0         # ...logarithmic above


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, np.float64)
    mels = hz / MEL_STEP
    above = hz >= LOG_FROM_HZ
    mels[above] = LOG_FROM_MEL + np.log(hz[above] / LOG_FROM_HZ) / LOG_STEP
    return mels


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, np.float64)
    hz = MEL_STEP * mels
    above = mels >= LOG_FROM_MEL
    hz[above] = LOG_FROM_HZ * np.exp(LOG_STEP * (mels[above] - LOG_FROM_MEL))
    return hz


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """The reference's filter bank, librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600,
    htk=False, norm="slaney"), computed here in numpy with librosa's arithmetic, bit for bit (its float32 result, as
    float64): a render then loads neither librosa nor scipy.signal nor numba (1.7 s of start-up).
    tests/test_audio.py holds it equal to librosa's."""
    fft_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array([55.0]))[0], hz_to_mel(np.array([7600.0]))[0], N_MELS + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_hz)
    weights = np.maximum(0, np.minimum(-ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]))
    weights = weights.astype(np.float32)  # librosa fills a float32 array, then scales it in place
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float64)


@lru_cache(maxsize=1)
def hann_window() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic ("fftbins=True") Hann, librosa's default


def sanitise(wav: np.ndarray) -> np.ndarray:
    """float64 mono with NaN/inf replaced by silence (TTS voices emit them; the reference then crashes)."""
    wav = np.asarray(wav, np.float64).reshape(-1)
    bad = ~np.isfinite(wav)
    if bad.any():
        log.warning("audio has %d NaN/inf samples; treating them as silence", int(bad.sum()))
        wav = np.where(bad, 0.0, wav)
    return wav


def preemphasis(wav: np.ndarray, previous: float = 0.0) -> np.ndarray:
    """y[n] = x[n] - 0.97 x[n-1]; `previous` is x[-1] (0 at the start, as scipy's lfilter)."""
    shifted = np.concatenate([[previous], wav[:-1]])
    return wav - PREEMPHASIS * shifted


def frames_to_mel(frames: np.ndarray) -> np.ndarray:
    """(n, 800) windows of pre-emphasised audio -> (80, n) normalised mel."""
    magnitude = np.abs(np.fft.rfft(frames * hann_window(), n=N_FFT, axis=1))  # (n, 401)
    mel = mel_basis() @ magnitude.T
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4).astype(np.float32)


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """numpy's 'reflect' padding (edge sample not repeated) as an index map into [0, length)."""
    index = np.abs(index)
    period = 2 * (length - 1) if length > 1 else 1
    index = index % period
    return np.where(index >= length, period - index, index)


def frame_count(num_samples: int) -> int:
    return 1 + num_samples // HOP


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Whole-signal mel, (80, 1 + len(wav)//200)."""
    y = preemphasis(sanitise(wav))
    n = len(y)
    starts = np.arange(frame_count(n)) * HOP - N_FFT // 2
    index = reflect_index(starts[:, None] + np.arange(N_FFT)[None, :], max(n, 1))
    frames = y[index] if n else np.zeros((1, N_FFT))
    return frames_to_mel(frames)


def frame_windows(mel: np.ndarray, fps: float = FPS) -> np.ndarray:
    """One (80,16) window per video frame with the reference tail rule -> (N, 80, 16)."""
    mel = pad_to_window(mel)
    total = mel.shape[1]
    windows = []
    i = 0
    while mel_start(i, fps) + MEL_WINDOW <= total:
        start = mel_start(i, fps)
        windows.append(mel[:, start:start + MEL_WINDOW])
        i += 1
    windows.append(mel[:, total - MEL_WINDOW:])
    return np.stack(windows)


def pad_to_window(mel: np.ndarray) -> np.ndarray:
    if mel.shape[1] >= MEL_WINDOW:
        return mel
    return np.pad(mel, ((0, 0), (0, MEL_WINDOW - mel.shape[1])), constant_values=SILENCE)


class StreamingMel:
    """Wav2Lip mel windows from audio arriving in chunks of any size (e.g. 20 ms from a microphone or TTS).

    push() returns every window whose audio has fully arrived: window i needs samples up to 640*i + 3400 at
    25 fps (its 16 mel frames plus half an FFT), ~212 ms after frame i's own time and not a sample more.
    finish() ends the utterance with the reference's tail rule. The windows equal frame_windows(melspectrogram(all
    audio)) exactly, the first and last ones included, because the start and end reflect padding are rebuilt here.
    """

    def __init__(self, fps: float = FPS):
        self.fps = fps
        self._reset()

    def _reset(self) -> None:
        self._samples = np.zeros(0)      # pre-emphasised audio kept, starting at absolute sample _sample_base
        self._sample_base = 0
        self._head = np.zeros(0)          # the first N_FFT//2 + 1 samples, for the start reflection
        self._last_raw = 0.0
        self._received = 0
        self._mel = np.zeros((N_MELS, 0), np.float32)  # mel columns kept, starting at column _mel_base
        self._mel_base = 0
        self._next_column = 0
        self._next_window = 0

    @property
    def windows_emitted(self) -> int:
        return self._next_window

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        raw = sanitise(pcm)
        if raw.size == 0:
            return []
        y = preemphasis(raw, self._last_raw)
        self._last_raw = float(raw[-1])
        self._samples = np.concatenate([self._samples, y])
        if self._head.size <= N_FFT // 2:
            self._head = np.concatenate([self._head, y])[: N_FFT // 2 + 1]
        self._received += y.size
        # column j is final once its window lies inside the audio received so far (no end padding needed)
        self._compute_columns(until=(self._received - N_FFT // 2) // HOP + 1 if self._received >= N_FFT // 2 else 0)
        return self._take_windows(final=False)

    def finish(self) -> list[np.ndarray]:
        """End of the utterance: the remaining windows, the last one being mel[:, T-16:]."""
        if self._received == 0:
            return []
        self._compute_columns(until=frame_count(self._received), total=self._received)
        windows = self._take_windows(final=True)
        self._reset()
        return windows

    def _compute_columns(self, until: int, total: int | None = None) -> None:
        if until <= self._next_column:
            return
        first = self._next_column * HOP - N_FFT // 2
        if total is None and first >= 0:  # every window inside the audio kept: strided views, no index arrays
            start = first - self._sample_base
            span = self._samples[start:start + (until - self._next_column - 1) * HOP + N_FFT]
            frames = np.lib.stride_tricks.sliding_window_view(span, N_FFT)[::HOP]
            silent = not span.any()  # digital silence (a live input with nobody talking) needs no FFT
        else:
            frames, silent = self._reflected_frames(until, total), False
        columns = np.full((N_MELS, len(frames)), SILENCE, np.float32) if silent else frames_to_mel(frames)
        self._mel = np.concatenate([self._mel, columns], axis=1)
        self._next_column = until
        keep_from = max(self._next_column * HOP - N_FFT // 2, 0)  # samples older than the next column's window
        if keep_from > self._sample_base:
            self._samples = self._samples[keep_from - self._sample_base:]
            self._sample_base = keep_from

    def _reflected_frames(self, until: int, total: int | None) -> np.ndarray:
        """Windows that reach before the first sample (start reflection) or past the last one (end of stream)."""
        columns = np.arange(self._next_column, until)
        absolute = columns[:, None] * HOP - N_FFT // 2 + np.arange(N_FFT)[None, :]
        if total is not None:  # end of stream: reflect at the end like the offline padding
            absolute = reflect_index(absolute, total)
        frames = np.empty(absolute.shape)
        from_head = absolute < 0
        if from_head.any():  # start reflection: y[-k] = y[k]
            frames[from_head] = self._head[-absolute[from_head]]
        rest = ~from_head
        frames[rest] = self._samples[absolute[rest] - self._sample_base]
        return frames

    def _take_windows(self, final: bool) -> list[np.ndarray]:
        windows = []
        while True:
            start = mel_start(self._next_window, self.fps)
            if start + MEL_WINDOW > self._next_column:
                break
            windows.append(self._column_slice(start))
            self._next_window += 1
        if final:
            windows.append(self._column_slice(max(self._next_column - MEL_WINDOW, 0)))
        # keep the columns the next window needs, and always the last MEL_WINDOW ones for the tail rule
        drop_before = min(mel_start(self._next_window, self.fps), self._next_column - MEL_WINDOW)
        if drop_before > self._mel_base:
            self._mel = self._mel[:, drop_before - self._mel_base:]
            self._mel_base = drop_before
        return windows

    def _column_slice(self, start: int) -> np.ndarray:
        window = self._mel[:, start - self._mel_base:start - self._mel_base + MEL_WINDOW]
        return pad_to_window(window).copy()
