"""What the engine flags build: presenter, lip-sync model, GFPGAN enhancer and compositor.

One `Parts` serves one command or one server. A server hosting many sessions asks it for each session's parts: a
presenter cache or a model file that several sessions use is loaded once and shared; each part is dropped when
the last session using it ends (release)."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Optional

from configs.spec import EngineSpec
from core.timebase import interpolated
from engine.render.backdrop import Backdrop
from engine.render.blendshapes import BlendshapeMeter
from engine.render.composite import Compositor
from engine.render.loop import EngineConfig
from engine.render.model_worker import SharedModel
from engine.render.presenter import Presenter, playable_manifest
from models.contract import LipModel

log = logging.getLogger("engine")
IPLAP_FILES = {"landmark_checkpoint": "landmarkgenerator_checkpoint.pth",
               "renderer_checkpoint": "renderer_checkpoint.pth"}


def resolve_cache(args: EngineSpec, face_size: int) -> Path:
    from preprocess.cache import read_manifest  # preprocess/ only for the cache check
    if args.face:  # only then the detectors are imported (a render from a cache needs none)
        from preprocess.pipeline import PreprocessConfig, preprocess_video  # the detectors: only for a --face video
        root = Path("out/cache")
        cfg = PreprocessConfig(face_size=face_size, pads=tuple(args.pads), smooth_radius=0 if args.nosmooth else 2,
                               allow_truncated=args.allow_truncated, between_frames=interpolated(args.fps),
                               matte=args.background != "video")
        return root / preprocess_video(Path(args.face), root, cfg).name
    if not args.data_dir:
        raise ValueError("give a presenter: --data_dir CACHE (see `stream_out.py preprocess`) or --face VIDEO")
    folder = Path(args.data_dir)
    if read_manifest(folder) is None and folder.is_dir():
        caches = [d for d in sorted(folder.iterdir()) if d.is_dir() and read_manifest(d) is not None]
        if len(caches) == 1:
            return caches[0]
        if len(caches) > 1:
            raise ValueError(f"{folder} holds {len(caches)} presenter caches; pick one: "
                             + ", ".join(str(c) for c in caches))
    return folder


def check_frame_flags(args: EngineSpec) -> None:
    """--interpolator and --background against the rest, before anything loads: one line for what does not fit."""
    if args.interpolator == "rife":
        if not interpolated(args.fps):
            raise ValueError("--interpolator makes the in-between frames of --fps 50; add --fps 50 or leave it out")
        if not args.rife_path:
            raise ValueError("--interpolator rife needs --rife_path flownet.pkl (train_log/flownet.pkl of RIFE v4.6, "
                             "from the model list in hzwer/Practical-RIFE's README)")
        if not Path(args.rife_path).is_file():
            raise ValueError(f"--rife_path {args.rife_path}: no such file")
    if args.background != "video" and args.data_dir and not args.face:
        from preprocess.cache import read_manifest  # preprocess/ only for the cache check
        manifest = read_manifest(Path(args.data_dir))
        if manifest is not None and not manifest.get("matte"):
            raise ValueError(f"--background {args.background}: {args.data_dir} holds no matte; rebuild it with "
                             f"`python stream_out.py preprocess <video> --out {Path(args.data_dir).parent} --matte`")


def check_iplap_flags(args: EngineSpec, live: bool) -> None:
    """--model iplap against the rest, before anything loads."""
    from models.predictor import pick_device  # torch: only when a device is named
    if args.checkpoint_path:
        raise ValueError("--checkpoint_path is a Wav2Lip checkpoint; --model iplap takes --landmark_checkpoint and "
                         "--renderer_checkpoint")
    for flag in ("landmark_checkpoint", "renderer_checkpoint"):
        if not getattr(args, flag):
            raise ValueError(f"--model iplap needs --{flag} ({IPLAP_FILES[flag]}, linked from the README of "
                             f"https://github.com/Weizhi-Zhong/IP_LAP)")
    if live and pick_device(args.device).type != "cuda":
        raise ValueError("--model iplap cannot run live on the CPU (a frame takes seconds here); render to "
                         "--outfile x.mp4, or run it on a CUDA GPU")


def cuda_speedups(args: EngineSpec, batch: int) -> dict:
    """--compile or --cuda_graphs: the batch sizes each applies to, on CUDA only (on the CPU a compile costs minutes
    for little, and CUDA graphs do not exist)."""
    from models.graphed import graph_batches  # torch: only when a model is built
    from models.predictor import pick_device  # torch: only when a model is built
    wanted = "--compile" if args.compile else "--cuda_graphs" if args.cuda_graphs else None
    if wanted and pick_device(args.device).type != "cuda":
        log.warning("%s is for CUDA GPUs; running eagerly on the CPU", wanted)
        wanted = None
    return {"compile_batches": (batch,) if wanted == "--compile" else (),
            "graph_batches": graph_batches(batch) if wanted == "--cuda_graphs" else ()}


def pick_pipeline(requested: str, predictor: LipModel) -> str:
    """'device' needs a model that takes device tensors: Wav2Lip under torch (the mouth animator, IP_LAP and OpenVINO
    work on host arrays); 'auto' takes it on CUDA, where host-side decodes and cv2 would leave the GPU idle."""
    runs_on_device = predictor.device_tensors
    if requested == "device" and not runs_on_device:
        raise ValueError("--pipeline device needs a Wav2Lip checkpoint under --runtime torch (the mouth animator and "
                         "OpenVINO run on host arrays)")
    if requested == "auto":
        return "device" if runs_on_device and predictor.device.type == "cuda" else "host"
    return requested


def runtime_cache(args: EngineSpec) -> Path:
    """--runtime_cache, or the user's cache folder: converted models, one per checkpoint, shared by presenters."""
    from models.openvino_cpu import default_runtime_cache  # OpenVINO: only when a model is converted
    return Path(args.runtime_cache) if args.runtime_cache else default_runtime_cache()


