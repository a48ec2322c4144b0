"""The one error type a user sees: a problem they can fix, told in one line."""
from __future__ import annotations


class UserError(RuntimeError):
    """Bad input, a missing tool or file, a wrong setting: the message is one line saying what is wrong and what to
    do. Every module's own error (AudioError, VideoError, CheckpointError, ...) derives from it, so a command line
    can print any of them the same way."""


class MissingTool(UserError):
    """A program we run (ffmpeg, ffprobe) is not installed."""
