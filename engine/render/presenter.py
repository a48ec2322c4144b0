"""The cached presenter: a preprocess/ cache loaded for playback.

Frames stay JPEG-encoded in memory and are decoded when needed: a 10 s 1080p cache is ~80 MB this way instead of
1.5 GB of raw frames, and decoding one frame costs a few milliseconds.
"""
from __future__ import annotations

import logging
import struct
import zipfile
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from core.errors import UserError
from preprocess import cache
from preprocess.geometry import crop_landmarks


log = logging.getLogger("engine")


class PresenterError(UserError):
    """A cache that cannot be played; the message says what to run."""


def playable_manifest(cache_dir: Path, face_size: Optional[int] = None, iplap: bool = False) -> dict:
    """The manifest of a cache that can be played for a model of `face_size` (None: any). Cheap, so the command
    line asks it before converting a model, not after. Raises PresenterError saying what to run."""
    manifest = cache.read_manifest(cache_dir)
    if manifest is None:
        building = any(cache_dir.parent.glob(f".{cache_dir.name}.swl-*.partial"))
        hint = " (it is still being built or was interrupted)" if building else ""
        raise PresenterError(f"{cache_dir}: no finished presenter cache here{hint}; build one with "
                             f"`python stream_out.py preprocess <video> --out {cache_dir.parent}`")
    if manifest.get("format_version") != cache.FORMAT_VERSION:
        raise PresenterError(f"{cache_dir}: made by another version of stream-wav2lip (cache format "
                             f"{manifest.get('format_version')}, this version reads {cache.FORMAT_VERSION}); "
                             f"rebuild it with `python stream_out.py preprocess <video> --out {cache_dir.parent} "
                             f"--force`")
    problem = manifest_problem(manifest)
    if problem:
        raise PresenterError(f"{cache_dir}: its manifest {problem}; rebuild the cache with `python stream_out.py "
                             f"preprocess <video> --out {cache_dir.parent} --force`")
    rebuild = "--config iplap" if iplap else f"--face_size {face_size}"
    if face_size is not None and manifest["face_size"] != face_size:
        raise PresenterError(f"{cache_dir}: cache was made for {manifest['face_size']} px faces but the model needs "
                             f"{face_size} px; rebuild it with `preprocess {rebuild}`")
    return manifest


MAX_SIDE = 8192  # pixels a side of any cached image: a forged size cannot make a decode take gigabytes


def manifest_problem(manifest: object) -> Optional[str]:
    """What is wrong with a manifest's keys and types (None: nothing)."""
    if not isinstance(manifest, dict):
        return "is not a JSON object"
    sizes = {"width": manifest.get("width"), "height": manifest.get("height"),
             "face_size": manifest.get("face_size"), "head_size": manifest.get("head_size", 512)}
    for key, value in sizes.items():
        if type(value) is not int or not 0 < value <= MAX_SIDE:
            return f"has {key} {str(value)[:20]!r}, not a whole number of pixels from 1 to {MAX_SIDE}"
    return None


def image_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a PNG's or JPEG's header, without decoding it; None when it is neither."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # fill byte, or a marker with no length
            at += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return None


