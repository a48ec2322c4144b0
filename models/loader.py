"""Load the checkpoints people already have, unchanged, and say clearly what a file is when it is not what we need.

Accepted: the released dict ({'state_dict', 'optimizer', 'global_step', 'global_epoch'}), keys with or without the
DataParallel `module.` prefix, a bare state dict, and TorchScript archives (the newer official links). The
architecture is recognised from the exact set of keys and shapes, never from a file name.
"""
from __future__ import annotations

import io
import logging
import pickletools
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import torch

from core.errors import UserError
from core.scratch import written

from . import wav2lip96, wav2lip288, wav2lip384
from .blocks import GeneratorSpec, SyncNet, SyncNetSpec, Wav2Lip

log = logging.getLogger("models")

GENERATORS: tuple[GeneratorSpec, ...] = (wav2lip96.GENERATOR, wav2lip288.GENERATOR, wav2lip288.GENERATOR_PRELU_2021,
                                         wav2lip384.GENERATOR)
SYNCNETS: tuple[SyncNetSpec, ...] = (wav2lip96.SYNCNET, wav2lip288.SYNCNET, wav2lip288.SYNCNET_PRELU_2021,
                                     wav2lip384.SYNCNET)
Spec = Union[GeneratorSpec, SyncNetSpec]

