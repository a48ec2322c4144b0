"""Limits below HTTP, for every connection the server accepts: a cap in all and per client address, and a deadline
for the first request's head (slowloris). Both close the socket at once; the log says so at most every 10 s.
Places, the counting behind the cap, also caps the open WebSockets (engine/serve/routes.py).

Later heads on a kept-alive connection are bounded by the HTTP server's keep-alive timeout, and bodies by the
upload deadline (engine/serve/routes.py)."""
from __future__ import annotations

import asyncio
import logging
import resource
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

log = logging.getLogger("engine.serve.connections")

HEAD_END = b"\r\n\r\n"


class Refusals:
    """Counts refusals of one kind and logs them at most once every `every` seconds, with how many came meanwhile:
    a flood of refusals is a few log lines, not one per refusal."""

    def __init__(self, what: str, every: float = 10.0):
        self.what, self.every = what, every
        self.count, self._said = 0, float("-inf")

    def add(self, reason: str) -> None:
        self.count += 1
        if time.monotonic() - self._said >= self.every:
            log.warning("refused %d %s in the last %g s: %s", self.count, self.what, self.every, reason)
            self.count, self._said = 0, time.monotonic()


def connection_room(wanted: int) -> int:
    """How many connections the process can hold: `wanted`, or half the open-file limit (raised to its hard limit
    first) if that is less; the other half is for the sessions' pipes, files and encoders."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft // 2))


class Places:
    """`most` places in all, `per_address` of them for one client address. A refusal is one line, which the log
    says at most once every 10 s (with how many were refused meanwhile)."""

    def __init__(self, what: str, most: int, per_address: int):
        self.what, self.most, self.per_address = what, most, per_address
        self.open: dict[str, int] = {}
        self.refused = Refusals(what)

    def take(self, address: str) -> Optional[str]:
        """A place for `address`, or the reason there is none."""
        total, here = sum(self.open.values()), self.open.get(address, 0)
        refusal = (f"{total} {self.what} are open, the server's most" if total >= self.most else
                   f"{here} {self.what} are open from {address}, the most for one address"
                   if here >= self.per_address else None)
        if refusal is not None:
            self.refused.add(refusal)
            return refusal
        self.open[address] = here + 1
        return None

    def give_back(self, address: str) -> None:
        self.open[address] -= 1
        if not self.open[address]:
            del self.open[address]

    @contextmanager
    def held(self, address: str) -> Iterator[Optional[str]]:
        """A place while the block runs: yields None, or the refusal when there is none."""
        refusal = self.take(address)
        try:
            yield refusal
        finally:
            if refusal is None:
                self.give_back(address)


class ConnectionGuard:
    """Wraps the HTTP server's protocol factory: `most` connections at once (`per_address` from one address), and
    a connection whose first request head has not fully arrived `head_seconds` after it opened is closed."""

    def __init__(self, most: int, per_address: int, head_seconds: float):
        self.places = Places("connections", most, per_address)
        self.head_seconds = head_seconds
        self.slow = Refusals("connection(s) too slow to send a request head")

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: GuardedProtocol(factory(), self)


class GuardedProtocol(asyncio.Protocol):
    """The HTTP server's protocol for one connection, behind the guard's cap and head deadline."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard):
        self.inner, self.guard = inner, guard
        self.address: Optional[str] = None
        self.transport: Optional[asyncio.Transport] = None
        self._deadline: Optional[asyncio.TimerHandle] = None
        self._tail = b""  # the last bytes of the head so far, to find its end across reads

    def connection_made(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if self.guard.places.take(address) is not None:
            transport.abort()
            return
        self.address, self.transport = address, transport
        self._deadline = asyncio.get_running_loop().call_later(self.guard.head_seconds, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._deadline = None
        self.guard.slow.add(f"{self.address} sent no whole request head within {self.guard.head_seconds:g} s")
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.address is None:
            return
        if self._deadline is not None:
            seen = self._tail + data
            if HEAD_END in seen:
                self._deadline.cancel()
                self._deadline = None
            self._tail = seen[-(len(HEAD_END) - 1):]
        self.inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        return self.inner.eof_received() if self.address is not None else None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.address is None:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        self.guard.places.give_back(self.address)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
