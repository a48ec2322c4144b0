"""engine/audio.py and engine/mel.py: any input decoded to 16 kHz mono; the Wav2Lip mel exactly; streaming windows."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from audio.decode import AudioError, load_audio
from audio.mel import StreamingMel, frame_windows, melspectrogram

REAL_SPEECH = Path("/usr/share/asterisk/sounds/en_US_f_Allison/vm-intro.wav")  # Debian asterisk-core-sounds-en-wav


def reference_mel(wav: np.ndarray) -> np.ndarray:
    """Rudrabha's audio.melspectrogram with librosa called as the pinned 0.7 behaved (reflect padding, Hann).
    Its librosa.stft(n_fft=800, hop 200, window "hann", center, reflect) is computed by torch.stft, an independent
    implementation of the same centred, reflect-padded, periodic-Hann transform: importing librosa's stft compiles
    its numba kernels, about 24 s on a fresh install. The filter bank is librosa's own."""
    import librosa.filters
    import torch
    from scipy import signal
    y = signal.lfilter([1, -0.97], [1], wav)
    d = torch.stft(torch.from_numpy(np.asarray(y, np.float64)), n_fft=800, hop_length=200, win_length=800,
                   window=torch.hann_window(800, periodic=True, dtype=torch.float64), center=True, pad_mode="reflect",
                   return_complex=True).numpy()
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    s = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(d))) - 20
    return np.clip((8 * (s + 100) / 100) - 4, -4, 4)


@pytest.fixture(scope="module")
def speech(media) -> np.ndarray:
    return load_audio(media["speech"])


@pytest.fixture(scope="module")
def real_speech() -> np.ndarray:
    if not REAL_SPEECH.is_file():
        pytest.skip("asterisk-core-sounds-en-wav is not installed (scripts/setup.sh installs it)")
    return load_audio(REAL_SPEECH)


def test_mel_equals_the_reference_on_synthetic_and_recorded_speech(speech, real_speech):
    for wav in (speech, real_speech):
        ours = melspectrogram(wav)
        assert ours.shape == (80, 1 + len(wav) // 200)
        assert np.abs(ours - reference_mel(wav)).max() < 1e-5
        assert ours.max() > 0 and ours.min() == -4  # speech and the silence floor both present


@pytest.mark.parametrize("seconds,frames", [(1, 22), (10, 247), (60, 1497)])
def test_window_count_follows_the_reference_tail_rule(seconds, frames):
    """Published counts for the reference inference: the video is ~3 frames shorter than the audio."""
    wav = np.random.default_rng(0).normal(0, 0.1, seconds * 16000)
    mel = melspectrogram(wav)
    windows = frame_windows(mel, fps=25)
    assert len(windows) == frames
    assert np.array_equal(windows[7], mel[:, 22:38])  # int(7 * 3.2) = 22
    assert np.array_equal(windows[-1], mel[:, -16:])


def test_windows_at_30_fps_use_the_float_index(speech):
    mel = melspectrogram(speech)
    windows = frame_windows(mel, fps=30)
    for i in (0, 1, 2, 3, 10, len(windows) - 2):
        start = int(i * (80.0 / 30))
        assert np.array_equal(windows[i], mel[:, start:start + 16])


@pytest.mark.parametrize("chunking", ["20ms", "random"])
def test_streaming_windows_equal_the_offline_ones(real_speech, chunking):
    offline = frame_windows(melspectrogram(real_speech))
    rng = np.random.default_rng(3)
    stream, got, pos = StreamingMel(), [], 0
    while pos < len(real_speech):
        size = 320 if chunking == "20ms" else int(rng.integers(1, 2000))
        got += stream.push(real_speech[pos:pos + size])
        pos += size
    got += stream.finish()
    assert len(got) == len(offline)
    assert np.abs(np.stack(got) - offline).max() < 1e-5


def test_streaming_lookahead_is_212_ms_and_no_more(speech):
    stream, received, emitted_at = StreamingMel(), 0, []
    for pos in range(0, len(speech), 320):
        chunk = speech[pos:pos + 320]
        received += len(chunk)
        emitted_at += [received] * len(stream.push(chunk))
    for i, at in enumerate(emitted_at):
        needed = 640 * i + 3400  # frame i's time + 16 mel frames + half an FFT = 212.5 ms at 16 kHz
        assert needed <= at < needed + 320  # out in the very chunk that completes it


def test_streaming_memory_stays_bounded():
    stream = StreamingMel()
    chunk = np.random.default_rng(0).normal(0, 0.1, 320)
    for _ in range(3000):  # 60 s
        stream.push(chunk)
    assert stream.windows_emitted > 1400
    assert stream._samples.size < 2000 and stream._mel.shape[1] <= 32


def test_digital_silence_and_nan_samples():
    silent = melspectrogram(np.zeros(16000))
    assert np.all(silent == -4)
    wav = np.random.default_rng(1).normal(0, 0.1, 16000)
    broken = wav.copy()
    broken[5000:5100] = np.nan
    fixed = wav.copy()
    fixed[5000:5100] = 0
    assert np.isfinite(melspectrogram(broken)).all()
    assert np.array_equal(melspectrogram(broken), melspectrogram(fixed))


def test_load_audio_decodes_any_format_rate_and_channel_count(media, tmp_path, real_speech):
    mp3 = tmp_path / "stereo44k.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media["speech"]), "-ac", "2", "-ar", "44100", str(mp3)],
                   check=True)
    wav = load_audio(mp3)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) / 16000 == pytest.approx(soundfile.info(str(media["speech"])).duration, abs=0.08)
    assert len(real_speech) / 16000 == pytest.approx(soundfile.info(str(REAL_SPEECH)).duration, abs=0.01)
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "notes.wav").write_text("not audio at all")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(tmp_path / "notes.wav")


def test_the_filter_bank_is_librosas_without_loading_librosa():
    """audio/mel.py builds the Slaney filter bank in numpy, so a render never imports librosa, scipy.signal or numba;
    it must stay librosa's (float32) bank."""
    import librosa
    from audio.mel import mel_basis
    reference = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, htk=False, norm="slaney")
    assert mel_basis().shape == reference.shape == (80, 401)
    assert np.array_equal(mel_basis(), reference)  # bit for bit: a training run must not drift from the reference


@pytest.mark.parametrize("channels, rate", [(2, 16000), (1, 48000), (2, 48000)])
def test_float_pcm_at_the_edge_of_float32_stays_finite_through_mixing_and_resampling(channels, rate):
    """±3.4e38 is a finite float32: a stereo mix of it overflowed to inf, and resampling 3e38 to NaN."""
    from audio.decode import PcmStream
    edge = np.full(rate // 10 * channels, 3.4e38, np.float32)
    edge[::7] = -3.4e38
    stream = PcmStream("float32", channels, rate)
    out = np.concatenate([stream.feed(edge.tobytes()), stream.flush()])
    assert out.size > 0 and np.isfinite(out).all() and np.abs(out).max() <= 1.5


def test_the_live_queue_holds_only_finite_samples_within_full_scale():
    from engine.render.sources import AudioBuffer
    buffer = AudioBuffer()
    buffer.push(np.array([np.nan, np.inf, -np.inf, 2.0, -3e38, 0.5], np.float32))
    assert buffer.take(6).tolist() == [0.0, 1.0, -1.0, 1.0, -1.0, 0.5]
