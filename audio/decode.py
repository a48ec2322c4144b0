"""Audio in, always as 16 kHz mono float32, from three kinds of source:

- files the user names (any format and rate ffmpeg reads, a video's sound track included), decoded as a stream of
  chunks, so an hour of audio costs the memory of a few seconds of it;
- uploads from the network (POST /speak): untrusted bytes, decoded by an ffmpeg that may read only the upload and
  only the audio formats in ACCEPTED (a playlist or concat list, which could make ffmpeg open local files or URLs,
  is refused), and that is stopped the moment the decoded audio passes the duration cap;
- raw PCM from a WebSocket client, through one streaming resampler per client (PcmStream).
"""
from __future__ import annotations

import logging
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from core.errors import UserError
from core.ffmpeg import TRUNCATED_BELOW, Child, find_tool
from core.threads import Worker
from core.timebase import SAMPLE_RATE

log = logging.getLogger("audio.decode")

CHUNK_SECONDS = 1.0
# ffmpeg demuxer names an upload may be read by, and what users call them
ACCEPTED = {"wav": "wav", "mp3": "mp3", "flac": "flac", "ogg": "ogg/opus", "mov": "m4a/mp4/mov",
            "matroska": "webm/mkv", "aac": "aac"}
ISO_MEDIA_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"}
# the only decoders an upload may reach: a video or subtitle stream in a container is never decoded
AUDIO_DECODERS = ("pcm_s16le,pcm_s16be,pcm_s24le,pcm_s32le,pcm_f32le,pcm_f64le,pcm_u8,pcm_alaw,pcm_mulaw,mp3float,"
                  "mp3,mp2float,flac,vorbis,libvorbis,opus,libopus,aac,aac_fixed,alac")
RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
PCM_FORMATS = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}


class AudioError(UserError):
    """An audio input that cannot be used; the message says why, in one line."""


class AudioTooLong(AudioError):
    """Decoding stopped at the duration cap."""


def rms(samples: np.ndarray) -> float:
    """Root-mean-square level of float samples (1.0 = full scale)."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def _decode_args(source: str, *input_options: str) -> list[str]:
    return ["ffmpeg", "-v", "error", "-nostdin", *input_options, "-i", source, "-map", "0:a:0", "-ac", "1",
            "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]


def _read_samples(child: Child, chunk_samples: int) -> Iterator[np.ndarray]:
    while block := child.stdout.read(chunk_samples * 4):
        usable = len(block) - len(block) % 4
        yield np.frombuffer(block[:usable], np.float32).copy()


def _no_audio_reason(child: Child) -> str:
    text = child.error()
    return "it has no audio track" if "matches no streams" in text else text


# --- files the user names ---------------------------------------------------------------------------------------
def stream_audio(path: Path | str, chunk_seconds: float = CHUNK_SECONDS) -> Iterator[np.ndarray]:
    """The file's first audio track as 16 kHz mono float32 chunks (the last one shorter)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    got = 0
    # file:// only: a local playlist cannot send ffmpeg to a URL
    with Child(_decode_args(str(path), "-protocol_whitelist", "file"), stdout=subprocess.PIPE) as child:
        for chunk in _read_samples(child, int(chunk_seconds * SAMPLE_RATE)):
            got += chunk.size
            yield chunk
        if child.wait() != 0:
            raise AudioError(f"{path}: not a readable audio file ({_no_audio_reason(child)})")
    if got == 0:
        raise AudioError(f"{path}: holds no audio samples")


def load_audio(path: Path | str) -> np.ndarray:
    """A whole (short) file at once: training clips, calibration speech, tests."""
    return np.concatenate(list(stream_audio(path)))


