"""Where frames go. Every sink gets the same frames with their 640 audio samples and presentation time.

- Mp4Sink: H.264 + AAC file, muxed at close; nothing half-written is left (temp files, rename).
- MpegTsSink: live MPEG-TS (video + audio muxed, shared timestamps) to udp:// (or srt://, or a file) for an OBS
  Media Source; needs no driver.
- VirtualCameraSink: pyvirtualcam (BGR, no colour flip) + the audio played on a sound device.
Live sinks (`live = True`) are paced by the engine's clock; the file sink takes frames as fast as they come.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import soundfile

from .mel import SAMPLE_RATE
from .timeline import FPS

log = logging.getLogger("engine.sinks")


class SinkError(RuntimeError):
    """A sink that cannot start; the message says what to install or configure."""


class Sink(Protocol):
    live: bool

    def open(self, width: int, height: int) -> None: ...

    def write(self, frame: np.ndarray, audio: np.ndarray, pts: float) -> None: ...

    def close(self) -> None: ...


def to_int16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise SinkError("ffmpeg is not installed; run scripts/setup.sh")
    return path


class Mp4Sink:
    live = False

    def __init__(self, path: Path | str, crf: int = 18, preset: str = "veryfast"):
        self.path = Path(path)
        self.crf, self.preset = crf, preset
        self._proc: Optional[subprocess.Popen] = None
        self.frames = 0

    def open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=".render-", dir=self.path.parent))
        self._video = self._tmp / "video.mp4"
        self._audio = soundfile.SoundFile(str(self._tmp / "audio.wav"), "w", SAMPLE_RATE, 1, "PCM_16")
        self._proc = subprocess.Popen(
            [_ffmpeg(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}",
             "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
             "-pix_fmt", "yuv420p", str(self._video)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frame: np.ndarray, audio: np.ndarray, pts: float) -> None:
        self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        self._audio.write(audio)
        self.frames += 1

    def close(self) -> None:
        """Finish the file: the audio is exactly the frames' audio, so the two line up by construction."""
        if self._proc is None:
            return
        self._proc.stdin.close()
        err = self._proc.stderr.read().decode(errors="replace")
        self._audio.close()
        if self._proc.wait() != 0 or self.frames == 0:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._proc = None
            raise SinkError(f"could not write {self.path}: {err.strip()[-300:] or 'no frames'}")
        partial = self._tmp / f"final{self.path.suffix or '.mp4'}"
        result = subprocess.run([_ffmpeg(), "-v", "error", "-y", "-i", str(self._video), "-i", str(self._tmp / "audio.wav"),
                                 "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-b:a", "128k",
                                 "-movflags", "+faststart", str(partial)], capture_output=True, text=True)
        if result.returncode != 0:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise SinkError(f"could not mux {self.path}: {result.stderr.strip()[-300:]}")
        os.replace(partial, self.path)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._proc = None
        log.info("wrote %s (%d frames, %.2f s)", self.path, self.frames, self.frames / FPS)


class MpegTsSink:
    """One ffmpeg muxing our video (stdin) and audio (a second pipe) into MPEG-TS with shared timestamps."""
    live = True

    def __init__(self, url: str = "udp://127.0.0.1:23000?pkt_size=1316", bitrate: str = "4M"):
        self.url = url
        self.bitrate = bitrate
        self._proc: Optional[subprocess.Popen] = None

    def open(self, width: int, height: int) -> None:
        read_fd, self._audio_fd = os.pipe()
        self._proc = subprocess.Popen(
            # raw inputs need no probing; ffmpeg's default probe would wait for ~5 s of audio before reading video
            [_ffmpeg(), "-v", "error", "-y", "-probesize", "32", "-analyzeduration", "0", "-thread_queue_size", "64",
             "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", str(FPS), "-i", "pipe:0",
             "-probesize", "32", "-analyzeduration", "0", "-thread_queue_size", "512",
             "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", f"pipe:{read_fd}",
             "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
             "-g", str(FPS), "-b:v", self.bitrate, "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
             "-flush_packets", "1", "-f", "mpegts", self.url],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(read_fd,))
        os.close(read_fd)
        # audio goes through its own thread: ffmpeg reads the two pipes at its own pace, and one blocked write
        # must never stop the other
        self._audio_queue: queue.Queue = queue.Queue(maxsize=250)
        self._audio_thread = threading.Thread(target=self._write_audio, daemon=True)
        self._audio_thread.start()
        log.info("streaming MPEG-TS to %s", self.url)

    def _write_audio(self) -> None:
        with os.fdopen(self._audio_fd, "wb", buffering=0) as pipe:
            while (chunk := self._audio_queue.get()) is not None:
                try:
                    pipe.write(chunk)
                except BrokenPipeError:
                    return

    def write(self, frame: np.ndarray, audio: np.ndarray, pts: float) -> None:
        self._audio_queue.put(to_int16(audio))
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError as exc:
            raise SinkError(f"the MPEG-TS encoder stopped: {self._proc.stderr.read().decode()[-300:]}") from exc

    def close(self) -> None:
        if self._proc is None:
            return
        self._audio_queue.put(None)
        self._audio_thread.join(timeout=5)
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._proc = None


