"""Building blocks shared by every Wav2Lip generator and SyncNet size, named so released state dicts load as is.

Each conv wrapper owns `conv_block` (0 = conv with bias, 1 = BatchNorm) and `act`: 7 state-dict entries, or 8 with
the 2021 PReLU flavour (`act.weight`). The networks themselves are described by tables of `Layer`s (one table per
size, in models/wav2lip96|288|384/arch.py) and built by `Wav2Lip` and `SyncNet` below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

Size2 = Union[int, tuple[int, int]]


@dataclass(frozen=True)
class Layer:
    cin: int
    cout: int
    kernel: Size2 = 3
    stride: Size2 = 1
    padding: Size2 = 1
    residual: bool = False
    transpose: bool = False
    output_padding: int = 0
    act: str = "relu"  # relu | leaky (0.2) | leaky0.01 | prelu | tanh
    norm: bool = True  # False: conv + activation only (the GAN discriminator's nonorm_Conv2d)
    dims: int = 2  # 1: Conv1d + BatchNorm1d (IP_LAP's landmark encoders)


def conv(cin: int, cout: int, kernel: Size2 = 3, stride: Size2 = 1, padding: Size2 = 1, act: str = "relu") -> Layer:
    return Layer(cin, cout, kernel, stride, padding, act=act)


def res(channels: int, count: int = 1, act: str = "relu") -> list[Layer]:
    """`count` residual 3x3 convs that keep the channel count (out = act(bn(conv(x)) + x))."""
    return [Layer(channels, channels, 3, 1, 1, residual=True, act=act) for _ in range(count)]


def up(cin: int, cout: int, stride: int = 2, padding: int = 1, output_padding: int = 1) -> Layer:
    """3x3 transposed conv; the defaults double the size."""
    return Layer(cin, cout, 3, stride, padding, transpose=True, output_padding=output_padding)


def with_act(layers: Sequence[Layer], act: str) -> list[Layer]:
    return [Layer(**{**l.__dict__, "act": act}) for l in layers]


def make_act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky":
        return nn.LeakyReLU(0.2)
    if name == "leaky0.01":
        return nn.LeakyReLU(0.01)
    if name == "prelu":
        return nn.PReLU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}")


class ConvBN(nn.Module):
    """Conv (or transposed conv) + BatchNorm + activation, with an optional residual added before the activation."""

    def __init__(self, layer: Layer):
        super().__init__()
        if layer.transpose:
            conv_layer = nn.ConvTranspose2d(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding,
                                            layer.output_padding)
        else:
            conv_type = nn.Conv1d if layer.dims == 1 else nn.Conv2d
            conv_layer = conv_type(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding)
        norm = nn.BatchNorm1d if layer.dims == 1 else nn.BatchNorm2d
        self.conv_block = nn.Sequential(conv_layer, norm(layer.cout)) if layer.norm else nn.Sequential(conv_layer)
        self.act = make_act(layer.act)
        self.residual = layer.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def stack(layers: Sequence[Layer]) -> nn.Sequential:
    return nn.Sequential(*(ConvBN(l) for l in layers))


def audio_encoder_512(extra_256_residual: bool = False, act: str = "relu") -> list[Layer]:
    """Rudrabha's audio encoder (80x16 mel -> 512x1x1); the SyncNet copy has one more 256 residual."""
    return with_act([conv(1, 32), *res(32, 2), conv(32, 64, stride=(3, 1)), *res(64, 2),
                     conv(64, 128, stride=3), *res(128, 2), conv(128, 256, stride=(3, 2)),
                     *res(256, 2 if extra_256_residual else 1), conv(256, 512, padding=0), conv(512, 512, 1, 1, 0)], act)


def audio_encoder_1024(act: str = "relu") -> list[Layer]:
    """primepake's 1024-d audio encoder (SAM generators, SyncNet 288/384); its last two layers always use ReLU."""
    body = with_act([conv(1, 32), *res(32, 2), conv(32, 64, stride=(3, 1)), *res(64, 2), conv(64, 128, stride=3),
                     *res(128, 2), conv(128, 256, stride=(3, 2)), *res(256, 2), conv(256, 512), *res(512, 2)], act)
    return body + [conv(512, 1024, padding=0), conv(1024, 1024, 1, 1, 0)]


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(pooled))


