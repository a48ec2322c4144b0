"""Loading IP_LAP's released files: both are `{'state_dict': ...}` dicts; the reference's inference_single.py
strips one `module.` prefix (DataParallel training) and loads strictly, so every entry must be there with its shape
and nothing else. The renderer's file holds the VGG19 of its perceptual loss as well (`perceptual.model.network.*`):
loaded, and dropped unless the renderer is loaded for training.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Union

import torch

from ..loader import CheckpointError, describe_difference, meta_shapes, read_checkpoint, shapes_of, what_is_it
from ..predictor import pick_device
from .arch import LandmarkGenerator, Renderer

log = logging.getLogger("models")

WHERE_FROM = ("IP_LAP's checkpoints (landmarkgenerator_checkpoint.pth, renderer_checkpoint.pth) are linked from "
              "the README of https://github.com/Weizhi-Zhong/IP_LAP, or trained with python -m models.iplap.train")
HALVES = {"iplap_landmark": (LandmarkGenerator, "IP_LAP's landmark generator (landmarkgenerator_checkpoint.pth)"),
          "iplap_renderer": (Renderer, "IP_LAP's renderer (renderer_checkpoint.pth)")}
Device = Union[str, torch.device, None]


@lru_cache(maxsize=None)
def iplap_signature(kind: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of one half ('iplap_landmark' or 'iplap_renderer') with its shape."""
    return meta_shapes(HALVES[kind][0])


def load_landmark_generator(path: Union[str, Path], device: Device = None) -> LandmarkGenerator:
    """The landmark generator in eval mode on `device` (None: CUDA when present, else CPU). Raises CheckpointError,
    one line, for a missing, corrupt or different file."""
    return _load(path, "iplap_landmark", device)


def load_renderer(path: Union[str, Path], device: Device = None, training: bool = False) -> Renderer:
    """The renderer in eval mode on `device`, as load_landmark_generator. Unless `training`, without the VGG19 of
    its perceptual loss (80 MB that inference never runs), dropped before the move to the device."""
    renderer = _load(path, "iplap_renderer", None if training else "cpu")
    if not training:
        renderer.perceptual = None
    return renderer.to(pick_device(None if device is None else str(device)))


def _load(path: Union[str, Path], kind: str, device: Device):
    path = Path(path)
    try:
        state, extra = read_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {WHERE_FROM}") from exc
    build, description = HALVES[kind]
    if shapes_of(state) != iplap_signature(kind):
        raise CheckpointError(f"{path}: {what_it_is_not(state, kind, extra.get('_container', ''))}; {WHERE_FROM}")
    model = build()
    model.load_state_dict(state, strict=True)
    step = extra.get("global_step")
    log.info("loaded %s: %s (%.1f M parameters%s)", path.name, description,
             sum(p.numel() for p in model.parameters()) / 1e6, f", step {step}" if step is not None else "")
    return model.eval().to(pick_device(None if device is None else str(device)))


def what_it_is_not(state: dict, kind: str, container: str) -> str:
    """What a state dict that is not the wanted IP_LAP half is, as far as its keys tell."""
    wanted = HALVES[kind][1]
    known = what_is_it(state, container)
    if known is not None and known[0] != kind:
        return f"this is {known[1]}, not {wanted}"
    return f"not {wanted} ({len(state)} entries): {describe_difference(shapes_of(state), iplap_signature(kind))}"
