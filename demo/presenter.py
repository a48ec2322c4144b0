"""A synthetic presenter clip: scikit-image's astronaut photo moving along a known path, with espeak-ng speech.

The same generator makes the demo and the test clips, so the tests run on exactly the media users see. The path
of the face is known frame by frame (`FacePath.box_at`), which lets tests check the detector against ground truth.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from core.ffmpeg import Child
from core.scratch import written

# Face box of skimage.data.astronaut() in photo pixels (x1, y1, x2, y2), as OpenCV's Haar frontal-face cascade
# finds it (S3FD gives the same box within a few pixels). Independent of our own detector, so a fair reference.
ASTRONAUT_FACE_BOX = np.array([177, 66, 272, 161], np.float32)
FACE_CENTRE = (ASTRONAUT_FACE_BOX[:2] + ASTRONAUT_FACE_BOX[2:]) / 2


@dataclass(frozen=True)
class FacePath:
    """Gentle head motion: sway, bob, breathing scale and a small tilt, all periodic in `period` seconds."""
    width: int = 640
    height: int = 360
    sway: float = 40.0     # horizontal pixels
    bob: float = 12.0      # vertical pixels
    scale: float = 1.0     # photo scale at rest
    zoom: float = 0.12     # relative scale change
    tilt: float = 6.0      # degrees
    period: float = 4.0

    def transform_at(self, t: float) -> np.ndarray:
        """Photo -> frame affine (2x3) at time t: rotate and scale about the face centre, then place it."""
        phase = 2 * math.pi * t / self.period
        s = self.scale * (1 + self.zoom * math.sin(phase))
        angle = self.tilt * math.sin(phase * 0.5)
        m = cv2.getRotationMatrix2D((float(FACE_CENTRE[0]), float(FACE_CENTRE[1])), angle, s)
        target = np.array([self.width / 2 + self.sway * math.sin(phase), self.height * 0.42 + self.bob * math.sin(2 * phase)])
        m[:, 2] += target - FACE_CENTRE
        return m

    def box_at(self, t: float) -> np.ndarray:
        """Where the reference face box is at time t: the mapped centre with the box scaled (axis-aligned)."""
        m = self.transform_at(t)
        centre = m[:, :2] @ FACE_CENTRE + m[:, 2]
        half = (ASTRONAUT_FACE_BOX[2:] - ASTRONAUT_FACE_BOX[:2]) / 2 * math.sqrt(abs(np.linalg.det(m[:, :2])))
        return np.concatenate([centre - half, centre + half]).astype(np.float32)


def astronaut_bgr() -> np.ndarray:
    from skimage import data
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def studio_background(width: int, height: int) -> np.ndarray:
    """A soft grey-blue vertical gradient, like a plain studio wall."""
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    top, bottom = np.array([120, 110, 100], np.float32), np.array([70, 62, 55], np.float32)
    return np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).astype(np.uint8)


# The person in the photo (head and suit, down to row 340, without the helmet she holds): GrabCut from hand-placed
# seeds, checked by eye. A cut-out presenter drawn with it has a matte known exactly (tests of --matte).
PERSON = Path(__file__).with_name("astronaut_person.png")


@lru_cache(maxsize=2)
def photo_layers(cutout: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut photo and its alpha, soft at the edge: the whole photo, or (cutout) only the person."""
    photo = astronaut_bgr()
    if cutout:
        return photo, cv2.GaussianBlur(cv2.imread(str(PERSON), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255,
                                       (5, 5), 1)
    alpha = np.ones(photo.shape[:2], np.float32)
    return photo, cv2.GaussianBlur(np.pad(alpha[4:-4, 4:-4], 4), (9, 9), 3)


def frame_at(path: FacePath, t: float, cutout: bool = False) -> np.ndarray:
    """The presenter frame at time t of `path`, as make_presenter_clip draws it (no encode)."""
    photo, alpha = photo_layers(cutout)
    return render_frame(photo, alpha, studio_background(path.width, path.height), path.transform_at(t))


def render_frame(photo: np.ndarray, alpha: np.ndarray, background: np.ndarray, m: np.ndarray) -> np.ndarray:
    h, w = background.shape[:2]
    warped = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR)
    a = cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    return (warped * a + background * (1 - a)).astype(np.uint8)


def person_matte(path: FacePath, t: float) -> np.ndarray:
    """The cut-out presenter's true matte at time t (float32 in [0, 1]), as make_presenter_clip(cutout=True) draws
    it."""
    return cv2.warpAffine(photo_layers(cutout=True)[1], path.transform_at(t), (path.width, path.height),
                          flags=cv2.INTER_LINEAR)


def speak(text: str, out_wav: Path, voice: str = "en-us", speed: int = 150) -> Path:
    """Synthesise speech with Debian's espeak-ng (a 22.05 kHz mono wav)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed; run scripts/setup.sh")
    with written(out_wav) as partial:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(partial), text], check=True,
                       capture_output=True)
    return out_wav


def make_presenter_clip(out: Path, seconds: float = 4.0, fps: float = 25, path: FacePath = FacePath(),
                        cover: Optional[tuple[float, float]] = None, audio: Optional[Path] = None,
                        crf: int = 18, photo_at: Optional[Callable[[int], np.ndarray]] = None,
                        cutout: bool = False) -> Path:
    """Write an H.264 mp4 of the moving presenter; `cover` = (start, end) seconds where a card hides the face;
    `photo_at(i)` gives frame i's version of the photo (demo/talking.py opens its mouth); `cutout`: only the person,
    over the studio wall (person_matte gives its true matte).

    With `audio` the clip gets that sound (trimmed or padded with silence to the clip's length) as AAC.
    """
    photo, alpha = photo_layers(cutout)
    background = studio_background(path.width, path.height)
    n = int(round(seconds * fps))
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{path.width}x{path.height}",
           "-r", str(fps), "-i", "-"]
    if audio is not None:
        cmd += ["-i", str(audio), "-af", "apad", "-c:a", "aac", "-b:a", "96k"]
    cmd += ["-t", f"{n / fps:.6f}", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
            "-r", str(fps), "-f", "mp4"]
    with written(out) as partial:  # a stopped run leaves no half clip
        encoder = Child([*cmd, str(partial)], stdin=subprocess.PIPE)
        try:
            for i in range(n):
                t = i / fps
                frame = render_frame(photo if photo_at is None else photo_at(i), alpha, background,
                                     path.transform_at(t))
                if cover and cover[0] <= t < cover[1]:
                    x1, y1, x2, y2 = path.box_at(t).astype(int)
                    pad = (x2 - x1) // 2
                    cv2.rectangle(frame, (x1 - pad, y1 - pad), (x2 + pad, y2 + 2 * pad), (40, 90, 160), -1)
                encoder.stdin.write(frame.tobytes())
            encoder.stdin.close()
            if encoder.wait() != 0:
                raise RuntimeError(f"ffmpeg failed writing {out}: {encoder.error()}")
        finally:
            encoder.close()
    return out
