"""The one place that knows how time, audio samples, mel frames and video frames relate.

Wav2Lip's numbers: 25 fps video and 16 kHz audio, so 640 samples a frame; an 800-sample STFT every 200 samples, so
80 mel frames a second (3.2 per video frame); each video frame hears the 16 mel frames (0.2 s) that start at
mel_start(frame); a SyncNet / training sample is 5 consecutive video frames. Everything else imports these names;
an output at 50 frames/s (OUTPUT_RATES) adds an in-between frame IN_BETWEEN_OFFSET after each.

Presentation times (pts) are integers in TIME_BASE, one audio sample: every frame at 25 or 50 frames/s starts on a
sample, so a timeline of any length is exact, and seconds are only computed at the edges (clock, events).
"""
from __future__ import annotations

from fractions import Fraction

FPS = 25                                   # video frames a second (every source is normalised to it)
OUTPUT_RATES = (FPS, 2 * FPS)              # an output runs at the model's rate, or with an in-between frame after each
SAMPLE_RATE = 16000                        # audio samples a second (every input is resampled to it)
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS     # 640: the audio shown with one video frame
TIME_BASE = Fraction(1, SAMPLE_RATE)       # the unit of every pts: one audio sample
IN_BETWEEN_OFFSET = SAMPLES_PER_FRAME // 2  # 320 (20 ms): an in-between frame's pts after its frame's
N_FFT = 800                                # STFT window (50 ms)
HOP = 200                                  # STFT hop (12.5 ms)
MEL_FPS = SAMPLE_RATE // HOP               # 80 mel frames a second
N_MELS = 80
MEL_WINDOW = 16                            # mel frames one video frame hears (200 ms)
MEL_SHAPE = (N_MELS, MEL_WINDOW)           # one video frame's mel window, as every lip model takes it
SYNC_FRAMES = 5                            # video frames in one SyncNet / training sample
LOOKAHEAD = (MEL_WINDOW - 1) * HOP + N_FFT // 2  # 3400 samples (212.5 ms): audio past a frame's time its window needs


def mel_start(frame: int, fps: float = FPS) -> int:
    """First mel frame of video frame `frame`'s window: the reference's float expression, floor included.

    Inference writes int(i * (80. / fps)) and training int(80. * (i / fps)); both give the same integer for every
    frame index below two million at 25 and 30 fps (checked), so one function serves both."""
    return int(frame * (MEL_FPS / fps))


def interpolated(fps: int) -> bool:
    """Does an output at `fps` show an in-between frame after each frame the lip model makes?"""
    return fps != FPS


def frames_for(samples: int) -> int:
    """Video frames that show `samples` of audio: every started frame counts."""
    return -(-samples // SAMPLES_PER_FRAME)


def seconds(samples: int) -> float:
    """Samples (or a pts) in seconds."""
    return samples / SAMPLE_RATE


def frame_pts(frame: int) -> int:
    """Video frame `frame`'s pts: where its audio starts."""
    return frame * SAMPLES_PER_FRAME


def slot(pts: int, fps: int) -> int:
    """The frame number a pts falls in, in an output at `fps` frames/s (the nearest; exact for our frames)."""
    return (pts * fps + SAMPLE_RATE // 2) // SAMPLE_RATE
