"""The render core (engine/render/) on a real cache, espeak-ng speech and a random-weight Wav2Lip-96: frames and audio
follow the input, silence passes the cached frame, the mouth region alone changes, the live clock, the skip policy,
the paste-back of enhanced heads and bounded memory."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, CollectSink
from engine.render.composite import Compositor, lower_face_mask
from engine.render.loop import EngineConfig, LiveEngine, render_file
from engine.render.presenter import Presenter, ping_pong
from engine.render.sources import Feeder
from engine.render.timeline import FrameTimeline
from models.mouthwarp import MouthAnimator


@pytest.fixture(scope="module")
def rendered(rig, talk):
    presenter, predictor, compositor = rig
    sink = CollectSink()
    stats = render_file(talk[1], presenter, predictor, compositor, [sink], progress=False)
    timeline = FrameTimeline()
    units = timeline.push(talk[1]) + timeline.finish()
    return sink, stats, units


def test_ping_pong_never_jumps():
    assert [ping_pong(k, 4) for k in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert all(abs(ping_pong(k + 1, 100) - ping_pong(k, 100)) == 1 for k in range(500))


def test_frame_count_and_audio_follow_the_input(rendered, talk):
    sink, stats, units = rendered
    audio = talk[1]
    assert stats.frames == len(sink.frames) == -(-len(audio) // 640)
    assert np.array_equal(np.concatenate(sink.audio)[:len(audio)], audio)  # every sample, in order, once


def test_silence_shows_the_cached_frame_untouched_and_skips_the_model(rendered, rig):
    presenter = rig[0]
    sink, stats, units = rendered
    silent = [u.index for u in units if not u.speaking]
    assert len(silent) > 25  # the 1.5 s gap (minus the window's lookahead)
    for k in silent:
        assert np.array_equal(sink.frames[k], presenter.background(ping_pong(k, presenter.frames)))
    expected = sum(u.speaking and presenter.has_face[ping_pong(u.index, presenter.frames)] for u in units)
    assert stats.inferred == expected < len(units)


def test_speech_changes_only_the_face_region_and_follows_ping_pong(rendered, rig):
    presenter = rig[0]
    sink, _, units = rendered
    changed = 0
    for unit in units:
        index = ping_pong(unit.index, presenter.frames)
        diff = np.abs(sink.frames[unit.index].astype(int) - presenter.background(index).astype(int)).max(axis=2)
        if not (unit.speaking and presenter.has_face[index]):
            assert diff.max() == 0  # faceless (covered) frames pass through too
            continue
        x1, y1, x2, y2 = presenter.box[index]
        outside = diff.copy()
        outside[y1:y2, x1:x2] = 0
        assert outside.max() == 0, f"frame {unit.index} changed outside its face box"
        changed += diff[y1:y2, x1:x2].max() > 10
    assert changed > 50
    assert max(u.index for u in units) > presenter.frames  # the loop turned around (inside the silent gap too)


def test_mask_leaves_no_box_edge():
    mask = lower_face_mask(96)
    assert mask[0].max() == mask[-1].max() == mask[:, 0].max() == mask[:, -1].max() == 0
    assert mask[67, 48] > 0.99 and mask[:29].max() == 0  # mouth replaced; brows and eyes (top 30%) never touched


@pytest.mark.slow
def test_a_live_run_of_streamed_speech_presents_every_sample_in_order(rig, talk):
    """Speech streamed the way a TTS client sends it (20 ms chunks) for 6 s, the mouth animator on
    it: every input sample comes out in order with nothing lost or added, one frame per 40 ms of it, the mouth
    driven. How late frames come and whether the clock drifts depend on the machine's load: bench/engine.py prints
    them (late frames, pacing offset, drift)."""
    presenter, _, compositor = rig
    sink = CollectSink(live=True)
    animator = MouthAnimator(presenter.face_size)
    animator.warm_up(1)  # as the command line does: the first call imports scipy, and alone this test would pay it
    engine = LiveEngine(presenter, animator, compositor, [sink], EngineConfig())
    speech = talk[1][: 6 * 16000]  # speech, a 1.5 s silence, speech
    # 1 s ahead: a feeder thread starved by a busy machine would leave a gap the clock fills with silence
    Feeder(engine.buffer, (speech[i:i + 320] for i in range(0, len(speech), 320)), ahead_seconds=1.0).start()
    stats = engine.run()
    out = np.concatenate(sink.audio)
    assert np.array_equal(out[: len(speech)], speech) and not out[len(speech):].any()  # no gap, nothing lost
    assert stats.frames == len(sink.times) == -(-len(speech) // 640) and stats.presented == stats.frames
    assert stats.speech > 70 and stats.inferred > 0 and stats.inferred + stats.skipped == stats.speech


def test_microphone_errors_at_the_device_boundary():
    """No sound card here: sounddevice's real device lookup fails (its own words are in the message) and the
    message says how to list devices."""
    import sounddevice
    from audio.decode import AudioError
    from engine.render.sources import AudioBuffer, Microphone
    with pytest.raises(AudioError) as named:
        Microphone(AudioBuffer(), device="no-such-microphone").stop()
    assert "No input device matching 'no-such-microphone'" in str(named.value)
    assert "python -m sounddevice" in str(named.value)
    if not any(d["max_input_channels"] for d in sounddevice.query_devices()):  # no microphone at all, as here
        with pytest.raises(AudioError, match="Error querying device"):
            Microphone(AudioBuffer()).stop()


def test_colour_match_moves_the_mean_inside_the_mask():
    from engine.render.composite import match_colour
    original = np.full((96, 96, 3), (90, 120, 200), np.uint8)
    generated = np.full((96, 96, 3), (60, 140, 170), np.uint8)
    fixed = match_colour(generated, original, lower_face_mask(96))
    assert np.abs(fixed.reshape(-1, 3).mean(0) - (90, 120, 200)).max() < 1.0


@pytest.fixture(scope="module")
def gfpgan_rig(built):
    """The enhancer's real path (GFPGANer's pre- and post-processing, tested against the network in test_gfpgan)
    around a one-layer network in GFPGAN's call form: what is tested here is where the head goes back, and
    GFPGAN itself takes 4 s a head on this CPU."""
    import torch
    from models.gfpgan import GfpganEnhancer

    class OneLayerRestorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x, return_rgb=False, randomize_noise=False):
            return torch.tanh(self.conv(x)), None

    torch.manual_seed(0)
    presenter = Presenter(built["cache"] / "clip25", 96, load_heads=True)
    return presenter, GfpganEnhancer(OneLayerRestorer(), "cpu")


@pytest.mark.parametrize("mode", ["face", "lip"])
def test_enhanced_head_goes_back_through_the_inverse_affine(gfpgan_rig, mode):
    import cv2
    presenter, enhancer = gfpgan_rig
    index = int(np.flatnonzero(presenter.has_face)[5])
    face = np.full((1, 96, 96, 3), 128, np.uint8)
    frame = Compositor(presenter, mode, enhancer).compose([index], face)[0]
    diff = np.abs(frame.astype(int) - presenter.background(index).astype(int)).max(axis=2)
    # the head's footprint in the frame: the 512 square mapped back by the cached inverse affine
    footprint = cv2.warpAffine(np.ones((512, 512), np.uint8), presenter.head_affine_inv[index],
                               (presenter.width, presenter.height))
    assert diff[footprint == 0].max() == 0 and diff.max() > 10
    changed = diff > 10
    if mode == "lip":  # only around the mouth: the cached face box, lower part
        x1, y1, x2, y2 = presenter.box[index]
        inside = np.zeros_like(changed)
        inside[y1:y2, x1:x2] = True
        assert changed[~inside].sum() < 0.02 * changed.sum()


def test_head_mask_leaves_no_edge():
    from engine.render.composite import head_face_mask
    mask = head_face_mask(512)
    assert mask[0].max() == mask[-1].max() == mask[:, 0].max() == mask[:, -1].max() == 0
    assert mask[371, 256] > 0.99 and mask[240, 193] > 0.9  # mouth and eyes of the FFHQ template inside


@pytest.mark.slow
def test_an_hour_of_audio_becomes_frame_windows_in_bounded_memory(tmp_path):
    """The file render's audio front end is a stream: decode -> mel -> windows for 1 h of audio under 300 MB."""
    hour = tmp_path / "hour.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "3600",
                    "-c:a", "pcm_s16le", str(hour)], check=True)
    # VmHWM: this process image's own peak (ru_maxrss would include the pytest process it was forked from)
    code = ("import re, sys; from audio.decode import stream_audio; from engine.render.timeline import frame_units; "
            "n = sum(1 for _ in frame_units(stream_audio(sys.argv[1]))); "
            "print(n, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    result = subprocess.run([sys.executable, "-c", code, str(hour)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    frames, peak_kb = map(int, result.stdout.split())
    assert frames == 3600 * 25 and peak_kb < 300 * 1024, (frames, peak_kb)


def test_skip_policy_skips_only_frames_the_model_would_make_late_and_retries():
    from engine.render.loop import SkipPolicy
    policy = SkipPolicy(window=4, margin=0.02, retry_after=3)
    assert not policy.skip(now=10.0, deadline=10.05, pending=0)  # no cost known yet: only a frame already due
    assert policy.skip(now=10.04, deadline=10.05, pending=0)     # inside the margin: too late whatever the cost
    policy = SkipPolicy(window=4, margin=0.02, retry_after=3)
    policy.record(seconds=1.0, frames=1)                         # the first call, cold: not counted
    assert not policy.skip(now=10.0, deadline=10.1, pending=1)
    policy.record(seconds=0.1, frames=2)                         # 50 ms a frame
    assert not policy.skip(now=10.0, deadline=10.1, pending=0)   # 50 ms fits in the 80 ms left
    assert policy.skip(now=10.0, deadline=10.1, pending=1)       # behind one pending frame it would not
    assert policy.skip(now=10.0, deadline=10.1, pending=1) and policy.skip(now=10.0, deadline=10.1, pending=1)
    assert not policy.skip(now=10.0, deadline=10.1, pending=1)   # 3 skips in a row: one is tried anyway
    assert policy.skip(now=10.0, deadline=10.1, pending=1)       # and the count starts again
    for _ in range(4):
        policy.record(seconds=0.01, frames=1)                    # the model got fast: old costs age out
    assert not policy.skip(now=10.0, deadline=10.1, pending=1)


def test_one_sample_chunks_queue_as_20_ms_entries():
    """A client sending one sample per message must not make the queue a list of single samples, which the clock
    would walk 640 at a time under the lock the server needs."""
    from engine.render.sources import AudioBuffer
    buffer = AudioBuffer()
    samples = np.arange(16000, dtype=np.float32) / 16000
    for value in samples:
        buffer.push(np.array([value], np.float32), "u")
    assert buffer.available == 16000 and len(buffer._chunks) <= 16000 // 320 + 1
    assert np.array_equal(buffer.take(16000), samples) and buffer.queued(["u"]) == 0
