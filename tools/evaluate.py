"""Lip-sync metrics of videos with a face and sound: AV offset, Min dist (LSE-D) and Confidence (LSE-C).

  python -m models.evaluate video.mp4 --syncnet_v2 syncnet_v2.model       the numbers papers report
  python -m models.evaluate track.mp4 --syncnet_v2 syncnet_v2.model --cropped   a 224x224 face track, as is
  python -m models.evaluate --filelist videos.txt --syncnet_v2 syncnet_v2.model --csv scores.csv   a test set's mean
  python -m models.evaluate video.mp4 --syncnet expert.pth                 judged by one of our SyncNet experts
(`python stream_out.py evaluate ...` is the same command.) Without --cropped each video is preprocessed in a temp
folder (25 fps, our face detector) and every run of frames with a face is one track, scored on its own.
"""
from __future__ import annotations

import argparse
import csv
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np
from tqdm import tqdm

from audio.decode import load_audio
from core.errors import UserError
from core.scratch import written
from core.timebase import SAMPLES_PER_FRAME, SYNC_FRAMES
from models.evaluate import (SMOOTH_TAPS, ExpertJudge, FaceTrack, Judge, PaperJudge, paper_crops, read_face_track,
                             score_track)
from models.loader import load_syncnet
from models.predictor import pick_device
from models.syncnet_v2 import BATCH_SIZE, VSHIFT, SyncScore, load_syncnet_v2
from preprocess import cache
from preprocess.pipeline import PreprocessConfig, preprocess_video

log = logging.getLogger("evaluate")
MIN_TRACK = max(SYNC_FRAMES + 1, SMOOTH_TAPS)  # one window, and the reference's box smoothing
CSV_FIELDS = ("video", "track", "first_frame", "frames", "av_offset", "min_dist", "confidence", "error")


@dataclass
class TrackScore:
    video: Path
    track: int
    first: int
    frames: int
    score: Optional[SyncScore]  # None: this track could not be scored (error says why)
    error: str = ""


def face_runs(has_face: np.ndarray, minimum: int = MIN_TRACK) -> list[tuple[int, int]]:
    """[start, stop) of every run of consecutive frames with a face at least `minimum` long."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(has_face, np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= minimum]


def cached_tracks(folder: Path, paper: bool) -> Iterator[FaceTrack]:
    """The tracks of a preprocessed video: run_pipeline.py's 224 crops of the full frames around our face boxes
    (paper), or our expert's own crops (body_face), with the cache's 16 kHz sound under them."""
    if not (folder / cache.AUDIO).is_file():
        raise UserError(f"{folder.name}: has no audio track to judge")
    samples = np.clip(np.round(load_audio(folder / cache.AUDIO) * 32768), -32768, 32767).astype(np.int16)
    face_det = cache.read_face_det(folder)
    runs = face_runs(face_det["has_face"])
    if not runs:
        raise UserError(f"{folder.name}: no run of {MIN_TRACK} or more frames with a face to judge")
    for start, stop in runs:
        sub = "bg" if paper else "body_face"
        frames = (cv2.imread(str(folder / sub / cache.frame_name(i, sub))) for i in range(start, stop))
        # full frames are read one at a time while cutting (a long 1080p track would not fit in memory)
        crops = paper_crops(frames, face_det["face_box"][start:stop]) if paper else np.stack(list(frames))
        yield FaceTrack(crops, samples[start * SAMPLES_PER_FRAME:stop * SAMPLES_PER_FRAME], first=start)


def score_video(video: Path, judge: Judge, face_size: int, cropped: bool, vshift: int,
                progress: bool) -> list[TrackScore]:
    """Every track of the video, each scored on its own: one that cannot be scored carries its reason."""
    with tempfile.TemporaryDirectory(prefix="evaluate-") as work:
        if cropped:
            tracks: Iterator[FaceTrack] = iter([read_face_track(video, Path(work))])
        else:
            result = preprocess_video(video, Path(work), PreprocessConfig(face_size=face_size), progress=progress)
            tracks = cached_tracks(Path(work) / result.name, isinstance(judge, PaperJudge))
        scores: list[TrackScore] = []
        while True:  # each track on its own: cutting or scoring one that fails leaves the others
            track, n = None, len(scores) + 1
            try:
                track = next(tracks, None)
                if track is None:
                    return scores
                scores.append(TrackScore(video, n, track.first, len(track.frames), score_track(judge, track, vshift)))
            except (ValueError, cv2.error) as exc:
                first, frames = (track.first, len(track.frames)) if track is not None else (-1, 0)
                scores.append(TrackScore(video, n, first, frames, None, str(exc)))


def reference_lines(score: SyncScore) -> str:
    """run_syncnet.py's report."""
    return f"AV offset: \t{score.offset:d} \nMin dist: \t{score.min_dist:.3f}\nConfidence: \t{score.confidence:.3f}"


