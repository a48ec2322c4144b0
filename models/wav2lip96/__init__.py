"""Wav2Lip-96 generator and SyncNet_color tables (Rudrabha layout)."""
from .arch import DISCRIMINATOR, GENERATOR, SYNCNET

__all__ = ["DISCRIMINATOR", "GENERATOR", "SYNCNET"]
