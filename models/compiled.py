"""torch.compile without a stall: the model runs eagerly while its compiled graphs are built in the background.

A compile with CUDA graphs ("reduce-overhead") costs about a minute and was measured at 2.4x (GFPGAN) and 1.7x
(Wav2Lip-288) on an H100 (issue 17). Waiting for it would stall the first live frames, so CompiledSwap serves
every call eagerly until the graph for that batch size is ready, then switches that batch size over. A batch size
nothing compiled for stays eager: no call ever waits for a compile. torch keeps the generated kernels in its
inductor cache between runs, so later compiles are shorter; CUDA graphs themselves are rebuilt in each process.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import torch

from core.threads import Worker

log = logging.getLogger("models.compiled")


class CompiledSwap:
    """Call it like the module. `example(batch)` makes inputs of that batch size for the background warm-up."""

    def __init__(self, module: torch.nn.Module, example: Callable[[int], tuple], batch_sizes: Iterable[int],
                 mode: str = "reduce-overhead", backend: str = "inductor", name: str = "model",
                 call_kwargs: dict | None = None):
        self.module, self.name, self.kwargs = module, name, call_kwargs or {}
        self.ready: dict[int, Callable] = {}
        self._compiled = torch.compile(module, mode=mode if backend == "inductor" else None, backend=backend,
                                       dynamic=False)
        self._thread = Worker(self._build, f"compile-{name}", (example, sorted(set(batch_sizes))))
        self._thread.start()

    def _build(self, example: Callable[[int], tuple], batch_sizes: list[int]) -> None:
        for batch in batch_sizes:
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    for _ in range(3):  # compile, then record the graph, then replay it once
                        self._compiled(*example(batch), **self.kwargs)
            except Exception as exc:  # a model the compiler cannot take stays eager, and says so once
                log.warning("%s: torch.compile failed for batch %d (%s); running it eagerly", self.name, batch,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                return
            self.ready[batch] = self._compiled
            log.info("%s: compiled for batch %d in %.0f s", self.name, batch, time.perf_counter() - started)

    def wait(self, timeout: float | None = None) -> None:
        """For benchmarks and tests: until every batch size has been built (or failed)."""
        self._thread.join(timeout)

    def __call__(self, *args, **kwargs):
        return self.ready.get(len(args[0]), self.module)(*args, **kwargs)
