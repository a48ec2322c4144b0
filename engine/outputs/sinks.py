"""Where frames go. Every sink gets the same frames with their 640 audio samples and presentation time.

- Mp4Sink: a file, muxed at close in a scratch folder, then renamed into place: nothing half-written. H.264 + AAC;
  with alpha (BGRA frames) ProRes 4444 .mov or VP9 .webm.
- MpegTsSink: live MPEG-TS (video + audio muxed, shared timestamps) to udp:// (or srt://, or a file) for an OBS
  Media Source; needs no driver. WebmAlphaSink: the same live, as WebM with VP9 alpha (what OBS's Media Source
  reads transparency from).
- VirtualCameraSink: pyvirtualcam (BGR, no colour flip) + the audio played on a sound device.
Live sinks (`live = True`) are paced by the engine's clock; the file sink takes frames as fast as they come.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import subprocess
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from core.cli import OS_HINTS, describe, first_line
from core.errors import UserError
from core.ffmpeg import Child, find_tool
from core.scratch import make_scratch, publish, remove
from core.threads import Worker

from core.timebase import FPS, SAMPLE_RATE, slot

log = logging.getLogger("engine.outputs.sinks")


class SinkError(UserError):
    """A sink that cannot start; the message says what to install or configure."""


def to_int16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()


def writable_folder(path: Path) -> None:
    """Fail now, before any model loads, if `path`'s folder cannot be made or written."""
    folder = path.resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SinkError(f"{path}: cannot write there ({existing} is not a folder you can write to)")


def encoder_failure(encoder: Child) -> str:
    """ffmpeg's last word, with what to do when it is a full disk."""
    said = encoder.error()
    return f"{said} ({OS_HINTS[errno.ENOSPC]})" if "No space left on device" in said else said


def video_encoder(codec: str, live: bool, quality: int = 18, bitrate: str = "4M", fps: int = FPS) -> list[str]:
    """ffmpeg output options for H.264 with x264 (the CPU) or NVENC (the GPU that rendered the frames); live, a key
    frame every second."""
    if codec == "h264_nvenc":
        return (["-c:v", "h264_nvenc", "-preset", "p1", "-tune", "ll", "-g", str(fps), "-b:v", bitrate] if live
                else ["-c:v", "h264_nvenc", "-preset", "p4", "-rc", "vbr", "-cq", str(quality), "-b:v", "0"])
    return (["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(fps), "-b:v", bitrate]
            if live else ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(quality)])