class SAM(nn.Module):
    """Spatial attention from the encoder feature `sp`, applied to the decoder output `se`: se * att(sp) + se."""

    def __init__(self):
        super().__init__()
        self.sa = SpatialAttention()

    def forward(self, sp: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
        return se * self.sa(sp) + se


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    size: int  # face crop size in pixels
    encoder: tuple[tuple[Layer, ...], ...]
    audio: tuple[Layer, ...]
    decoder: tuple[tuple[Layer, ...], ...]
    output_cin: int
    head: str = "sigmoid"  # sigmoid: output in [0,1]; tanh: [-1,1], mapped by (y+1)/2
    sam: bool = False
    audio_refine: bool = False
    act: str = "relu"  # activation of every wrapper; the 2021 flavour uses prelu
    description: str = ""

    @property
    def refine(self) -> tuple[Layer, ...]:
        """The audio_refine layers (two 1x1 1024 convs) of generators that have them, else none."""
        return (conv(1024, 1024, 1, 1, 0), conv(1024, 1024, 1, 1, 0)) if self.audio_refine else ()

    @property
    def output(self) -> Layer:
        """The output block's ConvBN, before its plain 1x1 conv to 3 channels and the head."""
        return conv(self.output_cin, 32, act=self.act)

    def with_act(self, act: str, name: str, description: str) -> "GeneratorSpec":
        """The same topology with another activation in every wrapper (the 2021 PReLU flavour)."""
        return GeneratorSpec(name, self.size, tuple(tuple(with_act(b, act)) for b in self.encoder),
                             tuple(with_act(self.audio, act)), tuple(tuple(with_act(b, act)) for b in self.decoder),
                             self.output_cin, self.head, self.sam, self.audio_refine, act, description)


@dataclass(frozen=True)
class SyncNetSpec:
    name: str
    size: int  # the generator face size it judges; its face input is the lower half: 15 x size/2 x size
    face: tuple[Layer, ...]
    audio: tuple[Layer, ...]
    description: str = ""


@dataclass(frozen=True)
class DiscriminatorSpec:
    name: str
    size: int  # the generator face size it judges; it sees the lower half of each frame
    blocks: tuple[tuple[Layer, ...], ...]


class QualityDiscriminator(nn.Module):
    """Wav2Lip's visual-quality discriminator (hq_wav2lip_train.py): real/fake per frame, from its lower half."""

    def __init__(self, spec: DiscriminatorSpec):
        super().__init__()
        self.spec = spec
        self.face_encoder_blocks = nn.ModuleList(stack(block) for block in spec.blocks)
        self.binary_pred = nn.Sequential(nn.Conv2d(spec.blocks[-1][-1].cout, 1, 1, 1, 0), nn.Sigmoid())

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """faces (B,3,T,S,S) or (N,3,S,S) in [0,1] -> (N,1) probabilities of being real, time-major as the generator."""
        if faces.dim() > 4:
            faces = torch.cat([faces[:, :, t] for t in range(faces.size(2))], dim=0)
        x = faces[:, :, faces.size(2) // 2:]
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).view(len(x), -1)


class Wav2Lip(nn.Module):
    """Wav2Lip generator: model(mel, faces) -> faces. mel (B,1,80,16); faces (B,6,S,S) BGR in [0,1], channels 0-2 the
    target with its lower half zeroed, 3-5 the reference. 5-D inputs (B,T,1,80,16) / (B,6,T,S,S) as in training."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        if spec.sam:
            self.sam = SAM()  # registered first: the released state dicts start with sam.sa.conv1.weight
        self.face_encoder_blocks = nn.ModuleList(stack(block) for block in spec.encoder)
        self.audio_encoder = stack(spec.audio)
        if spec.audio_refine:
            self.audio_refine = stack(spec.refine)
        self.face_decoder_blocks = nn.ModuleList(stack(block) for block in spec.decoder)
        self.output_block = nn.Sequential(ConvBN(spec.output),
                                          nn.Conv2d(32, 3, 1, 1, 0),
                                          nn.Tanh() if spec.head == "tanh" else nn.Sigmoid())

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        batch = audio.size(0)
        sequence = faces.dim() > 4
        if sequence:  # time-major flattening, as the reference: index = t * B + b
            audio = torch.cat([audio[:, t] for t in range(audio.size(1))], dim=0)
            faces = torch.cat([faces[:, :, t] for t in range(faces.size(2))], dim=0)
        embedding = self.audio_encoder(audio)
        if self.spec.audio_refine:
            embedding = torch.clamp(F.normalize(self.audio_refine(embedding), p=2, dim=1), -1, 1)
        feats = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        x = embedding
        for block in self.face_decoder_blocks:
            x = block(x)
            skip = feats.pop()
            if self.spec.sam:
                x = self.sam(skip, x)
            x = torch.cat([x, skip], dim=1)
        x = self.output_block(x)
        if sequence:
            x = torch.stack(torch.split(x, batch, dim=0), dim=2)
        return x


class SyncNet(nn.Module):
    """Lip-sync expert: (mel (B,1,80,16), 5 lower-half frames (B,15,S/2,S)) -> two L2-normalised embeddings."""

    def __init__(self, spec: SyncNetSpec):
        super().__init__()
        self.spec = spec
        self.face_encoder = stack(spec.face)
        self.audio_encoder = stack(spec.audio)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio_encoder(audio).flatten(1), p=2, dim=1)

    def embed_faces(self, faces: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.face_encoder(faces).flatten(1), p=2, dim=1)

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_audio(audio), self.embed_faces(faces)
