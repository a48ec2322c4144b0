"""Real test media, made once per session from what ships in packages: the astronaut photo and espeak-ng speech."""
from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from core.timebase import FPS, slot
from demo.presenter import FacePath, make_presenter_clip, speak

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda run where torch sees a CUDA GPU, and are skipped with the reason everywhere else."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch sees none here (the CPU tests cover the same code)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def require(module: str):
    """Import an optional dependency's module, or skip the tests that need it. Under CI=true nothing is optional:
    a missing package is a broken install, and the import error fails the run instead of hiding as a skip."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


class CollectSink:
    """A real sink that keeps every frame, its audio, frame number and send time, to inspect output exactly."""

    def __init__(self, live: bool = False):
        self.live = live

    def open(self, width, height):
        self.frames, self.audio, self.times, self.numbers, self.pts = [], [], [], [], []

    def write(self, frame, audio, pts):  # the engine hands every sink a fresh array per frame: no copy needed
        self.frames.append(frame)
        self.audio.append(audio)
        self.times.append(time.monotonic())
        self.numbers.append(slot(pts, FPS))
        self.pts.append(pts)

    def close(self):
        pass

CLIP_SECONDS = 4.0
COVER = (2.0, 2.6)  # seconds during which a card hides the face in clip25
CLIP30_SECONDS = 3.0


@pytest.fixture(scope="session", autouse=True)
def private_runtime_cache(tmp_path_factory):
    """Converted models go to a folder of this run (children inherit it), never to the user's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    speech = speak("Testing one two three. The quick brown fox jumps over the lazy dog.", root / "speech.wav")
    files = {
        "speech": speech,
        "clip25": make_presenter_clip(root / "clip25.mp4", CLIP_SECONDS, 25, cover=COVER, audio=speech),
        "clip30": make_presenter_clip(root / "clip30.mp4", CLIP30_SECONDS, 30),
        "noface": make_presenter_clip(root / "noface.mp4", 1.0, 25, path=FacePath(sway=0, bob=0, zoom=0, tilt=0),
                                      cover=(0.0, 1.0)),
    }
    files["corrupt"] = root / "corrupt.mp4"
    files["corrupt"].write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    files["empty"] = root / "empty.mp4"
    files["empty"].write_bytes(b"")
    return files


@pytest.fixture(scope="session")
def built(media, tmp_path_factory):
    """One preprocessing run over both good clips with a training export; many tests read its output."""
    from preprocess.pipeline import PreprocessConfig, run_batch

    root = tmp_path_factory.mktemp("built")
    cfg = PreprocessConfig(train_dir=root / "train")
    results = run_batch([media["clip25"], media["clip30"]], root / "cache", cfg, progress=False)
    return {"root": root, "cache": root / "cache", "train": root / "train", "cfg": cfg,
            "results": {r.name: r for r in results}}


@pytest.fixture(scope="session")
def cache288(media, tmp_path_factory):
    """clip30 preprocessed for the 288 px models: (its result, the cache root)."""
    from preprocess.pipeline import PreprocessConfig, run_batch

    root = tmp_path_factory.mktemp("cache288")
    return run_batch([media["clip30"]], root, PreprocessConfig(face_size=288), progress=False)[0], root


CUTOUT_SECONDS = 1.6
CUTOUT_PATH = FacePath()


@pytest.fixture(scope="session")
def cutout(media, tmp_path_factory):
    """A matted cache of the cut-out presenter (its true matte is demo.presenter.person_matte), with the 50 fps
    in-betweens, and a 1 s piece of speech for it."""
    import soundfile

    from audio.decode import load_audio
    from preprocess.pipeline import PreprocessConfig, preprocess_video
    root = tmp_path_factory.mktemp("cutout")
    clip = make_presenter_clip(root / "cutout.mp4", CUTOUT_SECONDS, 25, path=CUTOUT_PATH, cutout=True)
    preprocess_video(clip, root / "cache", PreprocessConfig(matte=True, between_frames=True), progress=False)
    soundfile.write(str(root / "talk.wav"), load_audio(media["speech"])[:16000], 16000)
    return {"cache": root / "cache" / "cutout", "talk": root / "talk.wav", "root": root}


@pytest.fixture(scope="module")
def obs_studio(tmp_path_factory):
    """A running OBS Studio (Xvfb, throw-away profile, websocket on 127.0.0.1); skipped only if OBS can't install.
    Module-scoped: OBS renders its scene all the time, so it must not keep a core busy under the later modules."""
    from obs_studio import ObsStudio, ensure_installed

    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    studio = ObsStudio(tmp_path_factory.mktemp("obs"))
    try:
        studio.start()
        yield studio
    finally:
        studio.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (installed on first use where apt can), or the test is skipped with the reason."""
    from chromium import find_chromium
    found = find_chromium()
    if found is None:
        pytest.skip("Debian's chromium cannot be installed here")
    return found


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight Wav2Lip-96 generator in the released layout."""
    from models import wav2lip96
    from models.blocks import Wav2Lip
    from models.loader import save_checkpoint
    torch_model = Wav2Lip(wav2lip96.GENERATOR)
    return save_checkpoint(torch_model, tmp_path_factory.mktemp("ckpt") / "wav2lip_gan.pth", global_step=1)


@pytest.fixture(scope="session")
def talk(media, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Speech, 1.5 s of digital silence, speech again: ~8 s, longer than the 4 s cached loop."""
    import soundfile
    from audio.decode import load_audio
    speech = load_audio(media["speech"])[: 16000 * 3]
    audio = np.concatenate([speech, np.zeros(24000, np.float32), speech])
    path = tmp_path_factory.mktemp("talk") / "talk.wav"
    soundfile.write(str(path), audio, 16000)
    return path, audio


@pytest.fixture(scope="session")
def rig(built, checkpoint):
    """(presenter, Wav2Lip-96 predictor on the CPU, compositor) for clip25."""
    from engine.render.composite import Compositor
    from engine.render.presenter import Presenter
    from models.loader import load_generator
    from models.predictor import LipSyncPredictor
    presenter = Presenter(built["cache"] / "clip25", 96)
    predictor = LipSyncPredictor(load_generator(checkpoint).model, "cpu", "fp32")
    return presenter, predictor, Compositor(presenter)
