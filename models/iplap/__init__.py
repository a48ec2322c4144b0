"""IP_LAP (Weizhi-Zhong/IP_LAP, CVPR 2023): a landmark generator and a renderer, loaded from the released files.

mesh.py (the face-mesh geometry: crops, landmarks, sketches) needs no torch, so preprocess/ stores IP_LAP's crops
without loading it; the networks (arch.py) and their loader (loader.py) are imported on first use of their names.
"""
from __future__ import annotations

from .mesh import FACE, T_FRAMES

__all__ = ["FACE", "T_FRAMES", "LandmarkGenerator", "Renderer", "load_landmark_generator", "load_renderer"]
_LOADER = {"LandmarkGenerator", "Renderer", "load_landmark_generator", "load_renderer"}


def __getattr__(name: str):
    if name in _LOADER:
        from . import loader
        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
