"""Wav2Lip-384 SAM generator and SyncNet_color_384 tables."""
from .arch import GENERATOR, SYNCNET

__all__ = ["GENERATOR", "SYNCNET"]