class Presenter:
    def __init__(self, cache_dir: Path | str, face_size: int | None = None, load_heads: bool = False,
                 load_between: bool = False, load_matte: bool = False, load_iplap: bool = False):
        self.dir = Path(cache_dir)
        manifest = playable_manifest(self.dir, face_size, load_iplap)
        if load_iplap and manifest.get("smooth_radius"):
            log.warning("%s: its face meshes are smoothed over ±%d frames, which damps the lips IP_LAP learns from; "
                        "the reference's are per frame: rebuild with `preprocess --config iplap --force`",
                        self.dir.name, manifest["smooth_radius"])
        self.face_size = manifest["face_size"]
        self.head_size = manifest.get("head_size", 512)
        self.width, self.height = manifest["width"], manifest["height"]
        try:
            det = cache.read_face_det(self.dir)
            missing = sorted(set(cache.FACE_DET_FIELDS) - set(det))
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise PresenterError(f"{self.dir}: {cache.FACE_DET} cannot be read ({exc}); rebuild the cache with "
                                 f"preprocess --force") from exc
        if missing:
            raise PresenterError(f"{self.dir}: {cache.FACE_DET} lacks {', '.join(missing)}; rebuild the cache with "
                                 f"preprocess --force")
        self.has_face = det["has_face"]
        self.box = det["box"]
        self.head_box = det["head_box"]
        self.head_affine = det["head_affine"]
        self.head_affine_inv = det["head_affine_inv"]
        self.landmarks = det["landmarks"]
        self.iplap_box = det["iplap_box"]
        self.frames = len(self.has_face)
        self._bg = self._read_all("bg", range(self.frames))
        self._bg_mid = self._read_all("bg_mid", range(self.frames - 1)) \
            if load_between and manifest.get("between_frames") else {}  # only a 50 fps render reads them
        if load_matte and not manifest.get("matte"):
            raise PresenterError(f"{self.dir}: this cache holds no matte, which --background alpha or a key colour "
                                 f"needs; rebuild it with `python stream_out.py preprocess <video> --out "
                                 f"{self.dir.parent} --matte`")
        self._matte = self._read_all("matte", range(self.frames)) if load_matte else {}
        self._matte_mid = self._read_all("matte_mid", range(self.frames - 1)) \
            if load_matte and load_between and manifest.get("between_frames") else {}
        faces = np.flatnonzero(self.has_face)
        self._face = self._read_all("body_face", faces)
        self._head = self._read_all("heads", faces) if load_heads else {}
        if load_iplap and not self.iplap_box[faces].any(axis=1).all():
            raise PresenterError(f"{self.dir}: IP_LAP needs MediaPipe's 478-point face mesh on every frame with a "
                                 f"face, and this cache was made with the {manifest.get('detector')} detector; "
                                 f"rebuild it with `preprocess --detector mediapipe --force`")
        self._iplap = self._read_all("iplap_face", faces) if load_iplap else {}

    def _read_all(self, sub: str, indices) -> dict[int, bytes]:
        """The encoded images of one kind, each checked against the size the manifest gives it (from its header:
        one image forged to 20000 x 20000 pixels would otherwise take gigabytes and seconds at every decode)."""
        folder = self.dir / sub
        expected = {"body_face": (self.face_size,) * 2, "heads": (self.head_size,) * 2,
                    "iplap_face": (128, 128)}.get(sub, (self.width, self.height))
        images = {}
        for i in indices:
            path = folder / cache.frame_name(int(i), sub)
            try:
                images[int(i)] = data = path.read_bytes()
            except FileNotFoundError as exc:
                raise PresenterError(f"{self.dir}: incomplete cache ({exc.filename} is missing); rebuild it with "
                                     f"preprocess --force") from exc
            size = image_size(data)
            if size != expected:
                found = "not a PNG or JPEG image" if size is None else f"{size[0]}x{size[1]}"
                raise PresenterError(f"{path}: {found}, where the cache's manifest says {expected[0]}x{expected[1]}; "
                                     f"rebuild the cache with preprocess --force")
        return images

    @staticmethod
    def _decode(data: bytes) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    def background(self, i: int) -> np.ndarray:
        return self._decode(self._bg[i])

    def background_between(self, i: int, j: int) -> Optional[np.ndarray]:
        """The stored in-between background of neighbouring frames i and j (preprocess --fps 50), else None."""
        data = self._bg_mid.get(min(i, j)) if abs(i - j) == 1 else None
        return None if data is None else self._decode(data)

    def matte(self, i: int, j: Optional[int] = None) -> np.ndarray:
        """Frame i's matte (uint8, H x W), or with j the matte halfway between neighbouring frames i and j: the
        stored one (preprocess --fps 50 --matte), else the mean of the two."""
        if j is None or j == i:
            return cv2.imdecode(np.frombuffer(self._matte[i], np.uint8), cv2.IMREAD_GRAYSCALE)
        data = self._matte_mid.get(min(i, j)) if abs(i - j) == 1 else None
        if data is not None:
            return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        return ((self.matte(i).astype(np.uint16) + self.matte(j) + 1) // 2).astype(np.uint8)

    def face(self, i: int) -> np.ndarray:
        return self._decode(self._face[i])

    def sample_faces(self, count: int) -> np.ndarray:
        """Up to `count` face crops spread evenly over the clip (int8 calibration data), (N, S, S, 3)."""
        faces = np.flatnonzero(self.has_face)
        picks = faces[np.linspace(0, len(faces) - 1, min(count, len(faces))).round().astype(int)]
        return np.stack([self.face(int(i)) for i in picks])

    def head(self, i: int) -> np.ndarray:
        return self._decode(self._head[i])

    def iplap_face(self, i: int) -> np.ndarray:
        """IP_LAP's 128 x 128 crop of frame i (its box is iplap_box[i], y1, y2, x1, x2)."""
        return self._decode(self._iplap[i])

    def crop_landmarks(self, i: int) -> np.ndarray:
        """Frame i's landmarks in body_face crop pixels (the crop is the padded box resized to face_size)."""
        return crop_landmarks(self.landmarks[i], self.box[i], self.face_size)


def ping_pong(k: int, frames: int) -> int:
    """Cache frame for output frame k: forward, then backward, then forward... never a jump cut.

    The turning frames are not repeated (0 1 2 3 2 1 0 1 ...), so motion never pauses at the ends."""
    if frames <= 1:
        return 0
    period = 2 * (frames - 1)
    k %= period
    return k if k < frames else period - k
