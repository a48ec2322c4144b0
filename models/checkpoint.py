"""Read a checkpoint file safely, whatever its container: the step before any architecture is looked at.

Accepted: the released dict ({'state_dict', 'optimizer', 'global_step', 'global_epoch'}, GFPGAN's 'params_ema' or
'params'), keys with or without the DataParallel `module.` prefix, a bare state dict, legacy (pre-zip) torch files
and TorchScript archives (the newer official links). A file whose pickle would call anything beyond torch's tensor
rebuilders, or a TorchScript program, is refused unless trusted.
"""
from __future__ import annotations

import io
import logging
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Union

import torch

from core.errors import UserError

log = logging.getLogger("models")


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is one line saying what is wrong and what to do."""


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
