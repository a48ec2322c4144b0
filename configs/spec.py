"""Typed specs: every flag of every command declared once, with its type, default, choices, range and help.

The command line (`flags.py` builds argparse from these fields), the YAML presets and the HTTP session body all
produce the same spec objects, checked by pydantic at the edge; below the entry points the engine reads specs only.
A field's `group` sorts it in --help; `cli` holds what argparse needs beyond the type (nargs, metavar, const).
"""
from __future__ import annotations

import os
from copy import copy
from pathlib import Path
from typing import Literal, Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.timebase import FPS, OUTPUT_RATES

TOKEN_VARIABLE = "STREAM_WAV2LIP_TOKEN"
DEFAULT_OUTFILE = ("out/result.mp4",)
FACE_SIZES = (96, 128, 288, 384)  # the Wav2Lip sizes, and IP_LAP's 128
BACKGROUND_HINT = "give video, alpha, green, blue or a colour as #rrggbb"

GROUPS = PRESENTER, LIP_MODEL, ENHANCE, OUTPUTS, TIMING, GPU, SERVER, RAY, PREPROCESS = (
    "presenter and audio in", "lip model", "enhancement", "outputs", "live timing", "GPU and runtime", "server",
    "Ray Serve", "preprocess")  # in --help's order


def flag(default=None, help: str = "", group: str = "", factory=None, ge=None, le=None, gt=None, **cli):
    """A spec field that is also a command-line flag: its help, its --help group, its range and any argparse extras
    (a default of ... makes it required)."""
    extra = {"group": group, "cli": cli}
    if factory is not None:
        return Field(default_factory=factory, description=help, json_schema_extra=extra, ge=ge, le=le, gt=gt)
    return Field(default, description=help, json_schema_extra=extra, ge=ge, le=le, gt=gt)


