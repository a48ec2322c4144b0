"""A whole per-frame model step replayed from captured CUDA graphs: one launch instead of hundreds.

On a GPU the device pipeline's Wav2Lip step (uint8 crops and mel windows in, uint8 crops out) was bound by the host
side of its kernel launches (0.25 ms per convolution call on an H200, bench/RESULTS.md "CUDA"), not by the card. A
captured graph replays every kernel of the step with one call. Capturing takes a few warm-up passes and one
recorded pass per batch size (well under a second), so it is done once when the model is built, before any clock
runs: no live call ever overlaps a capture. A batch smaller than a captured size is padded into the next one up;
a larger one, or any call off CUDA, runs eagerly. Replays share one memory pool and hand back a copy of the
output, so a result is never overwritten by the next replay.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

import torch

log = logging.getLogger("models.graphed")


def graph_batches(batch: int) -> tuple[int, ...]:
    """The sizes to capture for calls of up to `batch` rows: powers of two, and `batch` itself (padding a call into
    the next size up wastes at most half of that replay)."""
    sizes, size = {batch}, 1
    while size < batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class GraphedStep:
    """Call it like `step(*tensors)`: every argument has the same leading batch dimension; one tensor comes back.
    `example(batch)` makes inputs of that size on the device, for the capture."""

    def __init__(self, step: Callable[..., torch.Tensor], example: Callable[[int], tuple], batch_sizes: Iterable[int],
                 device: torch.device, name: str = "model", warm_ups: int = 3):
        self.step, self.name = step, name
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple, torch.Tensor]] = {}
        self._lock = threading.Lock()  # one replay at a time: the captured buffers are shared
        if device.type != "cuda" or not batch_sizes:
            return
        started, pool = time.perf_counter(), None
        for batch in sorted(set(batch_sizes)):
            inputs = example(batch)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.inference_mode(), torch.cuda.stream(side):
                for _ in range(warm_ups):  # cuDNN picks its kernels and the allocator its blocks outside the graph
                    step(*inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                output = step(*inputs)
            pool = graph.pool()
            self.graphs[batch] = (graph, inputs, output)
        torch.cuda.synchronize(device)
        log.info("%s: CUDA graphs captured for batch sizes %s in %.2f s", name, sorted(self.graphs),
                 time.perf_counter() - started)

    def captured_size(self, rows: int) -> int | None:
        """The captured batch size a call of `rows` rows replays (None: it runs eagerly)."""
        return min((size for size in self.graphs if size >= rows), default=None)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        rows = len(inputs[0])
        size = self.captured_size(rows)
        if size is None:
            return self.step(*inputs)
        graph, static_inputs, static_output = self.graphs[size]
        with self._lock:
            for static, given in zip(static_inputs, inputs):
                static[:rows].copy_(given, non_blocking=True)
            graph.replay()
            return static_output[:rows].clone()