def host_openvino(args: EngineSpec) -> bool:
    """Will this run be OpenVINO on the CPU, as far as can be told without torch? (`auto` takes CUDA where there is an
    NVIDIA device node; then torch decides.)"""
    device = args.device in ("auto", "cpu") and not (args.device == "auto" and Path("/dev/nvidiactl").exists())
    return device and args.runtime in ("auto", "openvino") and not args.compile and args.pipeline != "device"


class Parts:
    """Builds and, across sessions, shares the loaded parts. `share(model, name)` may wrap a model for a session
    (a server puts a shared model worker in front of it); by default each user gets the model itself. A worker
    hands the model up to `shared_batch` frames at once (every session's due frames): the model then takes them in
    one network call instead of splitting them into the command line's live batch."""

    def __init__(self, share: Callable[[object, str], object] = lambda model, name: model,
                 shared_batch: Optional[int] = None):
        self._share, self.shared_batch = share, shared_batch
        self._loaded: dict = {}    # key -> [object, set of users]
        self._lock = threading.RLock()

    def _get(self, key: tuple, user: object, build: Callable[[], object]):
        with self._lock:  # one load at a time: two sessions asking for the same file wait for one copy
            if key not in self._loaded:
                self._loaded[key] = [build(), set()]
            entry = self._loaded[key]
            entry[1].add(user)
            return entry[0]

    def release(self, user: object) -> list:
        """`user` has ended: drop what nobody else uses; returns the dropped objects (workers to close)."""
        dropped = []
        with self._lock:
            for key in list(self._loaded):
                entry = self._loaded[key]
                entry[1].discard(user)
                if not entry[1]:
                    dropped.append(self._loaded.pop(key)[0])
        return dropped

    def loaded(self, kind: str) -> list:
        with self._lock:
            return [obj for key, (obj, _) in self._loaded.items() if key[0] == kind]

    def build(self, args: EngineSpec, live: bool, user: object = None):
        """(presenter, lip model, compositor, engine config) from the flags."""

        only_weights = args.blendshapes_only  # no lip model, no pixels
        iplap = args.model == "iplap" and not only_weights
        if iplap:
            check_iplap_flags(args, live)
        wav2lip = self._wav2lip(args, live, user, lambda size: self._check_cache(args, size)) \
            if args.checkpoint_path and not only_weights and not iplap else None
        face_size = wav2lip.size if wav2lip is not None else None
        if iplap:
            from models.iplap import FACE as face_size  # torch: only for IP_LAP
        cache = resolve_cache(args, face_size or 96).resolve()
        heads, between = args.enhance != "none", interpolated(args.fps)
        backdrop = Backdrop.parse(args.background)
        presenter = self._get(("presenter", str(cache), face_size, heads, between, backdrop.needs_matte, iplap), user,
                              lambda: self._presenter(cache, face_size, heads, between, backdrop.needs_matte, iplap))
        enhancer = self._enhancer(args, live, user) if heads else None
        if wav2lip is not None:
            predictor = wav2lip
        elif iplap:
            predictor = self._iplap(args, presenter, user)
        else:
            predictor = None if only_weights else self._animator(presenter, user)
        if predictor is not None and pick_pipeline(args.pipeline, predictor) == "device":
            from engine.render.resident import load_resident  # torch: only for the device pipeline
            from engine.render.torch_composite import TorchCompositor  # torch: only for the device pipeline
            frames = self._get(("resident", str(cache), face_size, heads, str(predictor.device)), user,
                               lambda: load_resident(presenter, predictor.device, heads, args.resident_gib))
            compositor = TorchCompositor(presenter, frames, args.enhance, enhancer, args.color_match)
        else:
            compositor = Compositor(presenter, args.enhance, enhancer, args.color_match)
        cfg = EngineConfig(batch_size=args.batch_size, live_batch_size=args.live_batch_size, fps=args.fps,
                           silence_db=args.silence_db, latency_ms=args.latency_ms, backdrop=backdrop,
                           interpolator=self._interpolator(args, user))
        return presenter, predictor, compositor, cfg

    @staticmethod
    def _check_cache(args: EngineSpec, face_size: int) -> None:
        """A --data_dir that cannot be played for this model fails here, before the model is converted or moved
        (seconds to minutes); a --face video is preprocessed for the model afterwards."""
        if not args.face:
            playable_manifest(resolve_cache(args, face_size), face_size)

    def _interpolator(self, args: EngineSpec, user):
        """RIFE for the in-between frames (--interpolator rife), loaded once per file and device; None: DIS."""
        check_frame_flags(args)
        if args.interpolator != "rife" or args.blendshapes_only:
            return None
        from models.rife import RifeInterpolator  # torch: only for RIFE
        device = None if args.device == "auto" else args.device
        return self._get(("rife", str(Path(args.rife_path).resolve()), args.device), user,
                         lambda: RifeInterpolator(args.rife_path, device))

    @staticmethod
    def _presenter(cache: Path, face_size, heads: bool, between: bool, matte: bool, iplap: bool):
        return Presenter(cache, face_size, load_heads=heads, load_between=between, load_matte=matte,
                         load_iplap=iplap)

    def _iplap(self, args: EngineSpec, presenter, user):
        """IP_LAP for a presenter: both networks on the device, the references picked from its frames. Not put
        behind a session's shared model worker: it needs each frame's window of cache frames."""
        def iplap():
            from engine.render.iplap import IplapLipSync  # torch: only for IP_LAP
            from models.iplap import load_landmark_generator, load_renderer  # torch: only for IP_LAP
            from models.iplap.prior import IplapGenerator  # torch: only for IP_LAP
            device = None if args.device == "auto" else args.device
            generator = IplapGenerator(load_landmark_generator(args.landmark_checkpoint, device),
                                       load_renderer(args.renderer_checkpoint, device))
            model = IplapLipSync(generator, presenter, args.iplap_references)
            if generator.device.type == "cuda":  # on a CPU one frame takes seconds: no warm-up there
                model.warm_up(1)
            return model
        key = ("model", "iplap", str(Path(args.landmark_checkpoint).resolve()),
               str(Path(args.renderer_checkpoint).resolve()), args.device, str(presenter.dir), args.iplap_references)
        return self._get(key, user, iplap)

    def _animator(self, presenter, user):
        """One drawn-mouth animator for every presenter of a face size; one per presenter that has recorded mouths
        (its library is its own)."""
        from models.mouthwarp import MouthAnimator  # the animator: only when it is the lip model
        from models.mouthwarp.library import library_for  # the animator: only when it is the lip model

        library = self._get(("mouths", str(presenter.dir)), user, lambda: library_for(presenter))
        own = library.usable

        def animator():
            log.info("no --checkpoint_path: using the weight-free mouth animator (models/mouthwarp); for "
                     "Wav2Lip lip sync pass --checkpoint_path wav2lip_gan.pth")
            if own:
                log.info("mouths: %d recorded in the presenter's footage (openings up to %.0f%% of the mouth width)",
                         len(library.openings), 100 * float(library.openings.max()))
            else:
                log.info("mouths: the footage shows no open mouth, so they are drawn; record the presenter talking "
                         "for a few seconds to use their own")
            model = MouthAnimator(presenter.face_size, library=library if own else None)
            model.warm_up(1)
            return self._share(model, f"animator-{presenter.dir.name if own else presenter.face_size}")
        key = str(presenter.dir) if own else presenter.face_size
        return self._get(("model", "animator", key), user, animator)

    def _wav2lip(self, args, live: bool, user, check_size: Callable[[int], None]):
        """Wav2Lip for the flags: a conversion stored before, found by the checkpoint file's hash (no torch); else
        the checkpoint loaded, converted or put on its device, and the conversion remembered for the next run.
        `check_size(face size)` runs as soon as the checkpoint's size is known, before the model is prepared."""
        batch = args.live_batch_size if live else args.batch_size
        batch = max(batch, self.shared_batch or 0)
        store = runtime_cache(args)

        def wav2lip():
            from models.stored import remember_conversion, stored_predictor  # OpenVINO: only for Wav2Lip
            model = stored_predictor(args.checkpoint_path, store, args.dtype, batch, check_size) \
                if host_openvino(args) else None
            if model is None:
                from models.loader import load_generator  # torch: only when no stored conversion fits
                from models.predictor import LipSyncPredictor  # torch: only when no stored conversion fits
                generator = load_generator(args.checkpoint_path, args.trust_checkpoint)
                check_size(generator.spec.size)
                model = LipSyncPredictor(generator.model, args.device, args.dtype, batch_size=batch,
                                         runtime=args.runtime, store_dir=store, own_model=True,
                                         **cuda_speedups(args, batch))
                del generator  # OpenVINO has its own copy now; torch's is freed
                remember_conversion(args.checkpoint_path, store, model, args.dtype)
            model.warm_up(1)
            return self._share(model, f"wav2lip{model.size}@{model.device}/{model.precision}/b{batch}")
        path = str(Path(args.checkpoint_path).resolve())
        return self._get(("model", path, args.device, args.dtype, args.runtime, batch), user, wav2lip)

    def _enhancer(self, args, live: bool, user):
        from models.gfpgan import GfpganEnhancer, load_gfpgan  # torch: only for --enhance
        if not args.gfpgan_path:
            raise ValueError(f"--enhance {args.enhance} needs --gfpgan_path GFPGANv1.4.pth")
        batch = 2 if live else 16  # live: one frame at a time; a file render: as many heads as the GPU takes
        batch = max(batch, self.shared_batch or 0)

        def gfpgan():
            enhancer = GfpganEnhancer(load_gfpgan(args.gfpgan_path, args.trust_checkpoint), args.device,
                                      args.gfpgan_dtype, batch, **cuda_speedups(args, batch))
            if live and not enhancer.realtime:
                raise ValueError(f"--enhance {args.enhance} cannot run live on the CPU (GFPGAN takes seconds per "
                                 f"frame here); use it for --outfile x.mp4, or on a CUDA GPU")
            return self._share(enhancer, f"gfpgan@{enhancer.device}/{enhancer.dtype}/b{batch}")
        path = str(Path(args.gfpgan_path).resolve())
        return self._get(("model", path, args.device, args.gfpgan_dtype, batch), user, gfpgan)


def blendshape_meter(args: EngineSpec, presenter, predictor):
    """A BlendshapeMeter when the flags ask for weights (--blendshapes, --blendshapes_only, --blendshapes_csv), else
    None. It reads the generated pixels or follows the animator, as --blendshapes_from says (auto: pixels for
    Wav2Lip, whose mouth only its pixels show; the animator's own shape for the animator)."""
    if not (args.blendshapes or args.blendshapes_csv):
        return None
    from models.mouthwarp import MouthAnimator  # the animator: only when it is the lip model
    model = predictor.model if isinstance(predictor, SharedModel) else predictor  # a session's: the model it shares
    animator = model if isinstance(model, MouthAnimator) else None
    pixels = predictor is not None and (args.blendshapes_from == "pixels" or
                                        (args.blendshapes_from == "auto" and animator is None))
    if not pixels:
        return BlendshapeMeter(presenter, animator)
    from preprocess.detect import CropMesh  # MediaPipe: only when weights are read from pixels
    return BlendshapeMeter(presenter, read_pixels=CropMesh())
