"""One model worker per (model, device): every session's due frames, batched by earliest deadline.

Sessions do not each own a copy of Wav2Lip (or GFPGAN) and call it on their own: on a GPU that would be many small
calls fighting over one card, on the CPU many thread pools fighting over two cores. Each session's model stage
hands its batch to the worker with the time its first frame must be shown; the worker's one thread takes the most
urgent request, fills the batch with the next most urgent ones (up to `max_batch` frames), runs the model once and
hands every session its own rows back. The most urgent request waits a few milliseconds for others to join it
when its time allows (`gather`). Earliest deadline first means no session starves: a request waiting
longer only becomes more urgent. A request that can no longer make its time, given what a frame has cost lately,
is answered with None at once, and its session shows the cached frames (counted as skipped), as a single
session's skip policy does. After `retry_after` such answers in a row one request is run anyway, and if it is
served the old costs are forgotten: one slow call (a cold start, a busy moment) would otherwise refuse every
frame for good, since refused frames never measure the model again.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from core.threads import Worker

log = logging.getLogger("engine.render.model_worker")


@dataclass(order=True)
class Request:
    due: float                                   # monotonic time its first frame is shown (inf: a file, no rush)
    order: int                                   # FIFO among equal deadlines
    method: str = field(compare=False)
    args: tuple = field(compare=False)           # arrays or tensors with one leading batch dimension, or None
    rows: int = field(compare=False)
    future: Future = field(compare=False)
    kind: tuple = field(compare=False, default=())  # what must match to share a call: method, types, devices, shapes


def kind_of(method: str, args: tuple) -> tuple:
    """Requests batch together only when one concatenation can hold them: numpy rows with numpy rows of the same
    shape and dtype, tensors with tensors on the same device, an argument left out (None) where all leave it out."""
    return (method, *(None if a is None else (type(a).__name__, str(getattr(a, "device", "")), str(a.dtype),
                                              tuple(a.shape[1:])) for a in args))


def _concat(parts: list):
    if parts[0] is None:
        return None
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch  # torch: only for frames on a device
    return torch.cat(parts)


class ModelWorker:
    """The thread that owns one model. `model` has the methods sessions call (predict, enhance, ...), each taking
    arrays or tensors with a leading batch dimension (or None for an optional argument left out) and returning one
    row per input row."""

    def __init__(self, model, name: str, max_batch: int = 16, margin: float = 0.02, gather: float = 0.0,
                 retry_after: int = 25):
        self.model, self.name, self.max_batch, self.margin, self.gather = model, name, max_batch, margin, gather
        self.retry_after = retry_after           # requests answered None in a row before one is run anyway
        self._dropped_in_a_row = 0
        self._queue: list[Request] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._costs: deque = deque(maxlen=32)    # seconds per row of the last model calls
        self._closed = False
        self.busy_seconds = 0.0                  # time spent in the model (for the measured capacity)
        self.rows = 0                            # rows run through the model
        self.batches = 0
        self.dropped = 0                         # rows answered None because they could not make their time
        self._thread = Worker(self._run, f"worker-{name}")
        self._thread.start()

    def per_row(self) -> float:
        """Median model seconds per row lately (0 before the first call)."""
        return float(np.median(self._costs)) if self._costs else 0.0

    def submit(self, method: str, args: tuple, due: float = float("inf")) -> Future:
        rows = len(args[0])
        if rows < 1 or any(a is not None and len(a) != rows for a in args):
            raise ValueError(f"{self.name}.{method}: every argument needs the same number of rows, at least one")
        future: Future = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError(f"model worker {self.name} is closed")
            heapq.heappush(self._queue, Request(due, next(self._order), method, args, rows, future,
                                                kind_of(method, args)))
            self._wake.notify()
        return future

    def call(self, method: str, *args, due: float = float("inf")):
        """Run `method` on these rows within the next batch; None if they could not make `due`."""
        return self.submit(method, args, due).result()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)
        for request in self._queue:
            request.future.set_exception(RuntimeError(f"model worker {self.name} closed"))
        self._queue.clear()

    def _next_batch(self) -> list[Request]:
        """The most urgent request that can still make its time and, behind it, the next most urgent ones of the
        same kind while the batch still lets that first one make its time. Requests found hopeless on the way are
        answered None."""
        with self._wake:
            while not self._queue and not self._closed:
                self._wake.wait()
            self._gather()
            if self._closed:
                return []
            retry = self._dropped_in_a_row >= self.retry_after
            now, per_row = time.monotonic(), 0.0 if retry else self.per_row()

            def hopeless(request: Request, rows: int) -> bool:
                return now + per_row * rows > request.due + self.margin

            first = None
            while self._queue and first is None:
                request = heapq.heappop(self._queue)
                if hopeless(request, request.rows):  # too late whatever we do: its session shows cached frames
                    self._answer_none(request)
                else:
                    first = request
            if first is None:
                return []
            batch, rows, keep = [first], first.rows, []
            while self._queue and rows < self.max_batch:
                request = heapq.heappop(self._queue)
                if hopeless(request, request.rows):
                    self._answer_none(request)
                elif (request.kind == first.kind and rows + request.rows <= self.max_batch
                      and not hopeless(first, rows + request.rows)):
                    batch.append(request)
                    rows += request.rows
                else:
                    keep.append(request)
            for request in keep:
                heapq.heappush(self._queue, request)
            return batch

    def _gather(self) -> None:
        """Give other sessions' due frames up to `gather` seconds to join the most urgent one, if even a full batch
        after that wait would leave it on time: sessions running in step take turns one frame each otherwise, and
        one call of many frames costs far less than many calls of one (on a GPU, kernel launches dominate a small
        batch). A frame with less time to spare goes at once."""
        until = time.monotonic() + self.gather
        while self._queue and not self._closed and sum(r.rows for r in self._queue) < self.max_batch:
            now = time.monotonic()
            spare = self._queue[0].due - now - self.per_row() * self.max_batch - self.margin
            if now >= until or spare < until - now:
                return
            self._wake.wait(until - now)

    def _answer_none(self, request: Request) -> None:
        self.dropped += request.rows
        self._dropped_in_a_row += 1
        request.future.set_result(None)

    def _run(self) -> None:
        while True:
            try:
                batch = self._next_batch()
            except Exception:  # a bug here must not strand every session waiting on this worker
                log.exception("model worker %s: batching failed", self.name)
                continue
            if not batch:
                if self._closed:
                    return
                continue
            self._run_batch(batch)

    def _run_batch(self, batch: list[Request]) -> None:
        try:
            method: Callable = getattr(self.model, batch[0].method)
            args = [_concat([r.args[i] for r in batch]) for i in range(len(batch[0].args))]
            started = time.perf_counter()
            out = method(*args)
            spent = time.perf_counter() - started
        except BaseException as exc:  # every waiting session gets the error, the worker lives on
            for request in batch:
                request.future.set_exception(exc)
            return
        rows = sum(r.rows for r in batch)
        if self._dropped_in_a_row >= self.retry_after:  # a retry: the costs that refused everything were stale
            self._costs.clear()
        self._dropped_in_a_row = 0
        self._costs.append(spent / rows)
        self.busy_seconds += spent
        self.rows += rows
        self.batches += 1
        start = 0
        for request in batch:
            request.future.set_result(out[start:start + request.rows])
            start += request.rows


class SharedModel:
    """What one session holds instead of the model: the same methods, each a request to the shared worker with the
    session's deadline. Sharing a lip model, it is a LipModel (models/contract.py) with the model's fields, but
    `scheduled`: that tells the model stage to pass the deadline (`due`). A shared enhancer is only called
    (enhance, enhance_tensors)."""
    scheduled = True

    def __init__(self, worker: ModelWorker, model):
        self.worker, self.model = worker, model

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def size(self) -> int:
        return self.model.size

    @property
    def window_frames(self) -> int:
        return self.model.window_frames

    @property
    def batch_size(self) -> Optional[int]:
        return self.model.batch_size

    @property
    def device(self):
        return self.model.device

    @property
    def runtime(self) -> str:
        return self.model.runtime

    @property
    def device_tensors(self) -> bool:
        return self.model.device_tensors

    def predict(self, mel_windows, faces, landmarks=None, frames=None, due: float = float("inf")):
        return self.worker.call("predict", mel_windows, faces, landmarks, frames, due=due)

    def enhance(self, heads, due: float = float("inf")):
        return self.worker.call("enhance", heads, due=due)

    def enhance_tensors(self, heads, due: float = float("inf")):
        return self.worker.call("enhance_tensors", heads, due=due)
