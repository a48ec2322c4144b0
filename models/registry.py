"""Every network the project loads, recognised by its state dict's keys and shapes, and the one way to load any of
them (spandrel's approach: a file is what its weights say, never what its name says).

`load(path, family)` reads the file (models/checkpoint.py), takes its key signature, finds the architecture of the
family whose signature it is, builds it and loads the weights strictly. Families differ only in what they accept
and in how they say no: each public loader (models/loader.py for Wav2Lip, iplap/loader.py, rife/, syncnet_v2/,
gfpgan/) is a `Family` and a call to `load`. Networks are built lazily, so importing this table builds nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from . import wav2lip96, wav2lip288, wav2lip384
from .blocks import SyncNet, Wav2Lip
from .checkpoint import CheckpointError, read_checkpoint

log = logging.getLogger("models")


@dataclass(frozen=True, eq=False)
class Architecture:
    """One network: how to build it and which state dicts are its own. `optional` ends the names of entries a
    released file may lack (the built model's values stay); `ignore_extra` drops entries beyond its own, as the
    reference's own loader does."""
    name: str
    description: str
    build: Callable[[], nn.Module]
    spec: Any = None  # the table it is built from (Wav2Lip's sizes), for callers that need its facts
    optional: str = ""
    ignore_extra: bool = False

    @cached_property
    def signature(self) -> dict[str, tuple[int, ...]]:
        """Every state-dict key with its shape (built on the meta device: no memory, no time)."""
        with torch.device("meta"):
            return shapes_of(self.build().state_dict())

    def expected(self, shapes: dict) -> dict[str, tuple[int, ...]]:
        """The signature a state dict with these entries must show: optional entries only where it has them."""
        return {key: shape for key, shape in self.signature.items()
                if key in shapes or not (self.optional and key.endswith(self.optional))}

    def fits(self, shapes: dict) -> bool:
        own = {k: s for k, s in shapes.items() if k in self.signature} if self.ignore_extra else shapes
        return own == self.expected(own)


def _landmark_generator() -> nn.Module:
    from .iplap.arch import LandmarkGenerator
    return LandmarkGenerator()


def _renderer() -> nn.Module:
    from .iplap.arch import Renderer
    return Renderer()


def _syncnet_v2() -> nn.Module:
    from .syncnet_v2.arch import S
    return S()


def _ifnet() -> nn.Module:
    from .rife.arch import IFNet
    return IFNet()


def _gfpgan() -> nn.Module:
    from .gfpgan.arch import build_gfpgan
    return build_gfpgan()


WAV2LIP_GENERATORS = tuple(Architecture(s.name, s.description, partial(Wav2Lip, s), s) for s in (
    wav2lip96.GENERATOR, wav2lip288.GENERATOR, wav2lip288.GENERATOR_PRELU_2021, wav2lip384.GENERATOR))
WAV2LIP_SYNCNETS = tuple(Architecture(s.name, s.description, partial(SyncNet, s), s) for s in (
    wav2lip96.SYNCNET, wav2lip288.SYNCNET, wav2lip288.SYNCNET_PRELU_2021, wav2lip384.SYNCNET))
IPLAP_LANDMARK = Architecture("iplap_landmark", "IP_LAP's landmark generator (landmarkgenerator_checkpoint.pth)",
                              _landmark_generator)
IPLAP_RENDERER = Architecture("iplap_renderer", "IP_LAP's renderer (renderer_checkpoint.pth)", _renderer)
# the released file predates BatchNorm's num_batches_tracked: the counters may be absent
SYNCNET_V2 = Architecture("syncnet_v2", "syncnet_python's SyncNet S", _syncnet_v2, optional=".num_batches_tracked")
# later releases add training-only entries (teacher.*, caltime.*), which the reference drops too
RIFE = Architecture("rife4.6", "RIFE v4.6 IFNet_HDv3", _ifnet, ignore_extra=True)
GFPGAN = Architecture("gfpgan", "GFPGANv1Clean 512", _gfpgan)
ARCHITECTURES = (*WAV2LIP_GENERATORS, *WAV2LIP_SYNCNETS, IPLAP_LANDMARK, IPLAP_RENDERER, SYNCNET_V2, RIFE, GFPGAN)


@dataclass(frozen=True)
class Family:
    """What one public load function accepts and how it refuses the rest, in one line: `refusal(state, container)`
    says what the state dict is instead (after "path: "). `where_always`: every error ends with "; where_from";
    else only a missing file says where such files come from, in brackets."""
    architectures: tuple[Architecture, ...]
    where_from: str
    refusal: Callable[[dict, str], str]
    where_always: bool = True


@dataclass
class Loaded:
    """A network loaded from a file, on the CPU in eval mode, with what the file turned out to be."""
    model: nn.Module
    architecture: Architecture
    path: Path
    global_step: Optional[int]
    ignored: int = 0  # the file's entries that are not the network's (dropped)
    absent: int = 0   # optional entries the file lacks (the built values kept)

    @property
    def spec(self):
        """The table it was built from (Wav2Lip's GeneratorSpec or SyncNetSpec); None for the others."""
        return self.architecture.spec

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        notes = (f", step {self.global_step}" if self.global_step is not None else "") + \
                (f"; {self.ignored} other entries ignored" if self.ignored else "") + \
                (f"; {self.absent} entries absent, as released" if self.absent else "")
        return (f"{self.path.name}: {self.architecture.description} ({len(self.model.state_dict())} entries, "
                f"{params / 1e6:.1f} M parameters{notes})")


def load(path: Union[str, Path], family: Family, trust_pickle: bool = False) -> Loaded:
    """read -> key signature -> identify -> build -> strict load. Raises CheckpointError, one line."""
    path = Path(path)
    if not family.where_always and not path.is_file():
        raise CheckpointError(f"{path}: no such file ({family.where_from})")
    try:
        state, extra = read_checkpoint(path, trust_pickle)
    except CheckpointError as exc:
        if not family.where_always:
            raise
        raise CheckpointError(f"{exc}; {family.where_from}") from exc
    architecture = identify(state, family.architectures)
    if architecture is None:
        refused = f"{path}: {family.refusal(state, extra.get('_container', ''))}"
        raise CheckpointError(f"{refused}; {family.where_from}" if family.where_always else refused)
    model = architecture.build()
    own = {key: value for key, value in state.items() if key in architecture.signature}
    model.load_state_dict({**model.state_dict(), **own}, strict=True)  # only optional entries keep built values
    step = extra.get("global_step")
    loaded = Loaded(model.eval(), architecture, path, int(step) if isinstance(step, (int, float)) else None,
                    ignored=len(state) - len(own), absent=len(architecture.signature) - len(own))
    log.info("loaded %s", loaded.describe())
    return loaded


def identify(state: dict, candidates: tuple[Architecture, ...] = ARCHITECTURES) -> Optional[Architecture]:
    """The first of `candidates` whose keys and shapes the state dict has; None if none."""
    shapes = shapes_of(state)
    return next((architecture for architecture in candidates if architecture.fits(shapes)), None)


def what_is_it(state: dict, container: str = "") -> Optional[tuple[str, str]]:
    """(kind, description) of the network a state dict that fits no architecture belongs to, judged from its keys
    (networks loaded elsewhere, or not at all, included); None if unknown."""
    keys = set(state)
    if container in ("params_ema", "params") or any(k.startswith(("stylegan_decoder.", "conv_body_first.")) for k in keys):
        return "gfpgan", "a GFPGAN face-restoration checkpoint"
    if any(k.startswith("binary_pred.") for k in keys):
        return "discriminator", "the Wav2Lip visual-quality discriminator (GAN training), not the generator"
    if "sam.sa.conv1.weight" in keys and any(k.startswith("face_encoder_blocks.0.3.") for k in keys):
        return "sam192", f"a Wav2Lip_SAM-192 generator ({len(keys)} entries), which this version does not load"
    if any(k.startswith("face_encoder_blocks.") for k in keys):
        return "generator", "a Wav2Lip generator"
    if any(k.startswith("face_encoder.") for k in keys) and any(k.startswith("audio_encoder.") for k in keys):
        return "syncnet", "a SyncNet lip-sync expert"
    if any(k.startswith("netcnnlip.") for k in keys):
        return "syncnet_v2", "syncnet_python's SyncNet (syncnet_v2.model), the LSE metrics' judge"
    if any(k.startswith(("fusion_transformer.", "pose_encoder.")) for k in keys):
        return "iplap_landmark", "IP_LAP's landmark generator (landmarkgenerator_checkpoint.pth)"
    if any(k.startswith(("flow_module.", "translation.")) for k in keys):
        return "iplap_renderer", "IP_LAP's renderer (renderer_checkpoint.pth)"
    return None


def shapes_of(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def describe_difference(shapes: dict, expected: dict) -> str:
    """What separates a state dict from an expected layout: unexpected, missing and wrongly shaped keys."""
    unexpected = [k for k in shapes if k not in expected]
    missing = [k for k in expected if k not in shapes]
    wrong = [f"{k} {shapes[k]} (expected {expected[k]})" for k in shapes if k in expected and shapes[k] != expected[k]]
    parts = []
    for label, items in (("unexpected", unexpected), ("missing", missing), ("wrong shape", wrong)):
        if items:
            parts.append(f"{label}: {', '.join(items[:4])}{' …' if len(items) > 4 else ''}")
    return "; ".join(parts)
