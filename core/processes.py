"""CPU time of processes from /proc (Linux): a process's own, and that of everything it started."""
from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc's unit of CPU time


def cpu_seconds(pid: int, ended_children: bool = False) -> float:
    """User and system CPU seconds of a running process (and, if asked, of its children that ended)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
    return sum(int(f) for f in fields[11:15 if ended_children else 13]) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """Every running process started by `pid`, by its children, and so on."""
    found, parents = [], [pid]
    while parents:
        parent = parents.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                children = [int(c) for c in Path(f"/proc/{parent}/task/{thread}/children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            parents += children
    return found


def process_tree_cpu() -> float:
    """CPU seconds of this process and of every process it started, running or ended (an ffmpeg encoder is part of
    what its session costs, though the process's own time leaves it out). Running descendants are read from /proc;
    elsewhere than Linux only the ended ones count."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    for pid in descendants(os.getpid()):
        try:
            total += cpu_seconds(pid, ended_children=True)
        except (OSError, IndexError, ValueError):  # it ended meanwhile: its time is in children_* soon
            continue
    return total
