"""Preprocess source videos into caches: decode once at 25 fps, detect, smooth, crop, align, write, rename."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np
from tqdm import tqdm

from configs.spec import PreprocessSpec, default_of
from core.ffmpeg import TRUNCATED_BELOW
from core.flow import FlowInterpolator
from core.timebase import FPS
from models.iplap.mesh import FACE, MESH_POINTS, crop_box

from . import cache
from .detect import Face, make_detector
from .export import export_training_clip, write_filelists
from .matte import MatteWriter
from .geometry import box_in_head, crop_landmarks, head_alignment, padded_box
from .smooth import smooth_stream
from .video import VideoError, VideoInfo, decode_frames, extract_audio, probe

log = logging.getLogger("preprocess")

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts"}


@dataclass(frozen=True)
class PreprocessConfig:
    face_size: int = default_of(PreprocessSpec, "face_size")
    pads: tuple[int, int, int, int] = default_of(PreprocessSpec, "pads")  # top, bottom, left, right (Wav2Lip's)
    detector: str = default_of(PreprocessSpec, "detector")
    smooth_radius: int = 2  # frames each side; 0 = --nosmooth
    head_size: int = 512
    jpeg_quality: int = default_of(PreprocessSpec, "jpeg_quality")
    force: bool = False
    train_dir: Optional[Path] = None
    allow_truncated: bool = False  # use a video that decodes to fewer frames than it declares
    between_frames: bool = False  # --fps 50: also the in-between background of each pair (bg_mid/)
    matte: bool = False  # --matte: the presenter's alpha per frame (matte/, and matte_mid/ with between_frames)

    def cache_settings(self) -> dict:
        """Settings that change the cache's content: a cache made with others is rebuilt, not reused."""
        return {"face_size": self.face_size, "pads": list(self.pads), "detector": self.detector,
                "smooth_radius": self.smooth_radius, "head_size": self.head_size,
                "jpeg_quality": self.jpeg_quality, "format_version": cache.FORMAT_VERSION}


@dataclass
class VideoResult:
    source: Path
    name: str
    status: str  # done | skipped | failed
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    message: str = ""


def store_library(cache_dir: Path, face_size: int) -> None:
    """The presenter's own mouths, for the weight-free animator (models/mouthwarp/library.py), kept in the cache."""
    from models.mouthwarp.library import LIBRARY_FILE, MouthLibrary
    det = cache.read_face_det(cache_dir)
    landmarks = np.stack([crop_landmarks(marks, box, face_size) if has else np.full(marks.shape, np.nan, np.float32)
                          for marks, box, has in zip(det["landmarks"], det["box"], det["has_face"])])
    try:
        library = MouthLibrary.build(
            landmarks, lambda i: cv2.imread(str(cache_dir / "body_face" / cache.frame_name(i, "body_face"))))
        library.save(cache_dir / LIBRARY_FILE)
    except (OSError, ValueError, cv2.error) as exc:  # the cache itself is complete; the engine builds it later
        log.warning("%s: the mouth library could not be kept (%s); the engine will build it on first use",
                    cache_dir.name, exc)
        return
    log.info("%s: mouth library of %d recorded mouths%s", cache_dir.name, len(library.openings),
             "" if library.usable else " (no open mouths: the animator will draw them)")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_up_to_date(cache_dir: Path, source_hash: str, cfg: PreprocessConfig) -> bool:
    manifest = cache.read_manifest(cache_dir)
    if manifest is None or manifest.get("source_sha256") != source_hash:
        return False
    return all(manifest.get(k) == v for k, v in cfg.cache_settings().items()) and \
        (manifest.get("between_frames", False) or not cfg.between_frames) and \
        (manifest.get("matte", False) or not cfg.matte)  # a cache with more than asked serves the request too


def kept_extras(cfg: PreprocessConfig, cache_dir: Path, source_hash: str) -> PreprocessConfig:
    """A cache rebuilt for one extra (in-between frames, matte) keeps the other it already had: asking for one
    and then the other must not rebuild the cache each time."""
    manifest = cache.read_manifest(cache_dir)
    if manifest is None or manifest.get("source_sha256") != source_hash or \
            any(manifest.get(k) != v for k, v in cfg.cache_settings().items()):
        return cfg
    return replace(cfg, between_frames=cfg.between_frames or manifest.get("between_frames", False),
                   matte=cfg.matte or manifest.get("matte", False))


