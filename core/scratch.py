"""Scratch space: half-made results live in a scratch folder (or file) beside their destination until they are
complete, then one rename publishes them, so nothing half-written is ever found where a result belongs.

Scratch entries are named `.<label>.swl-<host>-<pid>.partial`. The process that made one removes it on the way out:
on an error, on Ctrl-C, on SIGTERM (core.cli turns it into KeyboardInterrupt, so every `finally` runs) and, as a
last resort, at exit. kill -9 cannot be caught, so every writer sweeps the folder it writes into before it starts
and removes the entries whose process is gone, saying so. Only names with our mark and this machine's name are
ever swept (a pid means nothing on another host or in another container sharing the folder).
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import re
import shutil
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("scratch")
MARK = re.compile(r"^\.(?P<label>.+)\.swl-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.(?P<kind>partial|old)$")
HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"
_live: set[Path] = set()  # this process's unpublished scratch entries, removed at exit if still there


def scratch_path(parent: Path | str, label: str, kind: str = "partial") -> Path:
    return Path(parent) / f".{label}.swl-{HOST}-{os.getpid()}.{kind}"


def make_scratch(parent: Path | str, label: str) -> Path:
    """A fresh, empty scratch folder in `parent` (created if needed), after sweeping what dead processes left."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent)
    path = scratch_path(parent, label)
    remove(path)
    path.mkdir()
    _live.add(path)
    return path


def scratch_file(parent: Path | str, label: str) -> Path:
    """A path for a scratch file in `parent` (not created), after sweeping."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent)
    path = scratch_path(parent, label)
    _live.add(path)
    return path


@contextmanager
def written(final: Path | str) -> Iterator[Path]:
    """The scratch path to write `final` through: published as `final` when the block ends, removed if it fails,
    so a killed or failed writer never leaves a half file."""
    final = Path(final)
    scratch = scratch_file(final.parent, final.name)
    try:
        yield scratch
        publish(scratch, final)
    finally:
        remove(scratch)


def owner(path: Path) -> int | None:
    """The pid of the process on this machine that made a scratch entry (None: not ours to judge)."""
    match = MARK.match(path.name)
    return int(match["pid"]) if match and match["host"] == HOST else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep(parent: Path | str) -> list[Path]:
    """Remove the scratch entries in `parent` whose process is gone (killed, crashed); return what was removed."""
    parent = Path(parent)
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = owner(entry)
        if pid is None or pid == os.getpid() or alive(pid):
            continue
        final = parent / MARK.match(entry.name)["label"]
        if entry.name.endswith(".old") and not final.exists():  # killed between the two renames of a publish
            os.rename(entry, final)
            log.warning("restored %s from %s, left behind by process %d, which is gone", final, entry, pid)
            continue
        remove(entry)
        removed.append(entry)
        log.warning("removed %s, left behind by process %d, which is gone", entry, pid)
    return removed


def remove(path: Path) -> None:
    """Delete a scratch folder or file if it is there."""
    _live.discard(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def publish(scratch: Path, final: Path) -> Path:
    """Move a complete scratch folder or file to `final`, replacing what is there without a moment of absence.

    A file is replaced by one rename. A folder that exists is swapped with the new one in one atomic step (Linux
    renameat2 RENAME_EXCHANGE); the old one, now in the scratch place, is then deleted. Where the system cannot
    swap, the old folder is renamed aside, the new one renamed in, and the old one deleted: for that moment there
    is no folder at `final`, and a process killed in it leaves the old one aside, which the next sweep restores."""
    _live.discard(scratch)
    if scratch.is_file() or not final.exists():
        os.replace(scratch, final)
        return final
    if _exchange(scratch, final):
        remove(scratch)
        return final
    old = scratch_path(final.parent, final.name, "old")
    os.rename(final, old)
    try:
        os.rename(scratch, final)
    except BaseException:  # put the old one back; a kill -9 here is undone by the next sweep
        os.rename(old, final)
        raise
    remove(old)
    return final


def _exchange(a: Path, b: Path) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, musl)
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@atexit.register
def _remove_leftovers() -> None:
    for path in list(_live):
        remove(path)
