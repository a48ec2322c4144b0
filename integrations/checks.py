"""What both avatars' tests check on what came out of them, against the speech that went in. The engine's test
(tests/test_integrations.py) starts the servers and sets the environment (Setting below); run alone, point these
variables at your own server."""
from __future__ import annotations

import hashlib
import os
import socket
import wave
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import soxr

FRAME_SECONDS = 0.04


@dataclass(frozen=True)
class Setting:
    url: str            # a server with two sessions of room, and this token
    token: str
    presenter: str      # the presenter cache's path on the server
    speeches: tuple     # two wav files of speech, 24 kHz mono int16
    cached: frozenset   # sha1 of each of the presenter's cached frames (RGB): what a silent frame must be
    doomed: str         # the URL of a second server, and its pid after a space: the tests kill it mid-stream

    @classmethod
    def from_environment(cls) -> "Setting":
        env = os.environ
        with open(env["STREAM_WAV2LIP_CACHED"]) as hashes:
            cached = frozenset(line.strip() for line in hashes if line.strip())
        return cls(env["STREAM_WAV2LIP_URL"], env["STREAM_WAV2LIP_TOKEN"], env["STREAM_WAV2LIP_PRESENTER"],
                   tuple(env["STREAM_WAV2LIP_SPEECH"].split(os.pathsep)), cached, env["STREAM_WAV2LIP_DOOMED"])

    def session(self) -> dict:
        return {"data_dir": self.presenter}


def read_speech(path: str) -> tuple[bytes, int]:
    with wave.open(path) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def as_served(pcm: bytes, rate: int) -> np.ndarray:
    """The int16 samples the server plays for this speech: one HQ soxr stream to 16 kHz, then int16 as it writes."""
    resampler = soxr.ResampleStream(rate, 16000, 1, dtype="float32", quality="HQ")
    audio = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
    audio = np.concatenate([resampler.resample_chunk(audio), resampler.resample_chunk(np.zeros(0, np.float32),
                                                                                      last=True)])
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


def sha1(image: bytes) -> str:
    return hashlib.sha1(image).hexdigest()


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class Recording:
    """What an avatar gave, in order: per frame its pts (s), the sha1 of its pixels, its audio (int16, 16 kHz)."""
    pts: list = field(default_factory=list)
    images: list = field(default_factory=list)
    audio: list = field(default_factory=list)
    interrupted_after: Optional[int] = None  # frames recorded when the interruption came through

    def add(self, pts: float, image_sha1: Optional[str], audio: np.ndarray) -> None:
        self.pts.append(pts)
        self.images.append(image_sha1)
        self.audio.append(audio)


def check(recording: Recording, setting: Setting, first: np.ndarray, second: np.ndarray) -> None:
    """A conversation of [silence, `first` whole, silence, `second` interrupted, silence]."""
    pts = np.array(recording.pts)
    assert len(pts) >= 100, f"only {len(pts)} frames"
    steps = np.round(np.diff(pts) / FRAME_SECONDS)
    assert np.all(steps == 1), f"frames missing or repeated: steps {sorted(set(steps.tolist()))}"  # 25 a second
    sound = np.concatenate(recording.audio).astype(np.int32)
    per_frame = len(recording.audio[0])
    assert all(len(a) == per_frame for a in recording.audio)

    # the first utterance, whole, where it starts; the second, up to the cut; silence around and after them
    start = np.flatnonzero(sound)[0] - np.flatnonzero(first)[0]
    assert start > 10 * per_frame, "no silence before the speech"
    assert np.abs(sound[start:start + len(first)] - first).max() <= 2, "the first speech came out changed"
    rest = sound[start + len(first):]
    second_at = np.flatnonzero(rest)[0] - np.flatnonzero(second)[0]
    assert second_at > 25 * per_frame, "no silence between the utterances"
    heard = rest[second_at:]
    cut = np.flatnonzero(heard)[-1] + 1
    assert 0.2 * len(second) < cut < 0.9 * len(second), f"the second speech was not cut: {cut} of {len(second)}"
    wrong = np.flatnonzero(np.abs(heard[:cut] - second[:cut]) > 2)
    assert not len(wrong), (f"the second speech came out changed before the cut ({cut}): {len(wrong)} samples "
                            f"from {wrong[0]} to {wrong[-1]}, zeros there: {int((heard[wrong] == 0).sum())}")
    assert not rest[:second_at].any() and not heard[cut:].any()

    # after the interruption came through, at most one more frame of speech
    assert recording.interrupted_after is not None
    last_speech = (start + len(first) + second_at + cut - 1) // per_frame
    assert last_speech <= recording.interrupted_after + 1, \
        f"speech {last_speech - recording.interrupted_after} frames after the interruption"

    # the picture: as cached in the silences (half a second from any speech: the mouth's window of audio reaches
    # that far, and the speech's own pauses are not silences), not while the speech plays
    speaking = np.array([a.any() for a in recording.audio])
    near = np.convolve(speaking, np.ones(25), "same") > 0
    silent = [sha for sha, n in zip(recording.images, near) if not n and sha is not None]
    spoken = [sha for sha, s in zip(recording.images, speaking) if s and sha is not None]
    assert len(silent) >= 30 and all(sha in setting.cached for sha in silent), "silent frames are not the cached ones"
    assert len(spoken) >= 50 and np.mean([sha not in setting.cached for sha in spoken]) >= 0.6, \
        "the mouth does not move while the speech plays"