V4L2_HELP = ("on Linux the virtual camera needs v4l2loopback: `sudo apt install v4l2loopback-dkms` then "
             "`sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=\"stream-wav2lip\" exclusive_caps=1` "
             "(on Windows/macOS start OBS's virtual camera once, or use --outfile obs for the driver-free stream)")


class VirtualCameraSink:
    """Frames to a virtual camera, audio to a sound device (which OBS or a call app captures), paced together."""
    live = True

    def __init__(self, audio_device: Optional[str | int] = None, audio_delay_ms: float = 0.0,
                 camera_device: Optional[str] = None):
        self.audio_device = audio_device
        self.audio_delay_ms = audio_delay_ms
        self.camera_device = camera_device
        self._camera = self._stream = None
        self.offset_log: list[float] = []

    def open(self, width: int, height: int) -> None:
        try:
            import pyvirtualcam
        except ImportError as exc:
            raise SinkError(f"pyvirtualcam is not installed ({exc}); run scripts/setup.sh") from exc
        try:
            self._camera = pyvirtualcam.Camera(width, height, FPS, fmt=pyvirtualcam.PixelFormat.BGR,
                                               device=self.camera_device)
        except Exception as exc:  # pyvirtualcam raises RuntimeError/KeyError per backend
            raise SinkError(f"no virtual camera: {exc}; {V4L2_HELP}") from exc
        try:
            import sounddevice
            self._stream = sounddevice.OutputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16",
                                                    device=self.audio_device)
            self._stream.start()
        except Exception as exc:
            self._camera.close()
            raise SinkError(f"no audio output device {self.audio_device!r}: {exc} (list them with "
                            f"`python -m sounddevice`)") from exc
        self._delay = np.zeros(int(SAMPLE_RATE * max(self.audio_delay_ms, 0) / 1000), np.float32)
        self._frames = 0
        self._samples = 0
        log.info("virtual camera %s, audio on %s (latency %.0f ms)", self._camera.device,
                 self._stream.device, 1000 * self._stream.latency)

    def write(self, frame: np.ndarray, audio: np.ndarray, pts: float) -> None:
        if self._delay.size:  # --audio_delay_ms: hold the audio back by that much
            joined = np.concatenate([self._delay, audio])
            audio, self._delay = joined[:audio.size], joined[audio.size:]
        self._camera.send(frame)
        self._stream.write(np.frombuffer(to_int16(audio), np.int16))
        self._frames += 1
        self._samples += audio.size
        if self._frames % (FPS * 10) == 0:  # A/V offset kept: audio queued (incl. device latency) vs video sent
            offset = self._samples / SAMPLE_RATE + self._stream.latency - self._frames / FPS
            self.offset_log.append(offset)
            log.info("virtual camera A/V offset %.0f ms (audio behind video when positive)", offset * 1000)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
        if self._camera is not None:
            self._camera.close()
        self._camera = self._stream = None


class PreviewSink:
    """An OpenCV window showing the output (needs a display)."""
    live = True

    def open(self, width: int, height: int) -> None:
        import cv2
        if not os.environ.get("DISPLAY") and os.name != "nt":
            raise SinkError("--preview needs a display (DISPLAY is not set)")
        self._cv2 = cv2
        cv2.namedWindow("stream-wav2lip", cv2.WINDOW_NORMAL)

    def write(self, frame: np.ndarray, audio: np.ndarray, pts: float) -> None:
        self._cv2.imshow("stream-wav2lip", frame)
        self._cv2.waitKey(1)

    def close(self) -> None:
        self._cv2.destroyWindow("stream-wav2lip")
