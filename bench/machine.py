"""What every benchmark prints first: when, on what, and the command that printed the figures below it."""
from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def header() -> str:
    """'2026-11-30 14:02, Intel Xeon … (2 cores), torch 2.13.0; command: python bench/x.py --flags'."""
    try:
        import torch
        versions = f", torch {torch.__version__}" + (f", GPU {torch.cuda.get_device_name()}"
                                                     if torch.cuda.is_available() else "")
    except ImportError:
        versions = ""
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = " ".join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    return f"{when}, {cpu_name()} ({os.cpu_count()} cores){versions}; command: {command}"
