"""Wav2Lip-96 generator and SyncNet_color tables (Rudrabha layout)."""
from .arch import GENERATOR, SYNCNET

__all__ = ["GENERATOR", "SYNCNET"]
