"""A Wav2Lip generator as an OpenVINO graph, built op by op from its layer table and weights: no tracing.

`openvino.convert_model` traces the torch module through TorchScript, which took 6-14 s for Wav2Lip-96 on two cores
and held a traced copy of the weights meanwhile. The generator is a fixed table of conv/BatchNorm/activation layers
(models/blocks.py), so the same graph is built here directly from the state dict in well under a second, and it
needs nothing of torch. Only numpy arrays come in: the keys are the module's own state-dict names (with or without
BatchNorm folded).

int8 is built the same way (`int8_generator_graph`): every convolution gets its input quantised to 256 levels over
the range measured on calibration batches, and its weights to 7 bits, symmetric per output channel, as
FakeQuantize ops that OpenVINO's CPU plugin runs as int8 kernels. Measuring the ranges is one fp32 pass with a
min and a max taken inside the graph; NNCF's post-training quantisation did the same job in 14-17 s, of which
4 s was its import and whatever the sample count (2026-12-01, 2-core AMD EPYC); this takes about 3 s.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from core.timebase import MEL_SHAPE

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
    """Adds the layers of models/blocks.py to an OpenVINO graph, reading their weights by state-dict name.

    `ranges`: (low, high) of each convolution's input, in the order they are built, to build them in int8."""

    def __init__(self, weights: Weights, ranges: Optional[Sequence[tuple[float, float]]] = None):
        self.ops = import_openvino().opset13
        self.weights = weights
        self.ranges = None if ranges is None else iter(ranges)
        self.conv_inputs: list = []  # every convolution's input, in order: what int8 measures and quantises

    def const(self, array: np.ndarray):
        return self.ops.constant(np.ascontiguousarray(array, np.float32))

    def fake_quantize(self, x, low: np.ndarray, high: np.ndarray, levels: int):
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        return self.ops.fake_quantize(x, self.const(low), self.const(high), self.const(low), self.const(high), levels)

    def conv_input(self, x):
        """`x` as a convolution takes it: recorded (int8 measures it) and, in int8, quantised to 256 levels over
        its measured range. A residual layer adds this same input back, as NNCF's placement does, so OpenVINO can
        fuse the sum into the int8 convolution."""
        self.conv_inputs.append(x)
        if self.ranges is None:
            return x
        low, high = next(self.ranges, (None, None))
        if low is None:
            raise ValueError("fewer measured ranges than convolutions: measure this graph again")
        low, high = min(low, 0.0), max(high, low + 1e-6, 0.0)  # a ReLU output is unsigned
        step = (high - low) / 255
        low = -round(-low / step) * step  # zero on a level: the zero padding stays exactly zero
        return self.fake_quantize(x, low, low + 255 * step, 256)

    def conv(self, x, weight: np.ndarray, bias: np.ndarray, stride, padding, transpose=False, output_padding=0):
        """`x`: what conv_input gave."""
        kernel = self.const(weight)
        if self.ranges is not None:  # symmetric per output channel, in 7 bits: on CPUs without VNNI the int8
            # kernels add pairs of u8 x s8 products in 16 bits, which saturate with full 8-bit weights. 255 levels
            # (the int8 form OpenVINO recognises) over twice the peak, so only -63..63 are used.
            channels = tuple(i for i in range(4) if i != (1 if transpose else 0))
            reach = 2 * np.maximum(np.abs(weight).max(axis=channels, keepdims=True), 1e-8)
            kernel = self.fake_quantize(kernel, -reach, reach, 255)
        if transpose:
            y = self.ops.convolution_backprop_data(x, kernel, _pair(stride), pads_begin=_pair(padding),
                                                   pads_end=_pair(padding), dilations=[1, 1],
                                                   output_padding=_pair(output_padding))
        else:
            y = self.ops.convolution(x, kernel, _pair(stride), _pair(padding), _pair(padding), [1, 1])
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
        x = self.conv_input(x)
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


def generator_graph(spec, weights: Weights, ranges: Optional[Sequence[tuple[float, float]]] = None,
                    measure: bool = False):
    """The OpenVINO model of a `Wav2Lip(spec)` with these weights: inputs mel (B,1,80,16) and faces (B,6,S,S) float32,
    output (B,3,S,S) as the torch module's forward on 4-D inputs. With `ranges`, in int8 (`int8_generator_graph`);
    with `measure`, it also outputs the min and the max of every convolution's input."""
    ov = import_openvino()
    build = GraphBuilder(weights, ranges)
    ops = build.ops
    mel = ops.parameter([-1, 1, *MEL_SHAPE], np.float32, name="mel")
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
    x = build.conv(build.conv_input(x), np.asarray(weights["output_block.1.weight"], np.float32),
                   np.asarray(weights["output_block.1.bias"], np.float32), 1, 0)
    x = ops.tanh(x) if spec.head == "tanh" else ops.sigmoid(x)
    if ranges is not None and next(build.ranges, None) is not None:
        raise ValueError("more measured ranges than convolutions: measure this graph again")
    every_axis = ops.constant(np.arange(4, dtype=np.int64))
    extremes = [op(v, every_axis) for v in build.conv_inputs for op in (ops.reduce_min, ops.reduce_max)] \
        if measure else []
    return ov.Model([x, *extremes], [mel, faces], spec.name)


def int8_generator_graph(spec, weights: Weights, calibration: Iterable[tuple[np.ndarray, np.ndarray]],
                         checked: Iterable[tuple[np.ndarray, np.ndarray]] = ()):
    """(the int8 OpenVINO model, fp32 outputs of the `checked` batches). Each convolution's input range is measured
    in one fp32 pass over the calibration batches ((mel, faces) model inputs), then the graph is built again with
    those ranges. The same pass gives the fp32 outputs the int8 model is checked against, so no other fp32 model is
    built or held."""
    from .openvino_cpu import OpenVinoRunner
    request = OpenVinoRunner(generator_graph(spec, weights, measure=True)).request
    lows = highs = None
    for mel, faces in calibration:
        out = request.infer([mel, faces])
        values = np.array([float(out[i]) for i in range(1, len(out))])
        low, high = values[0::2], values[1::2]
        lows, highs = (low, high) if lows is None else (np.minimum(lows, low), np.maximum(highs, high))
    if lows is None:
        raise ValueError("int8 calibration needs at least one batch")
    expected = [np.array(request.infer([mel, faces])[0]) for mel, faces in checked]
    del request  # the fp32 model goes before the int8 one is compiled
    return generator_graph(spec, weights, list(zip(lows, highs))), expected
