"""Wav2Lip-288 generator tables (primepake wav2lipv2, ReLU and 2021 PReLU) and the 288 SyncNets."""
from .arch import GENERATOR, GENERATOR_PRELU_2021, SYNCNET, SYNCNET_PRELU_2021

__all__ = ["GENERATOR", "GENERATOR_PRELU_2021", "SYNCNET", "SYNCNET_PRELU_2021"]
