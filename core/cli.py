"""Every command's way out: one line on stderr and an exit code, never a traceback unless --verbose asks for it."""
from __future__ import annotations

import errno
import logging
import signal
import sys
import threading
import traceback
from typing import Callable, Optional

from .errors import UserError

USAGE_ERROR, INTERNAL_ERROR, INTERRUPTED = 2, 1, 130
OS_HINTS = {errno.ENOSPC: "the disk is full: free some space and run it again",
            errno.EDQUOT: "the disk quota is used up: free some space and run it again",
            errno.EFBIG: "the file is larger than this system allows",
            errno.EACCES: "permission denied: pick a folder you can write to",
            errno.EROFS: "the file system is read-only: pick another folder"}


def describe(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an exception that ended a command."""
    if isinstance(exc, (UserError, ValueError)):
        return first_line(str(exc)) or type(exc).__name__, USAGE_ERROR
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        hint = OS_HINTS.get(exc.errno)
        reason = exc.strerror or first_line(str(exc)) or type(exc).__name__
        return f"{where}{reason}" + (f" ({hint})" if hint else ""), USAGE_ERROR
    if isinstance(exc, MemoryError):
        return "out of memory", INTERNAL_ERROR
    return (f"unexpected {type(exc).__name__}: {first_line(str(exc))} (run again with --verbose for the traceback, "
            f"and please report it)"), INTERNAL_ERROR


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else ""


def run_command(main: Callable[[list[str]], int], argv: Optional[list[str]] = None) -> int:
    """Run a command's main(argv) the way a user expects from a command line.

    SIGTERM is handled like Ctrl-C (so partial results are finished or removed); an error is one line on stderr with
    exit code 2 (the user can fix it) or 1 (a bug); `--verbose` anywhere in argv also prints the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the whole point: no traceback for the user
        message, code = describe(exc)
        if verbose:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return code
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt
