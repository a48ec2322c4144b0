"""Loading IP_LAP's released files: both are `{'state_dict': ...}` dicts; the reference's inference_single.py
strips one `module.` prefix (DataParallel training) and loads strictly, so every entry must be there with its shape
and nothing else (models/registry.py). The renderer's file holds the VGG19 of its perceptual loss as well
(`perceptual.model.network.*`): loaded, and dropped unless the renderer is loaded for training.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Union

import torch

from ..predictor import pick_device
from ..registry import IPLAP_LANDMARK, IPLAP_RENDERER, Architecture, Family, describe_difference, load, shapes_of, \
    what_is_it
from .arch import LandmarkGenerator, Renderer

WHERE_FROM = ("IP_LAP's checkpoints (landmarkgenerator_checkpoint.pth, renderer_checkpoint.pth) are linked from "
              "the README of https://github.com/Weizhi-Zhong/IP_LAP, or trained with python -m models.iplap.train")
Device = Union[str, torch.device, None]


def what_it_is_not(half: Architecture, state: dict, container: str) -> str:
    """What a state dict that is not the wanted IP_LAP half is, as far as its keys tell."""
    known = what_is_it(state, container)
    if known is not None and known[0] != half.name:
        return f"this is {known[1]}, not {half.description}"
    return f"not {half.description} ({len(state)} entries): {describe_difference(shapes_of(state), half.signature)}"


LANDMARK_FAMILY = Family((IPLAP_LANDMARK,), WHERE_FROM, partial(what_it_is_not, IPLAP_LANDMARK))
RENDERER_FAMILY = Family((IPLAP_RENDERER,), WHERE_FROM, partial(what_it_is_not, IPLAP_RENDERER))


def load_landmark_generator(path: Union[str, Path], device: Device = None) -> LandmarkGenerator:
    """The landmark generator in eval mode on `device` (None: CUDA when present, else CPU). Raises CheckpointError,
    one line, for a missing, corrupt or different file."""
    return load(path, LANDMARK_FAMILY).model.to(pick_device(None if device is None else str(device)))


def load_renderer(path: Union[str, Path], device: Device = None, training: bool = False) -> Renderer:
    """The renderer in eval mode on `device`, as load_landmark_generator. Unless `training`, without the VGG19 of
    its perceptual loss (80 MB that inference never runs), dropped before the move to the device."""
    renderer = load(path, RENDERER_FAMILY).model
    if not training:
        renderer.perceptual = None
    return renderer.to(pick_device(None if device is None else str(device)))