WHERE_FROM = {
    "generator": "Wav2Lip-96 weights (wav2lip.pth, wav2lip_gan.pth) come from the Wav2Lip authors' release; "
                 "288/384 weights are trained with `python -m models.train` or primepake/stream-wav2lip scripts",
    "syncnet": "the 96 expert (lipsync_expert.pth) comes from the Wav2Lip authors' release; 288/384 experts are "
               "trained yourself",
}


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is one line saying what is wrong and what to do."""


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    spec: Spec
    path: Path
    global_step: Optional[int]

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        step = f", step {self.global_step}" if self.global_step is not None else ""
        return f"{self.path.name}: {self.spec.description} ({len(self.model.state_dict())} entries, {params / 1e6:.1f} M parameters{step})"


def read_checkpoint(path: Union[str, Path], trust_pickle: bool = False) -> tuple[dict, dict]:
    """Return (state dict without `module.`, the file's other top-level entries). Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if _is_torchscript(path):
        if not trust_pickle:
            raise CheckpointError(f"{path}: a TorchScript archive, and loading one runs the program inside it; if you "
                                  f"made it or trust its source, pass --trust_checkpoint")
        log.warning("%s: loading a TorchScript archive (--trust_checkpoint)", path.name)
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:  # torch raises several types for damaged archives
            raise CheckpointError(f"{path}: TorchScript archive could not be read ({_first_line(exc)})") from exc
        return _strip_module(state), {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file raises UnpicklingError, IndexError, UnicodeDecodeError, RuntimeError…
        callables = unsafe_globals(path)
        if not callables:
            reason = "" if str(exc).startswith("Weights only load failed") else f" ({_first_line(exc)})"
            raise CheckpointError(f"{path}: truncated or corrupt, not a checkpoint torch can read{reason}") from exc
        if not trust_pickle:
            raise CheckpointError(f"{path}: refused: besides tensors it holds Python objects that unpickling would "
                                  f"build by calling {', '.join(callables[:4])}, which could run any code; if you "
                                  f"made this file or trust its source, pass --trust_checkpoint") from exc
        log.warning("%s: unpickling %s (--trust_checkpoint)", path.name, ", ".join(callables[:4]))
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"{path}: truncated or corrupt ({_first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a state dict")
    for key in ("state_dict", "params_ema", "params"):
        if isinstance(data.get(key), dict):
            extra = {k: v for k, v in data.items() if k != key}
            return _strip_module(data[key]), {**extra, "_container": key}
    if data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return _strip_module(data), {}
    raise CheckpointError(f"{path}: no state dict inside (top-level keys: {', '.join(map(str, list(data)[:6]))})")


def unsafe_globals(path: Path) -> list[str]:
    """The functions and classes a checkpoint's pickle would call, other than torch's own tensor rebuilders, read
    from its opcodes without running any of them. Empty when the file holds no readable pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                streams = [archive.read(name)] if name else []
        else:  # the legacy format: several pickles back to back, then raw storage bytes
            streams = [path.read_bytes()]
    except (OSError, zipfile.BadZipFile):
        return []
    found: list[str] = []
    for data in streams:
        found += _pickle_globals(io.BytesIO(data))
    safe = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset")
    named = (g for g in found if re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", g))  # not bytes of a damaged file
    return list(dict.fromkeys(g for g in named if not g.startswith(safe)))


def _pickle_globals(stream: io.BytesIO) -> list[str]:
    """module.name of every GLOBAL/STACK_GLOBAL in the pickles at the start of `stream` (stops at the first byte
    that is not a pickle)."""
    found: list[str] = []
    while True:
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    found.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]) if len(strings) >= 2 else "an unnamed global")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - past the pickles (raw storages) or garbage: done reading
            return found


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _strip_module(state: dict) -> dict:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def meta_shapes(build, *args) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of `build(*args)` with its shape (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        return shapes_of(build(*args).state_dict())


@lru_cache(maxsize=None)
def signature(spec: Spec) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the Wav2Lip architecture with its shape."""
    return meta_shapes(Wav2Lip if isinstance(spec, GeneratorSpec) else SyncNet, spec)


def identify(state: dict, candidates: tuple[Spec, ...]) -> Optional[Spec]:
    shapes = shapes_of(state)
    return next((spec for spec in candidates if signature(spec) == shapes), None)


def what_is_it(state: dict, container: str = "") -> Optional[tuple[str, str]]:
    """(kind, description) of the network a state dict belongs to, judged from its keys; None if unknown."""
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


def _mismatch_report(state: dict, candidates: tuple[Spec, ...]) -> str:
    shapes = shapes_of(state)
    closest = max(candidates, key=lambda s: len(set(signature(s)) & set(shapes)) / len(set(signature(s)) | set(shapes)))
    expected = signature(closest)
    return (f"{len(shapes)} entries; closest known is {closest.name} ({len(expected)} entries); "
            f"{describe_difference(shapes, expected)}")


def _load(path, kind: str, candidates: tuple[Spec, ...], build, trust_pickle: bool) -> LoadedCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file ({WHERE_FROM[kind]})")
    state, extra = read_checkpoint(path, trust_pickle)
    spec = identify(state, candidates)
    if spec is None:
        found = what_is_it(state, extra.get("_container", ""))
        if found is not None and found[0] != kind:
            wanted = "a Wav2Lip generator" if kind == "generator" else "a SyncNet lip-sync expert"
            raise CheckpointError(f"{path}: this is {found[1]}; expected {wanted}")
        raise CheckpointError(f"{path}: unknown {kind} architecture: {_mismatch_report(state, candidates)}")
    model = build(spec)
    model.load_state_dict(state, strict=True)
    model.eval()
    step = extra.get("global_step")
    loaded = LoadedCheckpoint(model, spec, path, int(step) if isinstance(step, (int, float)) else None)
    log.info("loaded %s", loaded.describe())
    return loaded


def load_generator(path: Union[str, Path], trust_pickle: bool = False) -> LoadedCheckpoint:
    """A Wav2Lip generator of any supported size, on the CPU in eval mode. Raises CheckpointError."""
    return _load(path, "generator", GENERATORS, Wav2Lip, trust_pickle)


def load_syncnet(path: Union[str, Path], trust_pickle: bool = False) -> LoadedCheckpoint:
    """A SyncNet lip-sync expert of any supported size, on the CPU in eval mode. Raises CheckpointError."""
    return _load(path, "syncnet", SYNCNETS, SyncNet, trust_pickle)


def save_checkpoint(model: torch.nn.Module, path: Union[str, Path], optimizer: Optional[torch.optim.Optimizer] = None,
                    global_step: int = 0, global_epoch: int = 0, data_parallel_prefix: bool = True) -> Path:
    """Save in the released layout (the reference training scripts' dict, `module.` keys as DataParallel wrote them)."""
    prefix = "module." if data_parallel_prefix else ""
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    payload = {"state_dict": state, "optimizer": optimizer.state_dict() if optimizer else None,
               "global_step": global_step, "global_epoch": global_epoch}
    with written(path) as scratch:
        torch.save(payload, scratch)
    return Path(path)
