"""Draw docs/mouthwarp_sheet.png: the weight-free animator's mouths at rest, mid and wide openings, drawn (a still
presenter has no open mouths in its footage) and recorded (the library of a presenter filmed talking).

python scripts/mouthwarp_sheet.py [--out docs/mouthwarp_sheet.png]
Both presenters are made here and preprocessed at 288 px, so the picture is sharp: the still one is the demo's
photo (demo/presenter.py), the talking one the same photo opened through known openings with the inside of another
real photograph (demo/talking.py). Each column is the same frame animated at one audio opening.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.presenter import make_presenter_clip  # noqa: E402
from demo.talking import known_openings, make_talking_clip  # noqa: E402
from engine.render.presenter import Presenter  # noqa: E402
from models.mouthwarp import MouthAnimator  # noqa: E402
from models.mouthwarp.geometry import LAYOUTS, mouth_opening  # noqa: E402
from models.mouthwarp.library import library_for  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402

OPENINGS = (("rest", 0.0), ("mid", 0.5), ("wide", 1.0))


def mouth_tiles(presenter: Presenter, animator: MouthAnimator, index: int) -> list[np.ndarray]:
    face, points = presenter.face(index), presenter.crop_landmarks(index)
    size = presenter.face_size
    tiles = []
    for _, opening in OPENINGS:
        if animator.library is not None:
            animator.library.reset()  # each column chooses afresh
        out = animator.animate(face, points, opening, 0.0)
        tiles.append(cv2.resize(out[size * 2 // 5:, size // 8: size * 7 // 8], (300, 240), interpolation=cv2.INTER_AREA))
    return tiles


def label(image: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((28, image.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (30, 30, 30), 1, cv2.LINE_AA)
    return np.concatenate([bar, image])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "mouthwarp_sheet.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mouthwarp-sheet-") as folder:
        draw(Path(folder), args.out)
    print(f"wrote {args.out}")


def draw(work: Path, out: Path) -> None:
    """Make both presenters in `work` and write the sheet to `out`."""
    cfg = PreprocessConfig(face_size=288)
    still = make_presenter_clip(work / "still.mp4", 2.0)
    talking = make_talking_clip(work / "talking.mp4", known_openings(125))
    for clip in (still, talking):
        preprocess_video(clip, work / "cache", cfg, progress=False)
    still_presenter = Presenter(work / "cache" / "still")
    talking_presenter = Presenter(work / "cache" / "talking")
    layout = LAYOUTS[talking_presenter.landmarks.shape[1]]
    rest = int(np.argmin([mouth_opening(talking_presenter.crop_landmarks(i), layout)
                          for i in range(talking_presenter.frames)]))
    rows = [("drawn: a still presenter, no open mouths in its footage",
             mouth_tiles(still_presenter, MouthAnimator(288, library=library_for(still_presenter)), 0)),
            ("recorded: the library of a presenter filmed talking (demo/talking.py)",
             mouth_tiles(talking_presenter, MouthAnimator(288, library=library_for(talking_presenter)), rest))]
    header = np.concatenate([label(np.zeros((0, 300, 3), np.uint8), f"{name} (audio opening {value:.1f})")
                             for name, value in OPENINGS], 1)
    sheet = [header] + [label(np.concatenate(tiles, 1), text) for text, tiles in rows]
    cv2.imwrite(str(out), np.concatenate(sheet))


if __name__ == "__main__":
    main()
