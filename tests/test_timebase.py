"""24 hours of timeline arithmetic (core/timebase.py, the sinks' slots) with no accumulated error: pts are integers,
so frame k of a day lands on slot k and its audio on sample 640·k, however long the stream has run."""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from core.timebase import FPS, IN_BETWEEN_OFFSET, SAMPLE_RATE, SAMPLES_PER_FRAME, TIME_BASE, frame_pts, seconds, slot
from engine.outputs.sinks import Slots
from engine.render.interpolate import OutputFrame, audio_share
from engine.render.timeline import FrameUnit

DAY = 24 * 3600


def test_every_frame_of_a_day_has_its_exact_slot_sample_and_clock_time():
    k = np.arange(DAY * FPS + 1, dtype=np.int64)
    pts = frame_pts(k)
    assert np.array_equal(slot(pts, 25), k) and np.array_equal(slot(pts, 50), 2 * k)
    assert np.array_equal(slot(pts + IN_BETWEEN_OFFSET, 50), 2 * k + 1)
    assert pts[-1] == DAY * SAMPLE_RATE and seconds(pts[-1]) == DAY
    # the live clock: a frame is due at t0 + its time, t0 a monotonic clock days after boot
    t0 = 9 * DAY + 0.123456789
    due = t0 + seconds(pts)
    assert np.abs((due - t0) - k / FPS).max() < 1e-6
    # what each output is given: a frame's unit, its in-between's share at 50 frames/s, WebRTC's 90 kHz clock
    last = FrameUnit(DAY * FPS, np.zeros(SAMPLES_PER_FRAME, np.float32), np.zeros((80, 16), np.float32), False)
    assert last.pts == DAY * SAMPLE_RATE
    _, between = audio_share(last.audio, last.pts, OutputFrame(None, None, 0, 1, True), 50)
    assert slot(between, 50) == 2 * DAY * FPS + 1 and between * TIME_BASE == Fraction(DAY) + Fraction(1, 50)
    assert round(last.pts * TIME_BASE * 90000) == DAY * 90000


def test_a_day_through_an_output_s_slots_keeps_audio_and_video_locked():
    """A controlled clock feeds a 25 frames/s output for a day: frames arrive late, some are lost (the slots are
    filled with the last frame and silence), some come twice. At the end the video frames and audio samples written
    match the day exactly: no offset between them and none against the clock."""
    rng = np.random.default_rng(7)
    slots = Slots(FPS)
    written = {"frames": 0, "samples": 0, "last": None}

    def write(frame, audio):
        written["frames"] += 1
        written["samples"] += audio.size
        written["last"] = frame

    audio = np.zeros(SAMPLES_PER_FRAME, np.float32)
    # the presented frames: steps of 1 (on time), 2-3 (frames lost on the way), 0 (a frame given twice)
    steps = rng.choice([0, 1, 2, 3], size=DAY * FPS // 2, p=[0.05, 0.15, 0.4, 0.4])
    shown = np.cumsum(steps)
    shown = shown[shown < DAY * FPS]
    for k in shown.tolist():
        slots.feed(k, audio, frame_pts(k), write)
    slots.feed(DAY * FPS, audio, frame_pts(DAY * FPS), write)
    assert written["frames"] == DAY * FPS + 1 and written["last"] == DAY * FPS
    assert written["samples"] == written["frames"] * SAMPLES_PER_FRAME