def declared_seconds(path: Path) -> Optional[float]:
    """How long the file says it is: a WAV's data chunk size, else the container's duration (None: unknown)."""
    wav = _wav_declared_seconds(path)
    if wav is not None:
        return wav
    result = subprocess.run([find_tool("ffprobe"), "-v", "error", "-select_streams", "a:0", "-show_entries",
                             "stream=duration:format=duration", "-of", "csv=p=0", str(path)],
                            capture_output=True, text=True)
    for value in result.stdout.split():
        try:
            return float(value.strip(","))
        except ValueError:
            continue
    return None


def _wav_declared_seconds(path: Path) -> Optional[float]:
    """RIFF/WAVE: data bytes the header announces / bytes per second. ffprobe instead trusts the file's size."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = None
        while chunk := f.read(8):
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"fmt ":
                fmt = f.read(size + size % 2)
                byte_rate = struct.unpack("<I", fmt[8:12])[0] if len(fmt) >= 12 else None
            elif kind == b"data":
                # 0 and 0xFFFFFFFF mean "unknown" (a stream written by a pipe)
                return size / byte_rate if byte_rate and 0 < size < 0xFFFFFFFF else None
            else:
                f.seek(size + size % 2, 1)
    return None


@dataclass(frozen=True)
class AudioFile:
    path: Path
    samples: int
    level: float                      # RMS over the whole file
    declared: Optional[float]         # seconds the container announces

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


def check_files(paths: Iterable[Path | str], allow_truncated: bool = False) -> list[AudioFile]:
    """Decode each file once, as a stream, before anything else is loaded: unreadable, empty or truncated files
    fail now, in one line, and the caller learns the length and level of what it will play."""
    checked = []
    paths = [Path(p) for p in paths]
    if not paths:
        raise AudioError("no audio file given (--audio_files a.wav b.mp3 …)")
    for path in paths:
        samples, energy = 0, 0.0
        for chunk in stream_audio(path, chunk_seconds=10.0):
            samples += chunk.size
            energy += float(np.square(chunk, dtype=np.float64).sum())
        declared = declared_seconds(path)
        info = AudioFile(path, samples, float(np.sqrt(energy / samples)), declared)
        if declared and info.seconds < TRUNCATED_BELOW * declared:
            message = (f"{path}: decoded {info.seconds:.2f} s of the {declared:.2f} s it declares: the file is "
                       f"truncated or damaged")
            if not allow_truncated:
                raise AudioError(message + " (pass --allow_truncated to use what is there)")
            log.warning("%s; using what is there (--allow_truncated)", message)
        checked.append(info)
    return checked


def stream_files(paths: Iterable[Path | str], chunk_seconds: float = CHUNK_SECONDS) -> Iterator[np.ndarray]:
    """Several files back to back, as one 16 kHz mono stream."""
    for path in paths:
        yield from stream_audio(path, chunk_seconds)


# --- uploads ------------------------------------------------------------------------------------------------------
def decode_upload(data: bytes, max_seconds: float, timeout: float = 30.0) -> np.ndarray:
    """Untrusted bytes that should be an audio file -> 16 kHz mono float32.

    ffmpeg reads them from a pipe, may use no protocol but that pipe, may only pick a demuxer in ACCEPTED and only
    an audio decoder in AUDIO_DECODERS, so a playlist, concat list or image is an AudioError, no other file or URL is
    ever opened, and no video or subtitle decoder ever runs on upload bytes. MP4/M4A/MOV can keep
    their index at the end, which a pipe cannot reach: those go through a private temporary file instead, read with
    the mov demuxer forced, the file protocol only and external references off. Decoding stops as soon as the
    output passes `max_seconds` (AudioTooLong), so memory is bounded by the cap, not by what the upload holds."""
    if not data:
        raise AudioError("empty upload: send the audio file's bytes")
    formats = ",".join(ACCEPTED)
    if data[4:8] in ISO_MEDIA_BOXES:
        with tempfile.NamedTemporaryFile(prefix="upload-", suffix=".m4a") as tmp:
            tmp.write(data)
            tmp.flush()
            args = _decode_args(tmp.name, "-protocol_whitelist", "file", "-format_whitelist", "mov", "-f", "mov",
                                "-enable_drefs", "0", "-codec_whitelist", AUDIO_DECODERS)
            return _decode_capped(args, None, max_seconds, timeout, tmp.name)
    args = _decode_args("pipe:0", "-protocol_whitelist", "pipe", "-format_whitelist", formats,
                        "-codec_whitelist", AUDIO_DECODERS)
    return _decode_capped(args, data, max_seconds, timeout, "pipe:0")


def _decode_capped(args: list[str], stdin_data: Optional[bytes], max_seconds: float, timeout: float,
                   source: str) -> np.ndarray:
    limit = int(max_seconds * SAMPLE_RATE)
    chunks, got = [], 0
    with Child(args, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
               stdout=subprocess.PIPE) as child:
        feeder = Worker(_feed, "decode-feed", (child, stdin_data)) if stdin_data else None
        if feeder:
            feeder.start()
        watchdog = threading.Timer(timeout, child.kill)
        watchdog.start()
        try:
            for chunk in _read_samples(child, SAMPLE_RATE):
                got += chunk.size
                if got > limit:
                    raise AudioTooLong(f"longer than {max_seconds:.0f} s: decoding stopped there")
                chunks.append(chunk)
            code = child.wait()
        finally:
            watchdog.cancel()
            child.kill()
            if feeder:
                feeder.join(timeout=5)
        if code != 0:
            raise AudioError(_upload_reason([line.replace(source, "upload") for line in child.messages()]))
    if got == 0:
        raise AudioError("the upload holds no audio samples")
    return np.concatenate(chunks)


def _feed(child: Child, data: bytes) -> None:
    try:
        child.stdin.write(data)
        child.stdin.close()
    except OSError:  # ffmpeg stopped reading (refused format, cap reached): nothing more to give it
        pass


def _upload_reason(ffmpeg_says: list[str]) -> str:
    accepted = ", ".join(ACCEPTED.values())
    said = " | ".join(ffmpeg_says)
    if "not on whitelist" in said or "Invalid data" in said:
        return f"not an audio file in an accepted format ({accepted})"
    if "matches no streams" in said:
        return "the upload has no audio track"
    return f"not a readable audio file ({ffmpeg_says[-1] if ffmpeg_says else 'ffmpeg failed'}); accepted: {accepted}"


# --- raw PCM from a client ------------------------------------------------------------------------------------------
class PcmStream:
    """One client's little-endian interleaved PCM -> 16 kHz mono float32, chunk by chunk (float samples past
    full scale are clipped to ±1).

    A single streaming resampler (soxr) runs over the whole utterance, so the output equals resampling the whole
    signal at once, sample for sample, whatever the chunk sizes; flush() gives the resampler's tail."""

    def __init__(self, fmt: str, channels: int, rate: int):
        if fmt not in PCM_FORMATS or channels not in (1, 2) or rate not in RATES:
            raise ValueError(f"unsupported PCM: {fmt}, {channels} channel(s), {rate} Hz")
        self.dtype, self.channels, self.rate = PCM_FORMATS[fmt], channels, rate
        self._resampler = None
        if rate != SAMPLE_RATE:
            import soxr
            self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def feed(self, data: bytes) -> np.ndarray:
        frame = self.dtype.itemsize * self.channels
        if len(data) % frame:
            raise AudioError(f"a {self.dtype.name} chunk with {self.channels} channel(s) must be a multiple of "
                             f"{frame} bytes; got {len(data)}")
        pcm = np.frombuffer(data, self.dtype).astype(np.float32)
        if self.dtype.kind == "i":
            pcm /= 32768.0
        elif not np.all(np.isfinite(pcm)):
            raise AudioError("the chunk holds NaN or infinite samples")
        else:  # past full scale: clipped here, so the mix and the resampler cannot overflow to inf and NaN
            np.clip(pcm, -1.0, 1.0, out=pcm)
        pcm = pcm.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return self._resampler.resample_chunk(pcm) if self._resampler is not None else pcm

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
