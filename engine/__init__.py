"""stream-wav2lip's library: open a presenter and a lip model, and an Engine makes the presenter speak.

    from engine import Engine, LipSync, Presenter
    with Engine(Presenter.open("cache/anna"), LipSync.open("wav2lip_gan.pth"), outputs=["talk.mp4"]) as engine:
        engine.speak("hello.wav")

Layers, each importing only those before it: render/ (the loop), outputs/ (sinks), assemble.py (parts from a
spec), api.py (this surface), serve/ (the network service), cli.py (the command line, imported by nothing).
"""
from .api import Engine, Frame, LipSync, Presenter

__all__ = ["Engine", "Frame", "LipSync", "Presenter"]
