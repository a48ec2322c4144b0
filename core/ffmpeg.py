"""Finding and running ffmpeg/ffprobe. A child's stderr is always drained on its own thread: a chatty encoder that
fills the 64 KiB pipe would otherwise block forever, and with it whatever feeds it frames."""
from __future__ import annotations

import shutil
import subprocess
from collections import deque
from functools import lru_cache
from typing import IO, Optional, Sequence

from .errors import MissingTool
from .threads import Worker

TRUNCATED_BELOW = 0.95  # decoded / declared length under this: the input is reported as truncated


def find_tool(name: str = "ffmpeg") -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingTool(f"'{name}' is not installed; run scripts/setup.sh (it installs Debian's ffmpeg)")
    return path


@lru_cache(maxsize=None)
def encoder_works(name: str) -> bool:
    """Can this ffmpeg encode with `name` here, now? (h264_nvenc is often compiled in without a usable GPU, so a
    one-frame encode is the only real test.)"""
    try:
        result = subprocess.run([find_tool("ffmpeg"), "-v", "error", "-nostdin", "-f", "lavfi", "-i",
                                 "color=black:size=256x256:rate=25", "-frames:v", "1", "-c:v", name, "-f", "null",
                                 "-"], capture_output=True, timeout=30)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return result.returncode == 0


class Child:
    """A running ffmpeg (or ffprobe): stdin/stdout as asked, stderr drained into the last `keep` lines."""

    def __init__(self, args: Sequence[str], stdin: Optional[int | IO] = None, stdout: Optional[int | IO] = None,
                 pass_fds: Sequence[int] = (), keep: int = 20, bufsize: int = -1):
        # its own session: a Ctrl-C in the terminal (or a stop signal to the process group) reaches us, and we
        # finish the output, instead of killing the encoder under us
        self.proc = subprocess.Popen([find_tool(args[0]), *args[1:]], stdin=stdin, stdout=stdout,
                                     stderr=subprocess.PIPE, pass_fds=tuple(pass_fds), bufsize=bufsize,
                                     start_new_session=True)
        self._lines: deque[str] = deque(maxlen=keep)
        self._drain = Worker(self._read_stderr, f"{args[0]}-stderr")
        self._drain.start()

    @property
    def stdin(self):
        return self.proc.stdin

    @property
    def stdout(self):
        return self.proc.stdout

    def _read_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            text = line.decode(errors="replace").strip()
            if text:
                self._lines.append(text)
        self.proc.stderr.close()

    def error(self) -> str:
        """What went wrong, in one line: ffmpeg's last message, or the exit code."""
        self._drain.join(timeout=2)
        return self._lines[-1] if self._lines else f"exit code {self.proc.returncode}"

    def messages(self) -> list[str]:
        self._drain.join(timeout=2)
        return list(self._lines)

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self.proc.wait(timeout)
        self._drain.join(timeout=2)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        """Stop it if it still runs and close every pipe we hold."""
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:  # a broken stdin pipe raises on its final flush
                    pass
        self._drain.join(timeout=2)

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
