"""A Wav2Lip generator as an OpenVINO graph, built op by op from its layer table and weights: no tracing.

`openvino.convert_model` traces the torch module through TorchScript, which took 6-14 s for Wav2Lip-96 on two cores
and held a traced copy of the weights meanwhile. The generator is a fixed table of conv/BatchNorm/activation layers
(models/blocks.py), so the same graph is built here directly from the state dict in well under a second, and it
needs nothing of torch. Only numpy arrays come in: the keys are the module's own state-dict names (with or without
BatchNorm folded).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .openvino_cpu import import_openvino

Weights = Mapping[str, np.ndarray]
LEAKY_SLOPES = {"leaky": 0.2, "leaky0.01": 0.01}
BN_EPS = 1e-5  # torch's BatchNorm2d default, which every released checkpoint uses


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def folded_conv(weights: Weights, prefix: str, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    """The wrapper's conv weight and bias with its eval-mode BatchNorm (if still there) folded in."""
    weight = np.asarray(weights[f"{prefix}.conv_block.0.weight"], np.float32)
    bias = np.asarray(weights[f"{prefix}.conv_block.0.bias"], np.float32)
    if f"{prefix}.conv_block.1.weight" in weights:
        gamma, beta = (np.asarray(weights[f"{prefix}.conv_block.1.{k}"], np.float32) for k in ("weight", "bias"))
        mean, var = (np.asarray(weights[f"{prefix}.conv_block.1.running_{k}"], np.float32) for k in ("mean", "var"))
        scale = gamma / np.sqrt(var + BN_EPS)
        shape = (1, -1, 1, 1) if transpose else (-1, 1, 1, 1)  # output channels: dim 1 of a transposed conv
        weight, bias = weight * scale.reshape(shape), (bias - mean) * scale + beta
    return weight, bias


class GraphBuilder:
    """Adds the layers of models/blocks.py to an OpenVINO graph, reading their weights by state-dict name."""

    def __init__(self, weights: Weights):
        self.ops = import_openvino().opset13
        self.weights = weights

    def const(self, array: np.ndarray):
        return self.ops.constant(np.ascontiguousarray(array, np.float32))

    def conv(self, x, weight: np.ndarray, bias: np.ndarray, stride, padding, transpose=False, output_padding=0):
        if transpose:
            y = self.ops.convolution_backprop_data(x, self.const(weight), _pair(stride), pads_begin=_pair(padding),
                                                   pads_end=_pair(padding), dilations=[1, 1],
                                                   output_padding=_pair(output_padding))
        else:
            y = self.ops.convolution(x, self.const(weight), _pair(stride), _pair(padding), _pair(padding), [1, 1])
        return self.ops.add(y, self.const(bias.reshape(1, -1, 1, 1)))

    def act(self, x, name: str, prefix: str):
        if name == "relu":
            return self.ops.relu(x)
        if name == "prelu":
            return self.ops.prelu(x, self.const(self.weights[f"{prefix}.act.weight"]))
        return self.ops.prelu(x, self.const(np.array([LEAKY_SLOPES[name]])))

    def layer(self, x, layer, prefix: str):
        """One ConvBN wrapper: act(bn(conv(x)) [+ x])."""
        weight, bias = folded_conv(self.weights, prefix, layer.transpose)
        y = self.conv(x, weight, bias, layer.stride, layer.padding, layer.transpose, layer.output_padding)
        if layer.residual:
            y = self.ops.add(y, x)
        return self.act(y, layer.act, prefix)

    def stack(self, x, layers: Sequence, prefix: str):
        for index, layer in enumerate(layers):
            x = self.layer(x, layer, f"{prefix}.{index}")
        return x

    def spatial_attention(self, skip, x):
        """SAM: x * sigmoid(conv7x7([mean_c(skip), max_c(skip)])) + x."""
        pooled = self.ops.concat([self.ops.reduce_mean(skip, [1], True), self.ops.reduce_max(skip, [1], True)], 1)
        weight = np.asarray(self.weights["sam.sa.conv1.weight"], np.float32)
        padding = weight.shape[-1] // 2
        attention = self.ops.sigmoid(self.ops.convolution(pooled, self.const(weight), [1, 1], [padding] * 2,
                                                          [padding] * 2, [1, 1]))
        return self.ops.add(self.ops.multiply(x, attention), x)


def generator_graph(spec, weights: Weights):
    """The OpenVINO model of a `Wav2Lip(spec)` with these weights: inputs mel (B,1,80,16) and faces (B,6,S,S) float32,
    output (B,3,S,S) as the torch module's forward on 4-D inputs."""
    ov = import_openvino()
    build = GraphBuilder(weights)
    ops = build.ops
    mel = ops.parameter([-1, 1, 80, 16], np.float32, name="mel")
    faces = ops.parameter([-1, 6, spec.size, spec.size], np.float32, name="faces")
    x = build.stack(mel, spec.audio, "audio_encoder")
    if spec.audio_refine:
        x = build.stack(x, spec.refine, "audio_refine")
        x = ops.clamp(ops.normalize_l2(x, ops.constant(np.array([1], np.int64)), 1e-12, "max"), -1.0, 1.0)
    feats, y = [], faces
    for index, block in enumerate(spec.encoder):
        y = build.stack(y, block, f"face_encoder_blocks.{index}")
        feats.append(y)
    for index, block in enumerate(spec.decoder):
        x = build.stack(x, block, f"face_decoder_blocks.{index}")
        skip = feats.pop()
        if spec.sam:
            x = build.spatial_attention(skip, x)
        x = ops.concat([x, skip], 1)
    x = build.stack(x, [spec.output], "output_block")
    x = build.conv(x, np.asarray(weights["output_block.1.weight"], np.float32),
                   np.asarray(weights["output_block.1.bias"], np.float32), 1, 0)
    x = ops.tanh(x) if spec.head == "tanh" else ops.sigmoid(x)
    return ov.Model([x], [mel, faces], spec.name)