def destination(entry: str) -> tuple[str, Optional[int]]:
    """'HOST' or 'HOST:PORT' (IPv6 in brackets) -> (host in lower case, port or None)."""
    parts = urlsplit(f"//{entry}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or port == 0 or parts.path or parts.query or parts.username:
        raise ValueError(f"{entry!r}: give HOST or HOST:PORT, e.g. 192.168.1.20:9000")
    return parts.hostname.lower(), port


def default_of(spec: type[BaseModel], name: str):
    """A field's default, for the code that has to name it outside a spec (dataclass defaults, function
    arguments): the value stays declared once, here."""
    return spec.model_fields[name].get_default(call_default_factory=True)


class Spec(BaseModel):
    """Strict (a JSON body's 1.0 is not an integer, nor 1 a boolean), frozen, and no unknown keys. Lists become
    tuples on the way in, so a YAML list, a JSON array and argparse's nargs all fit."""
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _lists_to_tuples(cls, data):
        if isinstance(data, dict):
            return {k: tuple(v) if isinstance(v, list) and k in cls.model_fields else v for k, v in data.items()}
        return data

    def replace(self, **changes) -> "Spec":
        """A copy with `changes`, checked like any other input."""
        return type(self).model_validate({**self.model_dump(), **changes})


Pads = tuple[int, int, int, int]


def pads(group: str):
    """--pads, in the engine (for --face) and in preprocess, with its one default."""
    return flag((0, 10, 0, 0), "pixels added around the face box, as Wav2Lip's --pads (default 0 10 0 0: chin "
                               "included)", group, nargs=4, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"))




class ObsSpec(Spec):
    """Where OBS's websocket listens (obs-websocket 5, OBS 28 and later)."""
    obs_host: str = flag("127.0.0.1", "OBS's websocket host", OUTPUTS)
    obs_port: int = flag(4455, "OBS's websocket port", OUTPUTS, ge=1, le=65535)
    obs_password: str = flag("", "OBS's websocket password (Tools > WebSocket Server Settings)", OUTPUTS)


class ObsSetupSpec(ObsSpec):
    """`stream_out.py obs-setup`: point OBS at our stream, or start its virtual camera."""
    target: str = flag("obs", "obs (our MPEG-TS on udp://127.0.0.1:23000), a udp:// or srt:// URL, or vcam (start "
                              "OBS's virtual camera)", OUTPUTS)
    audio_delay_ms: int = flag(0, "the input's audio sync offset (OBS takes -950 to 20000)", OUTPUTS, ge=-950,
                               le=20000)


class EngineSpec(ObsSpec):
    """What makes one presenter speak: a command-line run, or one session of a server."""
    # presenter and audio in
    data_dir: Optional[str] = flag(None, "a presenter cache folder (from `stream_out.py preprocess`), or a cache "
                                         "root holding exactly one", PRESENTER)
    face: Optional[str] = flag(None, "uncached input: a video to preprocess first (uses --pads/--nosmooth)",
                               PRESENTER)
    pads: Pads = pads(PRESENTER)
    nosmooth: bool = flag(False, "with --face: no temporal smoothing of face boxes", PRESENTER)
    audio_files: tuple[str, ...] = flag((), "audio to speak, played back to back", PRESENTER, nargs="+")
    allow_truncated: bool = flag(False, "use audio files (and a --face video) that hold less than they declare "
                                         "(otherwise an error)", PRESENTER)
    mic: Optional[str] = flag(None, "speak what the microphone hears (optional device)", PRESENTER, nargs="?",
                              const="default")
    # lip model
    checkpoint_path: Optional[str] = flag(
        None, "Wav2Lip generator checkpoint (wav2lip.pth, wav2lip_gan.pth, 288/384); without one, the weight-free "
              "mouth animator is used", LIP_MODEL)
    model: Literal["wav2lip", "iplap"] = flag(
        "wav2lip", "the lip model: wav2lip (--checkpoint_path; without one the mouth animator) or iplap (IP_LAP: "
                   "--landmark_checkpoint and --renderer_checkpoint; a GPU feature, seconds per frame on a CPU)",
        LIP_MODEL)
    landmark_checkpoint: Optional[str] = flag(None, "--model iplap: IP_LAP's landmark generator", LIP_MODEL,
                                              metavar="landmarkgenerator_checkpoint.pth")
    renderer_checkpoint: Optional[str] = flag(None, "--model iplap: IP_LAP's renderer", LIP_MODEL,
                                              metavar="renderer_checkpoint.pth")
    iplap_references: int = flag(
        25, "--model iplap: reference faces the renderer warps from (the reference's 25; fewer are faster, each "
            "costs about as much as the rest of a frame)", LIP_MODEL, metavar="N", ge=1, le=100)
    trust_checkpoint: bool = flag(False, "allow checkpoints that pickle Python objects", LIP_MODEL)
    # enhancement
    enhance: Literal["none", "lip", "face"] = flag("none", "GFPGAN on the head", ENHANCE)
    gfpgan_path: Optional[str] = flag(None, "GFPGANv1.3.pth / GFPGANv1.4.pth (for --enhance lip|face)", ENHANCE)
    gfpgan_dtype: str = flag("auto", "auto (fp16 on CUDA, fp32 on the CPU), fp32, fp16 or bf16", ENHANCE)
    color_match: bool = flag(False, "match the generated region's colour to the face", ENHANCE)
    # outputs
    outfile: tuple[str, ...] = flag(
        DEFAULT_OUTFILE, "one or more of: a .mp4 path; 'obs' (MPEG-TS to OBS on udp://127.0.0.1:23000); 'vcam' "
                         "(virtual camera + audio device); a udp:// or srt:// URL. With --background alpha: a .mov or "
                         ".webm path, and 'obs' is WebM with alpha on udp://127.0.0.1:23001", OUTPUTS, nargs="+")
    record_minutes: Optional[float] = flag(None, "live: a file output (a recording) stops growing after this many "
                                                 "minutes of frames; the file is finished when the run ends",
                                           OUTPUTS, gt=0)
    fps: Literal[OUTPUT_RATES] = flag(
        FPS, "output frames/s: 50 puts an in-between frame (--interpolator) between each pair the lip model makes at "
             "25, on every output; the audio is unchanged", OUTPUTS)
    interpolator: Literal["dis", "rife"] = flag(
        "dis", "what makes the in-between frames at --fps 50: 'dis' (OpenCV's optical flow, no weights) or 'rife' "
               "(Practical-RIFE v4.6, --rife_path; a GPU feature: about 4 frames/s on a 2-core CPU)", OUTPUTS)
    rife_path: Optional[str] = flag(None, "RIFE v4.6's train_log/flownet.pkl (from the model list in "
                                          "hzwer/Practical-RIFE's README)", OUTPUTS, metavar="flownet.pkl")
    background: str = flag(
        "video", "behind the presenter: 'video' (the recorded one), 'alpha' (transparent: .mov ProRes 4444, .webm "
                 "VP9, or 'obs' as WebM), or a key colour for outputs without alpha: green, blue or #rrggbb (edges "
                 "spill-suppressed for OBS's chroma key). Needs a cache made with --matte", OUTPUTS)
    preview: bool = flag(False, "also show the output in a window", OUTPUTS)
    audio_device: Optional[str] = flag(None, "vcam: sound device the audio plays on (name or index)", OUTPUTS)
    audio_delay_ms: float = flag(0.0, "vcam: delay the audio; OBS: audio sync offset", OUTPUTS, ge=-950, le=20000)
    obs_control: bool = flag(False, "with obs/vcam: create/refresh our source in OBS's current scene (or start its "
                                    "virtual camera)", OUTPUTS)
    blendshapes_csv: Optional[str] = flag(
        None, "with a file render: also write each frame's ARKit-52 mouth and jaw weights, in the column layout of "
              "Live Link Face's CSV exports", OUTPUTS, metavar="FILE.csv")
    blendshapes: bool = flag(False, "serve: compute ARKit weights per frame; a WebSocket client asks for them with "
                                    '{"type": "blendshapes", "on": true}', OUTPUTS)
    blendshapes_only: bool = flag(False, "audio to ARKit weights, no lip model and no video: into "
                                         "--blendshapes_csv, or, serving, as WebSocket events", OUTPUTS)
    blendshapes_from: Literal["auto", "pixels", "animator"] = flag(
        "auto", "how a lip-synced frame's weights are measured: 'pixels' reads the face mesh on the generated mouth "
                "(what the viewer sees; a mesh run per frame), 'animator' takes the mouth animator's shape for the "
                "same audio (exact for the animator, cheap); auto: pixels with a Wav2Lip checkpoint, animator "
                "otherwise", OUTPUTS)
    # live timing
    latency_ms: float = flag(300.0, "live: audio-in to frame-out target", TIMING, gt=0, le=60000)
    silence_db: float = flag(-45.0, "quieter than this (dBFS): no inference, still mouth", TIMING, ge=-150, le=0)
    seconds: Optional[float] = flag(None, "live: stop after this many seconds", TIMING, gt=0)
    batch_size: int = flag(16, "frames per model call when writing a file", TIMING, ge=1)
    live_batch_size: int = flag(1, "frames per model call when live", TIMING, ge=1)
    # GPU and runtime
    device: str = flag("auto", "auto (CUDA if present), cpu, cuda, cuda:1 …", GPU)
    dtype: str = flag("auto", "auto (fp16 on CUDA; int8 on CPUs with VNNI, checked against fp32), fp32, fp16, bf16 "
                              "or int8", GPU)
    runtime: Literal["auto", "torch", "openvino"] = flag("auto", "auto: OpenVINO on the CPU, torch on CUDA", GPU)
    runtime_cache: Optional[str] = flag(None, "where converted models are kept, one per checkpoint (default: "
                                              "$XDG_CACHE_HOME or ~/.cache, /stream-wav2lip/runtime)", GPU)
    pipeline: Literal["auto", "host", "device"] = flag(
        "auto", "device: the cached frames decoded once into GPU memory, the model's pre/post-processing, the "
                "composite and GFPGAN all on the device, one copy per finished frame (auto: on CUDA with a Wav2Lip "
                "checkpoint); host: JPEG decodes and cv2 on host threads (the CPU path)", GPU)
    compile: bool = flag(False, "CUDA: torch.compile Wav2Lip and GFPGAN (CUDA graphs) in the background for the "
                                "batch sizes in use, running eagerly until each is ready", GPU)
    cuda_graphs: bool = flag(False, "CUDA, device pipeline: capture Wav2Lip's and GFPGAN's whole per-frame steps as "
                                    "CUDA graphs at start-up (under a second; the other way to what --compile does)",
                             GPU)
    resident_gib: float = flag(24.0, "device pipeline: most GPU memory for the decoded presenter (beyond it: pinned "
                                     "host memory)", GPU, ge=0)

    @model_validator(mode="after")
    def _one_graph_kind(self):
        if self.compile and self.cuda_graphs:
            raise ValueError("--compile and --cuda_graphs are two ways to CUDA graphs; choose one")
        return self

    @field_validator("background")
    @classmethod
    def _backdrop(cls, value: str) -> str:
        if value in ("video", "alpha", "green", "blue") or (len(value) == 7 and value[0] == "#" and all(
                c in "0123456789abcdefABCDEF" for c in value[1:])):
            return value
        raise ValueError(BACKGROUND_HINT)

    @property
    def alpha(self) -> bool:
        return self.background == "alpha"


class ServeSpec(Spec):
    """The network service: where it listens, who may use it, and how much it holds."""
    listen: Optional[str] = flag(None, "serve the network API (WebSocket speech in, WebRTC preview out), e.g. "
                                       "127.0.0.1:8765", SERVER, metavar="HOST:PORT")
    token: Optional[str] = flag(help=f"with --listen on a non-loopback address: the secret every request must carry "
                                     f"(better: set {TOKEN_VARIABLE}, which `ps` does not show)", group=SERVER,
                                factory=lambda: os.environ.get(TOKEN_VARIABLE))
    allow_host: tuple[str, ...] = flag((), "with --listen: another name the server answers to (Host header), e.g. a "
                                           "LAN host name", SERVER, action="append", metavar="NAME")
    allow_origin: tuple[str, ...] = flag((), "with --listen: a web origin (e.g. https://my.app) whose pages may use "
                                             "the API", SERVER, action="append", metavar="ORIGIN")
    max_queue_seconds: float = flag(300.0, "with --listen: most speech waiting to be spoken, all clients and uploads "
                                           "together", SERVER, gt=0)
    max_client_queue_seconds: float = flag(60.0, "with --listen: most speech one WebSocket client may have waiting",
                                           SERVER, gt=0)
    max_peers: int = flag(4, "with --listen: most WebRTC viewers per session", SERVER, ge=1, le=1000)
    session_root: str = flag(".", "serve: the folder whose presenters, checkpoints and recordings POST /sessions "
                                  "may name (paths in a session body stay inside it)", SERVER)
    max_sessions: int = flag(32, "serve: most sessions at once", SERVER, ge=1, le=10000)
    cpu_cores: Optional[float] = flag(None, "serve: CPU cores the sessions may use; a new session is refused when "
                                            "the measured load says it would not fit (default: half this machine's "
                                            "cores: one Python process)", SERVER, gt=0)
    allow_output: tuple[str, ...] = flag((), "serve: a destination besides loopback that session bodies may stream to, "
                                             "as HOST (any port) or HOST:PORT", SERVER, action="append",
                                         metavar="HOST[:PORT]")
    max_outputs: int = flag(2, "serve: most outputs (streams and recordings) one session body may ask for", SERVER,
                            ge=0, le=16)
    max_record_minutes: float = flag(60.0, "serve: most minutes a session's recording holds (its --record_minutes "
                                           "may ask for less)", SERVER, gt=0)

    @field_validator("allow_output")
    @classmethod
    def _destinations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            destination(entry)
        return value


class StreamOutSpec(EngineSpec, ServeSpec):
    """Every flag of `stream_out.py` (and `serve`): an engine run, optionally serving it."""

    def engine(self) -> EngineSpec:
        return EngineSpec.model_validate(self.model_dump(include=set(EngineSpec.model_fields)))

    def serving(self) -> ServeSpec:
        return ServeSpec.model_validate(self.model_dump(include=set(ServeSpec.model_fields)))


class RayServeSpec(StreamOutSpec):
    """`stream_out.py ray-serve`: the engine flags every host's sessions start from, and the hosts."""
    listen: str = flag("127.0.0.1:8000", "where the router listens", SERVER, metavar="HOST:PORT")
    hosts: int = flag(1, "session host replicas (one per GPU)", RAY, ge=1)
    cpus_per_host: float = flag(1.0, "", RAY, gt=0)
    gpus_per_host: float = flag(0.0, "1 on GPU machines: a replica owns a GPU", RAY, ge=0)
    ray_address: Optional[str] = flag(None, "a running Ray cluster ('auto'); default: start one on this machine", RAY)


def same_as(spec: type[Spec], name: str):
    """Another command's flag, declared where it first was: one default, one help."""
    return copy(spec.model_fields[name])


class PrepareSpec(Spec):
    """`stream_out.py prepare`: convert a checkpoint for this CPU ahead of the first render."""
    checkpoint_path: str = flag(..., "the Wav2Lip generator checkpoint (96, 288 or 384)", LIP_MODEL)
    runtime_cache: Optional[str] = same_as(EngineSpec, "runtime_cache")
    dtype: str = same_as(EngineSpec, "dtype")
    trust_checkpoint: bool = same_as(EngineSpec, "trust_checkpoint")


class PreprocessSpec(Spec):
    """`stream_out.py preprocess`: videos in, one presenter cache each."""
    inputs: tuple[Path, ...] = flag((), "video files and/or folders of videos", PREPROCESS, positional=True,
                                    nargs="+", type=Path)
    out: Path = flag(..., "cache root; one folder per video is made in it", PREPROCESS, type=Path)
    face_size: Literal[FACE_SIZES] = flag(96, "face crop size, to match the model: 96, 288 or 384 for Wav2Lip, 128 "
                                              "for IP_LAP (default 96)", PREPROCESS)
    pads: Pads = pads(PREPROCESS)
    nosmooth: bool = flag(False, "do not smooth boxes and landmarks over time", PREPROCESS)
    detector: Literal["mediapipe", "sfd"] = flag("mediapipe", "mediapipe (default, no download) or sfd (needs "
                                                              "face-alignment's weights on disk)", PREPROCESS)
    force: bool = flag(False, "rebuild caches that are already complete", PREPROCESS)
    train_dir: Optional[Path] = flag(None, "also export an LRS2-style training set here", PREPROCESS, type=Path)
    jpeg_quality: int = flag(95, "JPEG quality of cached images (default 95)", PREPROCESS, ge=1, le=100)
    allow_truncated: bool = flag(False, "use videos that decode to fewer frames than they declare (otherwise they "
                                        "fail)", PREPROCESS)
    fps: Literal[OUTPUT_RATES] = flag(FPS, "50: also store the optical-flow frame between each pair of background "
                                           "frames, so a 50 fps render (stream_out.py --fps 50) interpolates only the "
                                           "face region", PREPROCESS)
    matte: bool = flag(False, "also store the presenter's alpha per frame (selfie segmentation, edges refined on the "
                              "frame), for output without this background: stream_out.py --background "
                              "alpha|green|#rrggbb", PREPROCESS)
    quiet: bool = flag(False, "no progress bars", PREPROCESS)