def read_filelist(path: Path) -> list[Path]:
    """One video per line (blank lines and # comments skipped); relative paths are taken from the list's folder."""
    if not path.is_file():
        raise UserError(f"--filelist {path}: no such file")
    lines = [line.strip() for line in path.read_text().splitlines()]
    videos = [path.parent / line for line in lines if line and not line.startswith("#")]
    if not videos:
        raise UserError(f"--filelist {path}: lists no videos")
    return videos


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.splitlines()[0],
                                epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="*", type=Path, help="videos with a face and an audio track")
    judge = p.add_mutually_exclusive_group(required=True)
    judge.add_argument("--syncnet_v2", help="syncnet_python's syncnet_v2.model: the LSE-D / LSE-C papers report")
    judge.add_argument("--syncnet", help="one of our SyncNet experts (python -m models.train syncnet): for checks "
                                         "during training, not on the papers' scale")
    p.add_argument("--cropped", action="store_true",
                   help="each video already is a 224x224 face track (syncnet_python's run_pipeline.py writes them): "
                        "score it as is, no face detection (--syncnet_v2 only)")
    p.add_argument("--filelist", type=Path, help="a text file of videos, one per line: their mean, as papers report")
    p.add_argument("--csv", type=Path, help="also write one row per track here")
    p.add_argument("--vshift", type=int, default=VSHIFT, help="audio offsets tried, in frames either way")
    p.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="windows per forward pass")
    p.add_argument("--device", help="cpu or cuda (default: CUDA when present)")
    args = p.parse_args(argv)
    if args.filelist:
        args.videos = [*args.videos, *read_filelist(args.filelist)]
    if not args.videos:
        p.error("give a video, or --filelist")
    if args.cropped and not args.syncnet_v2:
        p.error("--cropped scores syncnet_python's 224x224 face tracks: use it with --syncnet_v2")
    return args


def load_judge(args: argparse.Namespace) -> tuple[Judge, int]:
    """The judge and the face size the preprocess should crop for it."""
    if args.syncnet_v2:
        return PaperJudge(load_syncnet_v2(args.syncnet_v2, args.device), args.batch_size), PreprocessConfig.face_size
    syncnet = load_syncnet(args.syncnet).model.eval().to(pick_device(args.device))
    return ExpertJudge(syncnet, args.batch_size), syncnet.spec.size


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    judge, face_size = load_judge(args)
    several = len(args.videos) > 1
    scores: list[TrackScore] = []
    failed: dict[Path, str] = {}
    for video in tqdm(args.videos, desc="videos", unit="video", disable=not several):
        try:
            if not video.is_file():
                raise UserError("no such file")
            tracks = score_video(video, judge, face_size, args.cropped, args.vshift, progress=not several)
        except (UserError, ValueError) as exc:
            reason = str(exc) if str(exc).startswith(str(video)) else f"{video}: {exc}"
            if not several:
                raise UserError(reason) from exc
            failed[video] = reason
            log.error("%s", reason)
            continue
        scores += tracks
        if not several and all(t.score is None for t in tracks):
            break  # said once, below
        for track in tracks:
            if track.score is None:
                log.error("%s track %d: %s", video, track.track, track.error)
                continue
            if several or len(tracks) > 1:
                tqdm.write(f"{video} track {track.track} (frames {track.first}-{track.first + track.frames - 1})")
            tqdm.write(reference_lines(track.score))
    if args.csv:
        write_csv(args.csv, scores, failed)
    scored = [s for s in scores if s.score is not None]
    if not scored:
        reasons = list(failed.values()) + [f"{s.video} track {s.track}: {s.error}" for s in scores]
        raise UserError(f"nothing could be scored: {reasons[0]}")
    if several or len(scores) > 1:
        unscored = [f"{count} {kind} failed" for count, kind in ((len(failed), "videos"),
                                                                 (len(scores) - len(scored), "tracks")) if count]
        note = f" ({', '.join(unscored)})" if unscored else ""
        print(f"Mean over {len(scored)} tracks of {len({s.video for s in scored})} videos{note}: "
              f"Min dist {np.mean([s.score.min_dist for s in scored]):.3f}  "
              f"Confidence {np.mean([s.score.confidence for s in scored]):.3f}")
    return 0


def write_csv(path: Path, scores: list[TrackScore], failed: dict[Path, str]) -> None:
    with written(path) as scratch, open(scratch, "w", newline="") as out:
        rows = csv.DictWriter(out, CSV_FIELDS)
        rows.writeheader()
        for s in scores:
            numbers = {"av_offset": s.score.offset, "min_dist": f"{s.score.min_dist:.6f}",
                       "confidence": f"{s.score.confidence:.6f}"} if s.score is not None else {}
            rows.writerow({"video": s.video, "track": s.track, "first_frame": s.first, "frames": s.frames,
                           **numbers, "error": s.error})
        for video, reason in failed.items():
            rows.writerow({"video": video, "error": reason})
