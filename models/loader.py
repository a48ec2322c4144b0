"""Wav2Lip's checkpoints, as people already have them: the generators and SyncNets of every size, loaded through
the one loader (models/registry.py: recognised by keys and shapes, strictly loaded) and written in the released
layout.

Errors are one line: a missing file says where such weights come from; a file of another network says what it is;
an unknown layout gets the closest known architecture and what differs from it.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional, Union

import torch

from core.scratch import written

from .registry import (WAV2LIP_GENERATORS, WAV2LIP_SYNCNETS, Architecture, Family, Loaded, describe_difference,
                       load, shapes_of, what_is_it)

GENERATORS = tuple(architecture.spec for architecture in WAV2LIP_GENERATORS)
SYNCNETS = tuple(architecture.spec for architecture in WAV2LIP_SYNCNETS)

WHERE_FROM = {
    "generator": "Wav2Lip-96 weights (wav2lip.pth, wav2lip_gan.pth) come from the Wav2Lip authors' release; "
                 "288/384 weights are trained with `python -m models.train` or primepake/stream-wav2lip scripts",
    "syncnet": "the 96 expert (lipsync_expert.pth) comes from the Wav2Lip authors' release; 288/384 experts are "
               "trained yourself",
}
WANTED = {"generator": "a Wav2Lip generator", "syncnet": "a SyncNet lip-sync expert"}


def refusal(kind: str, candidates: tuple[Architecture, ...], state: dict, container: str) -> str:
    """What a state dict that is none of `candidates` is: another network, or the closest layout and its
    differences."""
    found = what_is_it(state, container)
    if found is not None and found[0] != kind:
        return f"this is {found[1]}; expected {WANTED[kind]}"
    shapes = shapes_of(state)
    closest = max(candidates, key=lambda a: len(set(a.signature) & set(shapes)) / len(set(a.signature) | set(shapes)))
    return (f"unknown {kind} architecture: {len(shapes)} entries; closest known is {closest.name} "
            f"({len(closest.signature)} entries); {describe_difference(shapes, closest.signature)}")


def family(kind: str, candidates: tuple[Architecture, ...]) -> Family:
    """Wav2Lip's families say where such files come from only when the file is missing, as they always have."""
    return Family(candidates, WHERE_FROM[kind], partial(refusal, kind, candidates), where_always=False)


GENERATOR_FAMILY = family("generator", WAV2LIP_GENERATORS)
SYNCNET_FAMILY = family("syncnet", WAV2LIP_SYNCNETS)


def load_generator(path: Union[str, Path], trust_pickle: bool = False) -> Loaded:
    """A Wav2Lip generator of any supported size, on the CPU in eval mode. Raises CheckpointError."""
    return load(path, GENERATOR_FAMILY, trust_pickle)


def load_syncnet(path: Union[str, Path], trust_pickle: bool = False) -> Loaded:
    """A SyncNet lip-sync expert of any supported size, on the CPU in eval mode. Raises CheckpointError."""
    return load(path, SYNCNET_FAMILY, trust_pickle)


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