def empty_record(num_landmarks: int) -> cache.FrameRecord:
    nan = np.full((num_landmarks, 2), np.nan, np.float32)
    return cache.FrameRecord(False, np.zeros(4, np.int32), np.zeros(4, np.float32), np.zeros((2, 3), np.float32),
                             np.zeros((2, 3), np.float32), np.zeros(4, np.int32), np.full((5, 2), np.nan, np.float32),
                             nan, np.zeros(4, np.int32))


def crop_resized(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box)
    # INTER_LINEAR like the reference inference and training loaders, so crops match what the models saw.
    return cv2.resize(image[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)


def process_frame(writer: cache.CacheWriter, index: int, frame: np.ndarray, face: Optional[Face],
                  cfg: PreprocessConfig, num_landmarks: int) -> bool:
    """Write one frame's images and record; returns whether it has a usable face."""
    writer.write_image("bg", index, frame)
    h, w = frame.shape[:2]
    box = padded_box(face.box, cfg.pads, w, h) if face is not None else None
    if box is None:  # no face, or one that has left the frame
        writer.add_record(empty_record(num_landmarks))
        return False
    writer.write_image("body_face", index, crop_resized(frame, box, cfg.face_size))
    forward, inverse = head_alignment(face.points5, cfg.head_size)
    head = cv2.warpAffine(frame, forward, (cfg.head_size, cfg.head_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT101)
    writer.write_image("heads", index, head)
    head_box = padded_box(box_in_head(face.box, forward), cfg.pads, cfg.head_size, cfg.head_size)
    if head_box is None:
        head_box = np.array([0, 0, cfg.head_size, cfg.head_size], np.int32)
    writer.add_record(cache.FrameRecord(True, box, face.box.astype(np.float32), forward, inverse, head_box,
                                        face.points5, face.landmarks, iplap_crop(writer, index, frame, face)))
    return True


def iplap_crop(writer: cache.CacheWriter, index: int, frame: np.ndarray, face: Face) -> np.ndarray:
    """IP_LAP's face crop (its box from the mesh, resized to 128 as its inference resizes), written to iplap_face/;
    returns the box (y1, y2, x1, x2), zeros when the landmarks are not MediaPipe's 478-point mesh."""
    if face.landmarks.shape[0] != MESH_POINTS or not np.isfinite(face.landmarks).all():
        return np.zeros(4, np.int32)
    h, w = frame.shape[:2]
    y1, y2, x1, x2 = box = crop_box(face.landmarks, w, h)
    writer.write_image("iplap_face", index, cv2.resize(frame[y1:y2, x1:x2], (FACE, FACE)))
    return np.array(box, np.int32)


def preprocess_video(source: Path, out_root: Path, cfg: PreprocessConfig, name: Optional[str] = None,
                     progress: bool = True) -> VideoResult:
    """Build (or reuse) the cache of one video. Raises VideoError for unusable input, nothing half-written remains."""
    start = time.monotonic()
    source = Path(source)
    name = name or source.stem
    info: VideoInfo = probe(source)
    source_hash = file_sha256(source)
    final_dir = Path(out_root) / name
    if not cfg.force and is_up_to_date(final_dir, source_hash, cfg):
        manifest = cache.read_manifest(final_dir)
        return VideoResult(source, name, "skipped", manifest["frames"], manifest["faces"], 0.0, "cache up to date")
    cfg = kept_extras(cfg, final_dir, source_hash)
    if abs(info.fps - FPS) > 0.01:
        log.info("%s: normalising %.3f fps to %d fps (the models are trained on %d fps)", source.name, info.fps, FPS, FPS)

    detector = make_detector(cfg.detector)
    writer = cache.CacheWriter(final_dir, cfg.jpeg_quality)
    mattes = None
    try:
        has_audio = extract_audio(info, writer.tmp_dir / cache.AUDIO)
        detections = ((frame, detector.detect(frame)) for frame in decode_frames(info))
        frames = faces = 0
        interpolator, previous = FlowInterpolator() if cfg.between_frames else None, None
        if cfg.matte:
            mattes = MatteWriter(writer.write_image)
        with tqdm(total=info.expected_frames, desc=name, unit="frame", leave=False, disable=not progress) as bar:
            for index, (frame, face) in enumerate(smooth_stream(detections, cfg.smooth_radius)):
                faces += process_frame(writer, index, frame, face, cfg, detector.num_landmarks)
                if interpolator is not None:
                    if previous is not None:
                        middle = interpolator.midpoint(previous, frame)
                        writer.write_image("bg_mid", index - 1, middle)
                        if mattes is not None:
                            mattes.add("matte_mid", index - 1, middle)
                    previous = frame
                if mattes is not None:
                    mattes.add("matte", index, frame)
                frames += 1
                bar.update(1)
        if mattes is not None:
            mattes.finish()
        if frames == 0:
            raise VideoError(f"{source}: no frame could be decoded")
        if frames < TRUNCATED_BELOW * info.expected_frames:
            message = (f"{source}: decoded {frames} of the {info.expected_frames} frames its container declares: "
                       f"the file is truncated or damaged")
            if not cfg.allow_truncated:
                raise VideoError(message + " (pass --allow_truncated to use what is there)")
            log.warning("%s; using what is there (--allow_truncated)", message)
        if faces == 0:
            raise VideoError(f"{source}: no face found in any of its {frames} frames")
        manifest = {
            "name": name, "source": str(source.resolve()), "source_sha256": source_hash,
            "source_fps": info.fps, "fps": FPS, "frames": frames, "faces": faces,
            "width": info.width, "height": info.height, "has_audio": has_audio,
            "num_landmarks": detector.num_landmarks,
            "image_format": "jpg (bg 4:2:0, crops and heads 4:4:4); matte png (8-bit grey)",
            "face_det_fields": cache.FACE_DET_FIELDS, "between_frames": cfg.between_frames, "matte": cfg.matte,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **cfg.cache_settings(),
        }
        writer.finish(manifest)
    except BaseException:
        writer.abort()
        raise
    finally:
        detector.close()
        if mattes is not None:
            mattes.close()
    store_library(final_dir, cfg.face_size)
    return VideoResult(source, name, "done", frames, faces, time.monotonic() - start)


def find_videos(inputs: Iterable[Path]) -> list[Path]:
    """Expand folders into the video files they hold (sorted); files are taken as given."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()))
        else:
            found.append(item)
    return found


def unique_names(sources: list[Path]) -> list[str]:
    """Cache folder per video: its stem, with a short path hash where two sources share a stem."""
    stems = [s.stem for s in sources]
    return [s.stem if stems.count(s.stem) == 1 else f"{s.stem}-{hashlib.sha1(str(s.resolve()).encode()).hexdigest()[:8]}"
            for s in sources]


def run_batch(inputs: Iterable[Path], out_root: Path, cfg: PreprocessConfig, progress: bool = True) -> list[VideoResult]:
    """Preprocess every video; one that fails is reported and the others go on. Detector problems stop the batch."""
    sources = find_videos(inputs)
    Path(out_root).mkdir(parents=True, exist_ok=True)
    results: list[VideoResult] = []
    for source, name in tqdm(list(zip(sources, unique_names(sources))), desc="videos", unit="video",
                             disable=not progress or len(sources) < 2):
        try:
            result = preprocess_video(source, out_root, cfg, name, progress=progress)
        except VideoError as exc:
            log.error("%s", exc)
            result = VideoResult(source, name, "failed", message=str(exc))
        results.append(result)
        if result.status != "failed" and cfg.train_dir is not None:
            export_training_clip(Path(out_root) / name, Path(cfg.train_dir))
    if cfg.train_dir is not None and any(r.status != "failed" for r in results):
        write_filelists(Path(cfg.train_dir))
    return results


def summary_table(results: list[VideoResult]) -> str:
    rows = [("video", "status", "frames", "faces", "seconds", "note")]
    rows += [(r.name, r.status, str(r.frames), str(r.faces), f"{r.seconds:.1f}", r.message) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 5 else cell for i, cell in enumerate(row)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)