class Slots:
    """A constant-rate output's frame slots: frame k belongs at k/fps seconds. The encoders take frames at a fixed
    rate, so a frame whose pts skips slots has the previous frame repeated, with silence, into the slots between,
    and a frame for a slot already written is dropped: the output keeps the clock's timing whatever reaches it.
    With `minutes`, slots past that many minutes are not written (a recording's cap, said once in the log)."""

    def __init__(self, fps: int, minutes: Optional[float] = None, name: str = ""):
        self.fps, self.next, self.name = fps, 0, name
        self.limit = None if minutes is None else max(1, round(minutes * 60 * fps))
        self.silence = np.zeros(SAMPLE_RATE // fps, np.float32)
        self._last: Optional[np.ndarray] = None

    @property
    def full(self) -> bool:
        return self.limit is not None and self.next >= self.limit

    def feed(self, frame: np.ndarray, audio: np.ndarray, pts: int,
             write: Callable[[np.ndarray, np.ndarray], None]) -> None:
        """write(frame, audio) for each slot up to and including the one `pts` falls in, below the limit."""
        number = slot(pts, self.fps)
        if number < self.next or self.full:
            return
        held = self._last if self._last is not None else frame
        for _ in range((number if self.limit is None else min(number, self.limit)) - self.next):
            write(held, self.silence)
        if self.limit is None or number < self.limit:
            write(frame, audio)
        self.next, self._last = number + 1, frame
        if self.full:
            log.warning("%s: the recording reached its cap of %g minutes (--record_minutes); later frames are not "
                        "recorded, and the file is finished when the run ends", self.name, self.limit / 60 / self.fps)


class NullSink:
    """A live output that discards everything: for benchmarks, and a session whose viewers are all on WebRTC."""
    live = True

    def open(self, width: int, height: int) -> None:
        pass

    def write(self, frame: Optional[np.ndarray], audio: np.ndarray, pts: int) -> None:
        pass

    def close(self) -> None:
        pass


ALPHA_FORMATS = ".mov (ProRes 4444) or .webm (VP9)"


class Mp4Sink:
    """A video file. Its suffix picks the format: H.264 + AAC (.mp4, .mkv, .mov), or with `alpha` (BGRA frames)
    ProRes 4444 + PCM (.mov) or VP9 with alpha + Opus (.webm). `max_minutes` caps a live recording."""
    live = False

    def __init__(self, path: Path | str, crf: int = 18, video_codec: str = "libx264", fps: int = FPS,
                 alpha: bool = False, max_minutes: Optional[float] = None):
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if alpha and self.suffix not in (".mov", ".webm"):
            raise SinkError(f"{self.path}: H.264 carries no alpha; write {ALPHA_FORMATS}, or fill a key colour "
                            f"(--background green)")
        writable_folder(self.path)
        self.crf, self.video_codec, self.fps, self.alpha = crf, video_codec, fps, alpha
        self.nvenc_capable = not alpha and self.suffix != ".webm"  # what NVENC could take over (engine/outputs/targets.py)
        self._encoder: Optional[Child] = None
        self.frames = 0
        self.published = False  # the file is in place, finished
        self._slots = Slots(fps, max_minutes, str(self.path))

    def _formats(self) -> tuple[list[str], list[str]]:
        """(video, audio) ffmpeg output options for this file."""
        if self.suffix == ".webm":  # libvpx codes the alpha plane at the colour's quality: lossless keeps it exact
            quality = ["-lossless", "1"] if self.alpha else ["-crf", str(self.crf + 13), "-b:v", "0"]
            return (["-c:v", "libvpx-vp9", *quality, "-row-mt", "1", "-cpu-used", "4",
                     "-pix_fmt", "yuva420p" if self.alpha else "yuv420p"], ["-c:a", "libopus", "-b:a", "96k"])
        if self.alpha:
            return ["-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le"], ["-c:a", "pcm_s16le"]
        return ([*video_encoder(self.video_codec, live=False, quality=self.crf), "-pix_fmt", "yuv420p"],
                ["-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"])

    def open(self, width: int, height: int) -> None:
        """Encode into a scratch folder beside the target; nothing appears at the target until close() muxes."""
        self._tmp = make_scratch(self.path.parent, f"render-{self.path.name}")
        self._video = self._tmp / f"video{self.suffix if self.suffix in ('.mov', '.webm') else '.mp4'}"
        self._audio = open(self._tmp / "audio.s16le", "wb")
        self._encoder = Child(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "rawvideo",
                               "-pix_fmt", "bgra" if self.alpha else "bgr24", "-s", f"{width}x{height}",
                               "-r", str(self.fps), "-i", "pipe:0", *self._formats()[0], str(self._video)],
                              stdin=subprocess.PIPE)

    def write(self, frame: np.ndarray, audio: np.ndarray, pts: int) -> None:
        self._slots.feed(frame, audio, pts, self._write)

    def _write(self, frame: np.ndarray, audio: np.ndarray) -> None:
        try:
            self._encoder.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            self._encoder.wait()
            raise SinkError(f"could not write {self.path}: the encoder stopped ({encoder_failure(self._encoder)})") \
                from None
        try:
            self._audio.write(to_int16(audio))
        except OSError as exc:  # a full disk, a quota
            raise SinkError(f"could not write {self.path}: {describe(exc)[0]}") from exc
        self.frames += 1

    def close(self) -> None:
        """Finish the file: the audio is exactly the frames' audio, so the two line up by construction."""
        if self._encoder is None:
            return
        encoder, self._encoder = self._encoder, None
        try:
            self._audio.close()
            try:
                encoder.stdin.close()
            except BrokenPipeError:
                pass
            if encoder.wait() != 0 or self.frames == 0:
                raise SinkError(f"could not write {self.path}: "
                                f"{encoder_failure(encoder) if self.frames else 'no frames'}")
            partial = self._tmp / f"final{self.path.suffix or '.mp4'}"
            result = subprocess.run([find_tool("ffmpeg"), "-v", "error", "-nostdin", "-y", "-i", str(self._video),
                                     "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1",
                                     "-i", str(self._tmp / "audio.s16le"), "-map", "0:v", "-map", "1:a",
                                     "-c:v", "copy", *self._formats()[1], str(partial)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise SinkError(f"could not mux {self.path}: {first_line(result.stderr[-300:])}")
            publish(partial, self.path)
            self.published = True
            log.info("wrote %s (%d frames, %.2f s)", self.path, self.frames, self.frames / self.fps)
        except OSError as exc:  # a full disk, a quota
            raise SinkError(f"could not write {self.path}: {describe(exc)[0]}") from exc
        finally:
            encoder.close()
            remove(self._tmp)


class MpegTsSink:
    """One ffmpeg muxing our video (stdin) and audio (a second pipe) into MPEG-TS with shared timestamps;
    `max_minutes` caps a recording (a .ts file)."""
    live = True
    pixel_format = "bgr24"

    def __init__(self, url: str = "udp://127.0.0.1:23000?pkt_size=1316", bitrate: str = "4M",
                 video_codec: str = "libx264", fps: int = FPS, max_minutes: Optional[float] = None):
        self.url = url
        self.bitrate, self.video_codec, self.fps = bitrate, video_codec, fps
        self.nvenc_capable = True
        self._encoder: Optional[Child] = None
        self._slots = Slots(fps, max_minutes, url)

    def _formats(self) -> list[str]:
        """ffmpeg's output options: codecs and container."""
        return [*video_encoder(self.video_codec, live=True, bitrate=self.bitrate, fps=self.fps), "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", "128k", "-flush_packets", "1", "-f", "mpegts"]

    def open(self, width: int, height: int) -> None:
        read_fd, self._audio_fd = os.pipe()
        self._encoder = Child(
            # raw inputs need no probing; ffmpeg's default probe would wait for ~5 s of audio before reading video
            ["ffmpeg", "-v", "error", "-nostdin", "-y", "-probesize", "32", "-analyzeduration", "0",
             "-thread_queue_size", "64", "-f", "rawvideo", "-pix_fmt", self.pixel_format, "-s", f"{width}x{height}",
             "-r", str(self.fps), "-i", "pipe:0",
             "-probesize", "32", "-analyzeduration", "0", "-thread_queue_size", "512",
             "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", f"pipe:{read_fd}",
             "-map", "0:v", "-map", "1:a", *self._formats(), self.url],
            stdin=subprocess.PIPE, pass_fds=(read_fd,))
        os.close(read_fd)
        # audio goes through its own thread: ffmpeg reads the two pipes at its own pace, and one blocked write
        # must never stop the other
        self._audio_queue: queue.Queue = queue.Queue(maxsize=250)
        self._audio_thread = Worker(self._write_audio, "ts-audio")
        self._audio_thread.start()
        log.info("streaming %s to %s", type(self).__name__.removesuffix("Sink"), self.url)

    def _write_audio(self) -> None:
        with os.fdopen(self._audio_fd, "wb", buffering=0) as pipe:
            while (chunk := self._audio_queue.get()) is not None:
                try:
                    pipe.write(chunk)
                except BrokenPipeError:
                    return

    def write(self, frame: np.ndarray, audio: np.ndarray, pts: int) -> None:
        self._slots.feed(frame, audio, pts, self._write)

    def _write(self, frame: np.ndarray, audio: np.ndarray) -> None:
        self._audio_queue.put(to_int16(audio))
        try:
            self._encoder.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            self._encoder.wait(timeout=5)
            raise SinkError(f"the {self.url} stream's encoder stopped: {encoder_failure(self._encoder)}") from None

    def close(self) -> None:
        if self._encoder is None:
            return
        self._audio_queue.put(None)
        self._audio_thread.join(timeout=5)
        try:
            self._encoder.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._encoder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._encoder.close()
        self._encoder = None


class WebmAlphaSink(MpegTsSink):
    """Live WebM: VP9 with its alpha (straight, from BGRA frames) and Opus, for an OBS Media Source that outputs the
    presenter without a background. WebM is not made to be joined mid-stream: the reader must be listening before
    the stream starts (or use a tcp://…?listen URL, where OBS connects and the stream starts with it)."""
    pixel_format = "bgra"

    def __init__(self, url: str = "udp://127.0.0.1:23001?pkt_size=1316", bitrate: str = "4M", fps: int = FPS):
        super().__init__(url, bitrate, fps=fps)
        self.nvenc_capable = False

    def _formats(self) -> list[str]:
        return ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1", "-b:v", self.bitrate,
                "-g", str(self.fps), "-pix_fmt", "yuva420p", "-c:a", "libopus", "-b:a", "96k",
                "-flush_packets", "1", "-f", "webm", "-live", "1"]


V4L2_HELP = ("on Linux the virtual camera needs v4l2loopback: `sudo apt install v4l2loopback-dkms` then "
             "`sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=\"stream-wav2lip\" exclusive_caps=1` "
             "(on Windows/macOS start OBS's virtual camera once, or use --outfile obs for the driver-free stream)")


class VirtualCameraSink:
    """Frames to a virtual camera, audio to a sound device (which OBS or a call app captures), paced together."""
    live = True

    def __init__(self, audio_device: Optional[str | int] = None, audio_delay_ms: float = 0.0,
                 camera_device: Optional[str] = None, fps: int = FPS):
        self.fps = fps
        self.audio_device = audio_device
        self.audio_delay_ms = audio_delay_ms
        self.camera_device = camera_device
        self._camera = self._stream = None
        self._slots = Slots(fps)

    def open(self, width: int, height: int) -> None:
        try:
            import pyvirtualcam  # a virtual camera driver: only for vcam
        except ImportError as exc:
            raise SinkError(f"pyvirtualcam is not installed ({exc}); run scripts/setup.sh") from exc
        try:
            self._camera = pyvirtualcam.Camera(width, height, self.fps, fmt=pyvirtualcam.PixelFormat.BGR,
                                               device=self.camera_device)
        except Exception as exc:  # pyvirtualcam raises RuntimeError/KeyError per backend
            raise SinkError(f"no virtual camera: {exc}; {V4L2_HELP}") from exc
        try:
            import sounddevice  # PortAudio may be missing: only when a sound device is used
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

    def write(self, frame: np.ndarray, audio: np.ndarray, pts: int) -> None:
        self._slots.feed(frame, audio, pts, self._write)

    def _write(self, frame: np.ndarray, audio: np.ndarray) -> None:
        if self._delay.size:  # --audio_delay_ms: hold the audio back by that much
            joined = np.concatenate([self._delay, audio])
            audio, self._delay = joined[:audio.size], joined[audio.size:]
        self._camera.send(frame)
        self._stream.write(np.frombuffer(to_int16(audio), np.int16))
        self._frames += 1
        self._samples += audio.size
        if self._frames % (self.fps * 10) == 0:  # A/V offset kept: audio queued (incl. device latency) vs video sent
            offset = self._samples / SAMPLE_RATE + self._stream.latency - self._frames / self.fps
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
        if not os.environ.get("DISPLAY") and os.name != "nt":
            raise SinkError("--preview needs a display (DISPLAY is not set)")
        self._cv2 = cv2
        cv2.namedWindow("stream-wav2lip", cv2.WINDOW_NORMAL)

    def write(self, frame: np.ndarray, audio: np.ndarray, pts: int) -> None:
        self._cv2.imshow("stream-wav2lip", frame)
        self._cv2.waitKey(1)

    def close(self) -> None:
        self._cv2.destroyWindow("stream-wav2lip")
