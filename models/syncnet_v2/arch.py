"""syncnet_python's SyncNet `S`, the network behind the LSE-D / LSE-C lip-sync metrics, with the layer sizes, key
names and state-dict order of the released `syncnet_v2.model` (joonson/syncnet_python SyncNetModel.py, class S,
built with num_layers_in_fc_layers=1024 by SyncNetInstance).

Audio: (N, 1, 13, 20) MFCC windows -> `netcnnaud` (2-D convolutions to 512 x 1 x 1) -> `netfcaud` -> (N, 1024).
Lips: (N, 3, 5, 224, 224) five-frame windows -> `netcnnlip` (a 5-deep 3-D convolution, then 2-D-like ones, to
512 x 1 x 1 x 1) -> `netfclip` -> (N, 1024).
The submodules are registered in the reference's order (netcnnaud, netfcaud, netfclip, netcnnlip), which is the
state-dict order; the pools without parameters stay in place (the first audio one is a 1x1 identity) because the
Sequential indices in the key names count them.
"""
from __future__ import annotations

import torch
from torch import nn

EMBEDDING = 1024


def audio_convolutions() -> nn.Sequential:
    """13 x 20 -> 13 x 20 -> (pool 3x3, stride 1x2) 11 x 9 -> (pool 3x3, stride 2) 5 x 4 -> (5x4 conv) 1 x 1."""
    return nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=1, stride=1),
        nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.BatchNorm2d(192), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 512, kernel_size=(5, 4)), nn.BatchNorm2d(512), nn.ReLU(inplace=True),
    )


def lip_convolutions() -> nn.Sequential:
    """5 x 224 x 224 -> 1 x 109 x 109 -> 54 -> 26 -> 13 -> 13 -> 13 -> (pool) 6 -> (6x6 conv) 1 x 1 x 1."""
    return nn.Sequential(
        nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96), nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(256, 512, kernel_size=(1, 6, 6)), nn.BatchNorm3d(512), nn.ReLU(inplace=True),
    )


def embedding_head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, EMBEDDING))


class S(nn.Module):
    """The two streams; each forward flattens its convolution output to 512 and embeds it in 1024 dimensions."""

    def __init__(self):
        super().__init__()
        self.netcnnaud = audio_convolutions()
        self.netfcaud = embedding_head()
        self.netfclip = embedding_head()
        self.netcnnlip = lip_convolutions()

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, 1024)."""
        hidden = self.netcnnaud(x)
        return self.netfcaud(hidden.view(hidden.size(0), -1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR windows, 0-255 -> (N, 1024)."""
        hidden = self.netcnnlip(x)
        return self.netfclip(hidden.view(hidden.size(0), -1))
