"""Threads whose end can be waited for while Ctrl-C or SIGTERM may arrive."""
from __future__ import annotations

import threading
from typing import Callable, Optional


class Worker(threading.Thread):
    """A daemon thread whose end is an Event. Thread.join cannot be interrupted safely: in CPython 3.11, an
    exception raised inside join (KeyboardInterrupt, our SIGTERM) marks a thread that still runs as stopped, so
    every later join returns at once and is_alive() says False. The process then exits with that thread inside a
    native call, which aborts it ("terminate called without an active exception"). Here join and is_alive read the
    Event, which an interrupted wait leaves as it was."""

    def __init__(self, target: Callable, name: str, args: tuple = ()):
        super().__init__(target=target, args=args, name=name, daemon=True)
        self.ended = threading.Event()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.ended.set()

    def join(self, timeout: Optional[float] = None) -> None:
        self.ended.wait(timeout)

    def is_alive(self) -> bool:
        return self.ident is not None and not self.ended.is_set()
