"""Local networking helpers: loopback addresses, and a free port for the tests and the benchmarks."""
from __future__ import annotations

import ipaddress
import socket


def free_port(kind: str = "tcp") -> int:
    """A TCP (or UDP) port on 127.0.0.1 that nothing uses right now (for a server, OBS or a browser to take)."""
    with socket.socket(type=socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    """'localhost' or a loopback address (127.0.0.0/8, ::1); a name other than localhost is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
