"""Every command's way out: one line on stderr and an exit code, never a traceback unless --verbose asks for it."""
from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable, NoReturn, Optional

from .errors import UserError
from .threads import Worker

USAGE_ERROR, INTERNAL_ERROR = 2, 1
INTERRUPTED, TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143: as a shell reports the signals
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


def log_to_stderr() -> None:
    """Our INFO lines as "name: message"; libraries' own INFO (torch's statistics at exit) stays out."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("torch").setLevel(logging.WARNING)


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else ""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: every `finally` runs, and partial results are finished or removed."""


def stop_of(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What a command says when it was stopped, and its exit code: ('stopped', 143) after SIGTERM,
    ('interrupted', 130) after Ctrl-C."""
    return ("stopped", TERMINATED) if isinstance(exc, Terminated) else ("interrupted", INTERRUPTED)


def stop_behind(exc: BaseException) -> Optional[KeyboardInterrupt]:
    """The Ctrl-C or SIGTERM an error was raised while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def run_command(main: Callable[[list[str]], int], argv: Optional[list[str]] = None) -> int:
    """Run a command's main(argv) the way a user expects from a command line.

    Ctrl-C and SIGTERM end it with one line, "interrupted" (exit 130) or "stopped" (exit 143), after every `finally`
    has finished or removed what was being written; a second SIGTERM while that runs is ignored (a second Ctrl-C
    is not). An error is one line on stderr with exit code 2 (the user can fix it) or 1 (a bug); `--verbose`
    anywhere in argv also prints the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    in_main = threading.current_thread() is threading.main_thread()
    previous = stop_on_sigterm() if in_main else None
    try:
        return main(argv)
    except KeyboardInterrupt as exc:
        word, code = stop_of(exc)
        print(word, file=sys.stderr)
        return code
    except Exception as exc:  # noqa: BLE001 - the whole point: no traceback for the user
        stop = stop_behind(exc)
        if stop is not None:  # the stop surfaced as another error (a native module's import, a child process)
            word, code = stop_of(stop)
            print(word, file=sys.stderr)
            return code
        message, code = describe(exc)
        if verbose:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return code
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def stop_on_sigterm():
    """SIGTERM raises Terminated in the main thread from now on, also after a library installed its own handler
    (Ray's exits with code 15); the handler it replaced."""
    return signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up that follows is not cut short
    raise Terminated


def exit_with(code: int) -> NoReturn:
    """End the process with `code`. If a worker thread still runs (a model call longer than a stop waits for), the
    interpreter is not finalized: finalizing would abort the process ("terminate called without an active
    exception") with that thread inside native code. The exit handlers run and the output is flushed either way."""
    busy = [t.name for t in threading.enumerate() if isinstance(t, Worker) and t.is_alive()]
    if not busy:
        sys.exit(code)
    logging.getLogger("core.cli").debug("exiting with %s still running", ", ".join(busy))
    atexit._run_exitfuncs()  # noqa: SLF001 - what sys.exit would run, without the finalization that aborts
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (`| head`): nothing more can reach it
            pass
    os._exit(code)
