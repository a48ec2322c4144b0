"""IFNet_HDv3 of Practical-RIFE v4.6, written from its architecture facts so a released flownet.pkl loads as is.

Facts (read in HolyWu/vs-rife vsrife/IFNet_HDv3_v4_6.py and Fannovel16/ComfyUI-Frame-Interpolation
vfi_models/rife/rife_arch.py, arch_ver "4.6"; warp from hzwer/Practical-RIFE model/warplayer.py):
- four IFBlocks `block0..block3`, widths 192, 128, 96, 64, run at scales 8, 4, 2, 1 (coarse to fine);
  block0 sees img0, img1 and the timestep plane (3+3+1 = 7 channels), the others the two warped images, the
  timestep, the mask so far (8) and the flow so far (4): 12 channels.
- IFBlock: `conv0` = two 3x3 stride-2 convolutions (in -> c/2 -> c), each with bias and LeakyReLU(0.2) (v4.6 has no
  PReLU: that was v4.0 and v3.x); `convblock` = 8 ResConv (`beta` (1,c,1,1), `conv` 3x3 c->c with bias,
  out = leaky_relu(conv(x) * beta + x, 0.2)); `lastconv` = ConvTranspose2d(c, 24, 4, 2, 1) then PixelShuffle(2): 6
  channels at 1/scale resolution, 0-3 the flow (img0's x,y then img1's x,y), 4 the mask logit, 5 unused (v4.5
  differs only there: 20 channels, 5 after the shuffle).
- IFBlock.forward: input and flow bilinearly resized by 1/scale (align_corners False), the flow divided by scale;
  the output resized by scale and its flow multiplied by scale. Block 0 gives flow and mask, the others add to them.
- after each block both images are warped by their flow; the result is sigmoid(mask) * warped0 +
  (1 - sigmoid(mask)) * warped1 (the "fast mode": v4.6 has no context net nor refining U-Net).
- warp: backward, grid_sample bilinear, padding_mode "border", align_corners True, on a [-1, 1] linspace grid, the
  flow in pixels divided by ((W - 1) / 2, (H - 1) / 2).
- state-dict order puts a ResConv's own `beta` before its `conv.weight`/`conv.bias` (tests/data/keys).
Sizes must be multiples of 32 (scale 8, then two stride-2 convolutions), hence PAD_MULTIPLE.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

SCALES = (8, 4, 2, 1)
BLOCKS = ((7, 192), (8 + 4, 128), (8 + 4, 96), (8 + 4, 64))  # (input channels, width) of block0..block3
PAD_MULTIPLE = 32
RESIDUAL_LAYERS = 8
HEAD_CHANNELS = 6  # after PixelShuffle: flow (4), mask logit (1), one channel v4.6 leaves unused


def strided_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Keys `<i>.0.weight`/`<i>.0.bias` as the release names them (Sequential of conv and activation)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 2, 1), nn.LeakyReLU(0.2))


class ResConv(nn.Module):
    """3x3 convolution scaled per channel by a learned `beta`, added to its input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x) * self.beta + x, 0.2)


class IFBlock(nn.Module):
    """One scale of the coarse-to-fine flow: returns (flow, mask logit) at the input's resolution."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv0 = nn.Sequential(strided_conv(in_channels, width // 2), strided_conv(width // 2, width))
        self.convblock = nn.Sequential(*(ResConv(width) for _ in range(RESIDUAL_LAYERS)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(width, HEAD_CHANNELS * 4, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: Optional[torch.Tensor], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = resize(x, 1.0 / scale)
        if flow is not None:
            x = torch.cat((x, resize(flow, 1.0 / scale) / scale), 1)
        head = resize(self.lastconv(self.convblock(self.conv0(x))), scale)
        return head[:, :4] * scale, head[:, 4:5]


class IFNet(nn.Module):
    """forward(img0, img1) -> the frame at `timestep` between them; RGB in [0, 1], sides multiples of 32."""

    def __init__(self):
        super().__init__()
        self.block0, self.block1, self.block2, self.block3 = (IFBlock(c_in, width) for c_in, width in BLOCKS)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timestep: float = 0.5) -> torch.Tensor:
        time_plane = torch.full_like(img0[:, :1], timestep)
        flow, mask = self.block0(torch.cat((img0, img1, time_plane), 1), None, SCALES[0])
        for block, scale in zip((self.block1, self.block2, self.block3), SCALES[1:]):
            warped0, warped1 = backward_warp(img0, flow[:, :2]), backward_warp(img1, flow[:, 2:4])
            flow_step, mask_step = block(torch.cat((warped0, warped1, time_plane, mask), 1), flow, scale)
            flow, mask = flow + flow_step, mask + mask_step
        weight0 = torch.sigmoid(mask)
        return backward_warp(img0, flow[:, :2]) * weight0 + backward_warp(img1, flow[:, 2:4]) * (1 - weight0)


def resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """image sampled at (x, y) + flow (pixels), edges repeated."""
    n, _, height, width = flow.shape
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device).view(1, 1, 1, width).expand(n, 1, height, width)
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device).view(1, 1, height, 1).expand(n, 1, height, width)
    normalised = torch.cat((flow[:, :1] / ((image.shape[3] - 1.0) / 2.0),
                            flow[:, 1:2] / ((image.shape[2] - 1.0) / 2.0)), 1)
    grid = (torch.cat((xs, ys), 1) + normalised).permute(0, 2, 3, 1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
