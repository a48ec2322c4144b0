"""engine/serve/server.py: the network API against a live engine on a real cache, with espeak-ng speech and a real
WebSocket/HTTP client; the WebRTC page in Debian's headless Chromium."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import soundfile

from chromium import Chromium
from conftest import CollectSink, require
from wsclient import events_until, stream, url, wait_healthy
from demo.presenter import speak
from engine.render.blendshapes import BlendshapeMeter
from engine.render.composite import Compositor
from engine.render.loop import EngineConfig, LiveEngine
from engine.render.presenter import Presenter, ping_pong
from audio.decode import PcmStream
from core.net import free_port
from engine.serve.routes import Gate, ServerConfig, check_bind, is_loopback, parse_listen
from engine.outputs.sinks import to_int16
from engine.serve.protocol import ProtocolError, SpeechDesk
from engine.serve.server import Server
from models.mouthwarp import MouthAnimator

aiohttp = require("aiohttp")


def make_server(built, cfg: ServerConfig):
    presenter = Presenter(built["cache"] / "clip30")  # a face on every frame
    sink = CollectSink(live=True)
    animator = MouthAnimator(presenter.face_size)
    animator.warm_up()  # as the command line does (the first call imports scipy)
    engine = LiveEngine(presenter, animator, Compositor(presenter), [sink], EngineConfig(latency_ms=300),
                        BlendshapeMeter(presenter, animator))
    return Server(engine, cfg).start(), sink, presenter


@pytest.fixture(scope="module")
def served(built):
    server, sink, presenter = make_server(built, ServerConfig(port=0))
    yield server, sink, presenter
    server.stop()


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    """espeak-ng speech as the client has it: 22.05 kHz int16 (the server resamples)."""
    path = speak("Hello from the network. This sentence arrives in small pieces, twenty milliseconds at a time.",
                 tmp_path_factory.mktemp("voice") / "voice.wav")
    pcm, rate = soundfile.read(path, dtype="int16")
    return pcm, rate, path


def changed(sink: CollectSink, presenter: Presenter, frame_numbers) -> np.ndarray:
    """Per frame number: mean absolute difference from the untouched cached frame."""
    index = {n: i for i, n in enumerate(sink.numbers)}
    return np.array([np.abs(sink.frames[index[k]].astype(int)
                            - presenter.background(ping_pong(k, presenter.frames)).astype(int)).mean()
                     for k in frame_numbers if k in index])


@pytest.mark.slow
def test_streamed_speech_moves_the_mouth_and_events_come_in_order(served, voice):
    server, sink, presenter = served
    pcm, rate, _ = voice
    while len(sink.numbers) < 25:  # a second of untouched frames first, to compare against
        time.sleep(0.05)

    async def client():
        async with aiohttp.ClientSession() as session, session.ws_connect(url(server, "/ws", "ws")) as ws:
            await ws.send_json({"type": "start", "sample_rate": rate, "format": "int16", "channels": 1})
            await stream(ws, pcm, rate, realtime=True)
            await ws.send_json({"type": "end"})
            return await events_until(ws, "speech_ended")

    events = asyncio.run(client())
    kinds = [e["type"] for e in events]
    assert kinds[0] == "queued" and kinds.index("speech_started") < kinds.index("speech_ended")
    assert "blendshapes" not in kinds  # not asked for
    started, ended = events[kinds.index("speech_started")], events[kinds.index("speech_ended")]
    assert started["utterance"] == ended["utterance"] == events[0]["utterance"]
    assert abs((ended["frame"] - started["frame"]) - len(pcm) / rate * 25) <= 3
    assert ended["shown_at"] - started["shown_at"] == pytest.approx(len(pcm) / rate, abs=0.15)
    speech = changed(sink, presenter, range(started["frame"], ended["frame"] + 1))
    before = changed(sink, presenter, range(started["frame"] - 15, started["frame"] - 5))
    assert (speech > 0.05).mean() > 0.5  # the mouth moves while the speech is shown
    assert len(before) == 10 and np.all(before == 0)  # and the frames before it are the cached ones, untouched


@pytest.mark.slow
def test_a_client_that_asks_gets_the_weights_of_every_frame(served, voice):
    server, _, _ = served
    pcm, rate, _ = voice

    async def client():
        async with aiohttp.ClientSession() as session, session.ws_connect(url(server, "/ws", "ws")) as ws:
            await ws.send_json({"type": "blendshapes", "on": "yes"})
            refused = await ws.receive_json()
            await ws.send_json({"type": "blendshapes", "on": True})
            await ws.send_json({"type": "start", "sample_rate": rate, "format": "int16", "channels": 1})
            await stream(ws, pcm, rate, realtime=True)
            await ws.send_json({"type": "end"})
            return refused, await events_until(ws, "speech_ended")

    refused, events = asyncio.run(client())
    assert refused["type"] == "error" and "'on' must be true or false" in refused["message"]
    assert {"type": "subscription", "blendshapes": True} in events
    weights = [e for e in events if e["type"] == "blendshapes"]
    frames = [e["frame"] for e in weights]
    assert len(frames) > 100 and frames == list(range(frames[0], frames[0] + len(frames)))  # every frame, in order
    assert all(len(e["weights"]) == 52 and 0 <= min(e["weights"].values()) <= max(e["weights"].values()) <= 1
               for e in weights)
    assert max(e["weights"]["jawOpen"] for e in weights) > 0.2  # the speech opened the mouth


def test_utterances_queue_in_order(served, voice):
    server, _, _ = served
    pcm, rate, _ = voice

    async def client():
        async with aiohttp.ClientSession() as session, session.ws_connect(url(server, "/ws", "ws")) as ws:
            for part in (pcm[: rate], pcm[rate: 2 * rate]):  # two one-second utterances, sent at once
                await ws.send_json({"type": "start", "sample_rate": rate})
                await stream(ws, part, rate, realtime=False)
                await ws.send_json({"type": "end"})
            first = await events_until(ws, "speech_ended")
            return first + await events_until(ws, "speech_ended")

    events = [e for e in asyncio.run(client()) if e["type"] != "queued"]
    assert [e["type"] for e in events] == ["speech_started", "speech_ended"] * 2
    one, two = events[0]["utterance"], events[2]["utterance"]
    assert two == one + 1 and events[1]["utterance"] == one and events[3]["utterance"] == two
    assert events[0]["frame"] < events[1]["frame"] <= events[2]["frame"] < events[3]["frame"]
    assert events[2]["frame"] - events[1]["frame"] <= 1  # queued speech follows without a gap


def test_interrupt_closes_the_mouth_within_two_frames(served, voice):
    server, sink, presenter = served
    pcm, rate, _ = voice

    async def client():
        async with aiohttp.ClientSession() as session, session.ws_connect(url(server, "/ws", "ws")) as ws:
            await ws.send_json({"type": "start", "sample_rate": rate, "format": "int16"})
            await stream(ws, np.tile(pcm, 2), rate, realtime=False)  # ~10 s queued at once
            await ws.send_json({"type": "end"})
            await events_until(ws, "speech_started")
            await asyncio.sleep(1.0)
            await ws.send_json({"type": "interrupt"})
            events = await events_until(ws, "speech_interrupted")
            await asyncio.sleep(1.0)
            return events

    events = asyncio.run(client())
    cut = events[-1]["frame"]  # the first frame shown after the server took the interrupt
    assert events[-1]["queue_seconds"] == 0
    assert (changed(sink, presenter, range(cut - 10, cut)) > 0).mean() >= 0.7  # it was speaking until then
    after = [n for n in sink.numbers if n >= cut + 1]  # within 2 frames: from the second one on, closed
    assert len(after) >= 20 and np.all(changed(sink, presenter, after) == 0)
    index = {n: i for i, n in enumerate(sink.numbers)}
    assert all(not sink.audio[index[n]].any() for n in after)  # and the dropped speech is not heard


def test_bad_messages_get_errors_and_the_server_keeps_serving(served, voice):
    server, _, _ = served
    pcm, rate, _ = voice

    async def client():
        errors = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url(server, "/ws", "ws")) as ws:
                await ws.send_bytes(b"\x00\x01" * 160)                     # audio before start
                for text in ("not json", "[1, 2]", '{"type": 5}', '{"type": "dance"}', '{"type": "end"}',
                             '{"type": "start", "sample_rate": "fast"}', '{"type": "start", "format": "mp3"}',
                             '{"type": "start", "channels": 9}'):
                    await ws.send_str(text)
                await ws.send_json({"type": "start", "sample_rate": 16000, "format": "float32"})
                await ws.send_bytes(b"\x00" * 7)                          # not whole float32 samples
                await ws.send_bytes(np.full(160, np.nan, np.float32).tobytes())
                for _ in range(12):  # 11 errors and the 'queued' answer to the good start
                    message = json.loads((await ws.receive(timeout=5)).data)
                    if message["type"] == "error":
                        errors.append(message["message"])
            async with session.ws_connect(url(server, "/ws", "ws")) as ws:  # oversize: the socket is closed
                await ws.send_bytes(b"\x00" * (server.cfg.max_message_bytes + 2))
                closed = await ws.receive(timeout=5)
            async with session.ws_connect(url(server, "/ws", "ws")) as ws:  # gone mid-utterance
                await ws.send_json({"type": "start", "sample_rate": rate})
                await stream(ws, pcm[: rate // 2], rate, realtime=False)
            async with session.ws_connect(url(server, "/ws", "ws")) as ws:  # the next client is served as usual
                await ws.send_json({"type": "start", "sample_rate": rate})
                await stream(ws, pcm[: rate], rate, realtime=False)
                await ws.send_json({"type": "end"})
                events = await events_until(ws, "speech_ended")
            async with session.get(url(server, "/health")) as response:
                health = response.status, await response.json()
        return errors, closed, events, health

    errors, closed, events, health = asyncio.run(client())
    assert len(errors) == 11 and any("before 'start'" in e for e in errors) and any("NaN" in e for e in errors)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert [e["type"] for e in events][-1] == "speech_ended"
    assert health[0] == 200 and health[1]["ok"] is True and health[1]["sessions"] == 1


def test_http_speak_status_and_health(served, voice):
    server, _, _ = served

    async def client():
        async with aiohttp.ClientSession() as session:
            async with session.post(url(server, "/speak"), data=voice[2].read_bytes()) as response:
                spoken = response.status, await response.json()
            async with session.post(url(server, "/speak"), data=b"this is not audio at all") as response:
                garbage = response.status, await response.json()
            async with session.post(url(server, "/speak"), data=b"\x00" * (server.cfg.max_upload_bytes + 1)) as r:
                too_big = r.status
            async with session.get(url(server, "/status")) as response:
                status = await response.json()
        return spoken, garbage, too_big, status

    spoken, garbage, too_big, status = asyncio.run(client())
    assert spoken[0] == 200 and spoken[1]["seconds"] == pytest.approx(len(voice[0]) / voice[1], abs=0.05)
    assert garbage[0] == 400 and "error" in garbage[1]
    assert too_big == 413
    seconds = len(voice[0]) / voice[1]
    assert status["fps"] == pytest.approx(25, abs=1.5)
    assert status["queue"]["utterances"] == 1 and seconds - 1.0 < status["queue"]["seconds"] <= seconds
    assert status["latency_ms"]["target"] == 300 and status["sinks"] == ["CollectSink", "WebRtcSink", "MediaFeed"]


@pytest.mark.slow
def test_input_latency_counts_the_wait_behind_queued_speech(built, voice):
    """/status latency is measured from the input: arrival of the chunk that completed a frame's window to that
    frame on screen. Streamed in real time it is the target minus the 212.5 ms of mel lookahead the window needed
    (87.5 ms at 300, plus up to one 40 ms tick); queued behind speech it grows with the wait."""
    pcm, rate, _ = voice
    server, _, _ = make_server(built, ServerConfig(port=0))
    try:
        async def client():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url(server, "/ws", "ws")) as ws:
                    latencies = []
                    for realtime, part in ((True, pcm[: 2 * rate]), (False, pcm[: 4 * rate])):
                        await ws.send_json({"type": "start", "sample_rate": rate})
                        await stream(ws, part, rate, realtime=realtime, lead=0.0)
                        await ws.send_json({"type": "end"})
                        await events_until(ws, "speech_ended")
                        async with session.get(url(server, "/status")) as response:
                            latencies.append((await response.json())["latency_ms"])
                    return latencies
        in_time, queued = asyncio.run(client())
    finally:
        server.stop()
    assert in_time["input"]["frames"] > 25 and 80 < in_time["input"]["p50"] < 180 and in_time["input"]["p95"] < 300
    assert queued["input"]["p95"] > in_time["input"]["p95"] + 2000  # 4 s sent at once: the last frames waited ~4 s
    assert abs(queued["pacing_offset"]["p95"]) < 50  # the clock itself stayed on time throughout


def test_bind_rules_and_token(built, caplog):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError, match="token"):
        check_bind(ServerConfig(host="0.0.0.0"))
    server, _, _ = make_server(built, ServerConfig(host="0.0.0.0", port=0, token="s3cret"))
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    try:
        async def client():
            async with aiohttp.ClientSession() as session:
                codes = []
                for headers, query in (({}, ""), ({"Authorization": "Bearer wrong"}, ""),
                                       ({"Authorization": "Bearer s3cret"}, ""), ({}, "?token=s3cret")):
                    async with session.get(url(server, "/status" + query), headers=headers) as response:
                        codes.append(response.status)
                async with session.get(url(server, "/")) as response:  # the page holds no secret
                    page = response.status, await response.text()
                return codes, page
        codes, page = asyncio.run(client())
        assert codes == [401, 401, 200, 401]  # the header only: a token in a URL ends up in logs and history
        assert page[0] == 200 and "location.hash" in page[1] and "Authorization" in page[1]
        assert "/status" in caplog.text and "s3cret" not in caplog.text  # access lines carry no query string
    finally:
        server.stop()


def test_a_browser_socket_gives_the_token_in_its_first_message(built):
    server, _, _ = make_server(built, ServerConfig(host="0.0.0.0", port=0, token="s3cret"))
    try:
        async def client():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url(server, "/ws", "ws")) as ws:
                    await ws.send_json({"type": "auth", "token": "s3cret"})
                    authenticated = json.loads((await ws.receive(timeout=5)).data)
                    await ws.send_json({"type": "start", "sample_rate": 16000})
                    queued = json.loads((await ws.receive(timeout=5)).data)
                outcomes = []
                for first in ({"type": "auth", "token": "wrong"}, {"type": "start", "sample_rate": 16000}):
                    async with session.ws_connect(url(server, "/ws", "ws")) as ws:
                        await ws.send_json(first)
                        error = json.loads((await ws.receive(timeout=5)).data)
                        closing = await ws.receive(timeout=5)
                        outcomes.append((error["type"], closing.type, ws.close_code))
                async with session.ws_connect(url(server, "/ws", "ws")) as ws:  # audio before the token
                    await ws.send_bytes(b"\x00\x00" * 160)
                    await ws.receive(timeout=5)
                    await ws.receive(timeout=5)
                    outcomes.append(("audio", None, ws.close_code))
                return authenticated, queued, outcomes
        authenticated, queued, outcomes = asyncio.run(client())
        assert authenticated == {"type": "authenticated"} and queued["type"] == "queued"
        assert [o[0] for o in outcomes[:2]] == ["error", "error"]
        assert all(code == 4401 for _, _, code in outcomes)
    finally:
        server.stop()


def test_a_socket_that_does_not_authenticate_first_is_closed(built, caplog):
    server, _, _ = make_server(built, ServerConfig(host="0.0.0.0", port=0, token="s3cret", auth_seconds=0.5))
    try:
        async def client():
            codes = []
            async with aiohttp.ClientSession() as session:
                for first in ("x", '{"type": "auth", "token": "\\ud800"}', None):  # junk, a lone surrogate, silence
                    async with session.ws_connect(url(server, "/ws", "ws")) as ws:
                        if first is not None:
                            await ws.send_str(first)
                        while not ws.closed:
                            await ws.receive(timeout=5)
                        codes.append(ws.close_code)
            return codes
        with caplog.at_level(logging.ERROR):
            assert asyncio.run(client()) == [4401, 4401, 4401]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback in the log
    finally:
        server.stop()


def test_an_allowed_site_gets_cors_answers_and_others_none(built):
    server, _, _ = make_server(built, ServerConfig(port=0, token="t", allow_origins=("https://my.app",)))
    try:
        async def client():
            async with aiohttp.ClientSession() as session:
                preflight = {"Origin": "https://my.app", "Access-Control-Request-Method": "POST",
                             "Access-Control-Request-Headers": "authorization, content-type"}
                async with session.options(url(server, "/offer"), headers=preflight) as response:
                    allowed = response.status, dict(response.headers)
                async with session.get(url(server, "/status"), headers={"Origin": "https://my.app",
                                                                       "Authorization": "Bearer t"}) as response:
                    status = response.status, response.headers.get("Access-Control-Allow-Origin")
                async with session.options(url(server, "/offer"), headers={**preflight,
                                                                          "Origin": "https://other.app"}) as r:
                    other = r.status
            return allowed, status, other
        allowed, status, other = asyncio.run(client())
    finally:
        server.stop()
    assert allowed[0] == 204 and allowed[1]["Access-Control-Allow-Origin"] == "https://my.app"
    assert "Authorization" in allowed[1]["Access-Control-Allow-Headers"]
    assert status == (200, "https://my.app") and other == 403


def test_pages_on_other_sites_and_rebound_host_names_are_refused(served):
    server, _, _ = served
    own = f"http://127.0.0.1:{server.port}"

    async def client():
        async with aiohttp.ClientSession() as session:
            answers = {}
            for name, headers in (("evil origin", {"Origin": "http://evil.example"}),
                                  ("null origin", {"Origin": "null"}),
                                  ("rebound host", {"Host": f"evil.example:{server.port}"}),
                                  ("own page", {"Origin": own}), ("script", {})):
                async with session.get(url(server, "/status"), headers=headers) as response:
                    answers[name] = response.status
            async with session.post(url(server, "/speak"), data=b"RIFF", headers={"Origin": "http://evil.example"}) \
                    as response:
                answers["speak from evil"] = response.status
            try:
                async with session.ws_connect(url(server, "/ws", "ws"), origin="http://evil.example"):
                    answers["socket from evil"] = 101
            except aiohttp.WSServerHandshakeError as exc:
                answers["socket from evil"] = exc.status
            async with session.ws_connect(url(server, "/ws", "ws"), origin=own) as ws:
                await ws.send_json({"type": "end"})
                answers["socket from own page"] = json.loads((await ws.receive(timeout=5)).data)["type"]
            return answers

    answers = asyncio.run(client())
    assert answers == {"evil origin": 403, "null origin": 403, "rebound host": 403, "own page": 200, "script": 200,
                       "speak from evil": 403, "socket from evil": 403, "socket from own page": "error"}
    gate = Gate(ServerConfig(host="0.0.0.0", token="t", allow_hosts=("studio.lan",),
                             allow_origins=("https://my.app",)))
    assert gate.host_allowed("studio.lan:8765") and gate.host_allowed("192.168.1.20:8765")  # typed addresses
    assert not gate.host_allowed("evil.example:8765") and not gate.host_allowed(None)
    assert gate.origin_allowed("https://my.app", "studio.lan:8765")
    assert not gate.origin_allowed("https://my.app.evil.example", "studio.lan:8765")


def rss_growth_during(work) -> tuple[object, float]:
    """(work's result, the most this process's resident memory grew while it ran, in MB), sampled every 5 ms."""
    process = psutil.Process()
    start, peak, running = process.memory_info().rss, [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = work()
    finally:
        running[0] = False
        sampler.join()
    return result, (peak[0] - start) / 2 ** 20


def test_an_upload_that_decodes_to_hours_is_stopped_at_the_cap(served, tmp_path):
    server, _, _ = served
    bomb = tmp_path / "hour.flac"  # 1 h of silence in 2 MB; decoded whole it would be 230 MB of float32
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "3600",
                    "-c:a", "flac", "-compression_level", "0", str(bomb)], check=True)

    async def client():
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.post(url(server, "/speak"), data=bomb.read_bytes()) as response:
                return response.status, await response.json(), time.monotonic() - started

    (status, body, seconds), growth = rss_growth_during(lambda: asyncio.run(client()))
    assert status == 413 and "300 s" in body["error"]
    assert seconds < 2 and growth < 200, (seconds, growth)


def test_a_playlist_upload_is_refused_and_names_no_file(served, voice):
    server, _, _ = served
    secret = Path(tempfile.gettempdir()) / f"swl-secret-{os.getpid()}.wav"  # beside where uploads used to be put
    shutil.copy(voice[2], secret)
    try:
        async def client():
            answers = []
            async with aiohttp.ClientSession() as session:
                for upload in (f"ffconcat version 1.0\nfile {secret.name}\n".encode(),
                               f"#EXTM3U\n#EXTINF:1,\n{secret}\n".encode(),
                               cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()):
                    async with session.post(url(server, "/speak"), data=upload) as response:
                        answers.append((response.status, await response.json()))
            return answers
        answers = asyncio.run(client())
    finally:
        secret.unlink()
    assert [status for status, _ in answers] == [400, 400, 400]
    assert all("not an audio file in an accepted format" in body["error"] and "seconds" not in body
               for _, body in answers)


def test_odd_rates_are_refused_and_health_answers_within_100_ms(served):
    server, _, _ = served

    async def client():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url(server, "/ws", "ws")) as ws:
                await ws.send_json({"type": "start", "sample_rate": 47999})
                refused = json.loads((await ws.receive(timeout=5)).data)
                await ws.send_json({"type": "start", "sample_rate": 44100})
                await ws.receive(timeout=5)

                async def flood():
                    for _ in range(300):
                        await ws.send_bytes(b"\x01\x00")
                    await ws.send_json({"type": "end"})

                async def health():
                    waits = []
                    for _ in range(20):
                        started = time.monotonic()
                        async with session.get(url(server, "/health")) as response:
                            assert response.status == 200
                        waits.append(time.monotonic() - started)
                        await asyncio.sleep(0.01)
                    return waits

                _, waits = await asyncio.gather(flood(), health())
                return refused, waits

    refused, waits = asyncio.run(client())
    assert refused["type"] == "error" and "44100" in refused["message"]
    assert max(waits) < 0.1, waits


def test_chunked_audio_resamples_exactly_like_the_whole_signal(voice):
    import soxr
    pcm, rate, _ = voice
    assert rate == 22050
    stream = PcmStream("int16", 1, rate)
    step = rate // 100  # 10 ms chunks
    chunked = np.concatenate([stream.feed(pcm[i:i + step].tobytes()) for i in range(0, len(pcm), step)]
                             + [stream.flush()])
    whole = soxr.resample(pcm.astype(np.float32) / 32768, rate, 16000, quality="HQ")
    assert len(chunked) == len(whole) == round(len(pcm) * 16000 / rate)
    assert np.abs(chunked - whole).max() < 1e-6


def test_queued_speech_is_capped_per_client_across_starts_and_for_the_server(built, voice):
    pcm, rate, path = voice
    server, _, _ = make_server(built, ServerConfig(port=0, max_queue_seconds=5.0, max_client_queue_seconds=3.0))
    try:
        async def client():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url(server, "/ws", "ws")) as a, \
                        session.ws_connect(url(server, "/ws", "ws")) as b:
                    for _ in range(3):  # three 2 s utterances at once: a new start does not reset the allowance
                        await a.send_json({"type": "start", "sample_rate": rate})
                        await stream(a, pcm[: 2 * rate], rate, realtime=False)
                        await a.send_json({"type": "end"})
                    mine = server.engine.buffer.available / 16000
                    await b.send_json({"type": "start", "sample_rate": rate})  # another client still has room
                    await stream(b, pcm[: rate], rate, realtime=False)
                    await b.send_json({"type": "end"})
                    async with session.post(url(server, "/speak"), data=path.read_bytes()) as response:
                        speak = response.status, await response.json()
                    events = {"a": [], "b": []}
                    for name, ws in (("a", a), ("b", b)):
                        while sum(e["type"] == "speech_ended" for e in events[name]) < (3 if name == "a" else 1):
                            events[name].append(json.loads((await ws.receive(timeout=20)).data))
                    return mine, speak, events
        mine, speak, events = asyncio.run(client())
    finally:
        server.stop()
    errors = [e["message"] for e in events["a"] if e["type"] == "error"]
    assert mine <= 3.0 and errors and all("your queue is full" in e for e in errors)
    assert not [e for e in events["b"] if e["type"] == "error"]
    assert speak[0] == 429 and "server's queue is full" in speak[1]["error"]
    utterances = [e["utterance"] for e in events["a"] if e["type"] == "queued"]
    ended = [e["utterance"] for e in events["a"] if e["type"] == "speech_ended"]
    assert ended.index(utterances[0]) < ended.index(utterances[1])  # what was queued is spoken, in order
    assert set(ended) == set(utterances)  # the third, refused whole, still starts and ends (empty)


def test_an_interrupt_cuts_only_the_senders_speech_and_empty_utterances_end_at_once(served, voice):
    server, _, _ = served
    pcm, rate, _ = voice

    async def client():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url(server, "/ws", "ws")) as a, \
                    session.ws_connect(url(server, "/ws", "ws")) as b:
                await a.send_json({"type": "start", "sample_rate": rate})
                empty = await events_until(a, "queued")
                await a.send_json({"type": "end"})  # nothing was sent: it starts and ends at once
                a_empty = await events_until(a, "speech_ended")
                await b.send_json({"type": "start", "sample_rate": rate})
                await stream(b, pcm[: 2 * rate], rate, realtime=False)  # b speaks, its utterance open
                await events_until(b, "speech_started")
                await a.send_json({"type": "start", "sample_rate": rate})
                mine = (await events_until(a, "queued"))[-1]["utterance"]
                await stream(a, pcm[: rate], rate, realtime=False)  # a's speech waits behind b's
                await a.send_json({"type": "interrupt"})
                a_cut = await events_until(a, "speech_interrupted")
                await b.send_json({"type": "end"})
                b_events = await events_until(b, "speech_ended")  # b's speech went on to its end
                await b.send_json({"type": "start", "sample_rate": rate})
                await stream(b, pcm[: 2 * rate], rate, realtime=False)
                await events_until(b, "speech_started")
                await b.send_json({"type": "interrupt"})  # b cuts its own speech, while it plays
                b_cut = await events_until(b, "speech_interrupted")
                await b.send_bytes(pcm[2 * rate: 2 * rate + 320].tobytes())  # its utterance was ended for it
                b_cut += await events_until(b, "error")
                return empty[-1]["utterance"], a_empty, mine, a_cut, b_events, b_cut
    empty, a_empty, mine, a_cut, b_events, b_cut = asyncio.run(client())
    assert [e["type"] for e in a_empty] == ["speech_started", "speech_ended"]
    assert all(e["utterance"] == empty for e in a_empty)
    assert a_cut[-1]["utterance"] == mine and not any(e["type"] == "speech_started" for e in a_cut)
    assert "speech_interrupted" not in [e["type"] for e in b_events]
    assert "before 'start'" in b_cut[-1]["message"]


def test_wrongly_typed_fields_get_errors_and_the_socket_stays_open(served):
    server, _, _ = served

    async def client():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url(server, "/ws", "ws")) as ws:
                bad = ['{"type": "start", "channels": 1.0}', '{"type": "start", "channels": true}',
                       '{"type": "start", "format": []}', '{"type": "start", "sample_rate": true}',
                       '{"type": "start", "sample_rate": 16000.0}', '{"type": "start", "volume": 3}',
                       '{"type": {"nested": 1}}', "[" * 100_000 + "]" * 100_000,
                       '{"type": "start", "format": {"a": [' + "[" * 5000 + "]" * 5000 + "]}}"]
                for text in bad:
                    await ws.send_str(text)
                answers = [json.loads((await ws.receive(timeout=5)).data) for _ in bad]
                await ws.send_json({"type": "start", "sample_rate": 16000, "format": "int16", "channels": 2})
                answers.append(json.loads((await ws.receive(timeout=5)).data))
                return answers

    answers = asyncio.run(client())
    assert [a["type"] for a in answers] == ["error"] * 9 + ["queued"]
    assert "integer" in answers[0]["message"] and "bool" in answers[1]["message"]
    assert "volume" in answers[5]["message"]


def test_bad_offers_leave_no_peer_and_viewers_are_capped(built):
    from aiortc import RTCConfiguration, RTCPeerConnection
    server, _, _ = make_server(built, ServerConfig(port=0, max_peers=1, peer_connect_seconds=1.0))
    try:
        async def client():
            async with aiohttp.ClientSession() as session:
                bad = []
                for _ in range(20):
                    async with session.post(url(server, "/offer"), json={"sdp": "v=0 nonsense", "type": "offer"}) \
                            as response:
                        bad.append(response.status)
                peers_after_bad = len(server.webrtc.peers)
                good = []
                for wait in (0, 0, 1.5):  # the third comes after the first, never connected, gave its slot back
                    await asyncio.sleep(wait)
                    browser = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                    browser.addTransceiver("video", direction="recvonly")
                    browser.addTransceiver("audio", direction="recvonly")
                    await browser.setLocalDescription(await browser.createOffer())
                    async with session.post(url(server, "/offer"), json={"sdp": browser.localDescription.sdp,
                                                                         "type": "offer"}) as response:
                        good.append((response.status, await response.json()))
                    await browser.close()
                return bad, peers_after_bad, good
        bad, peers_after_bad, good = asyncio.run(client())
    finally:
        server.stop()
    assert set(bad) == {400} and peers_after_bad == 0
    assert [status for status, _ in good] == [200, 503, 200], good


@pytest.mark.slow
def test_browser_shows_the_presenter_over_webrtc(served, chromium):
    server, sink, presenter = served
    with Chromium(chromium, flags=(f"--window-size={presenter.width},{presenter.height}",)) as browser:
        browser.call("Emulation.setDeviceMetricsOverride", width=presenter.width, height=presenter.height,
                     deviceScaleFactor=1, mobile=False)
        browser.goto(url(server, "/"))
        browser.wait_for("(() => { const v = document.querySelector('video'); "
                         "return !!v && v.videoWidth > 0 && v.currentTime > 1.0; })()", timeout=30)
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        shot_at = time.monotonic()
    seen = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)[:presenter.height, :presenter.width]
    small = lambda image: cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (160, 90)).astype(float)
    a = small(seen)
    recent = [f for f, t in zip(sink.frames, sink.times) if shot_at - 2.0 <= t <= shot_at]  # the browser lags a bit
    score, b = max(((np.corrcoef(a.ravel(), small(f).ravel())[0, 1], small(f)) for f in recent), key=lambda x: x[0])
    assert seen.shape[:2] == (presenter.height, presenter.width)
    assert score > 0.8 and np.abs(a - b).mean() < 25


def test_serve_command_starts_answers_and_stops(built):
    import signal
    import sys
    from conftest import ROOT
    from stream_out import main as stream_out_main
    cache = str(built["cache"] / "clip30")
    assert stream_out_main(["serve", "--data_dir", cache, "--listen", "0.0.0.0:0"]) == 2  # refused before models load
    port = free_port()
    process = subprocess.Popen([sys.executable, "stream_out.py", "serve", "--data_dir", cache, "--listen",
                                f"127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", process, seconds=30)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 143, err[-2000:]
    assert err.splitlines()[-1].startswith("stopped: served ")


def read_media(data: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    """(header, int16 audio, RGB pixels or an empty array) of one binary media message, as documented in
    engine/serve/media.py."""
    (length,) = struct.unpack("<I", data[:4])
    header = json.loads(data[4:4 + length])
    audio_end = 4 + length + 2 * header["samples"]
    audio = np.frombuffer(data[4 + length:audio_end], "<i2")
    pixels = np.frombuffer(data[audio_end:], np.uint8).reshape(header["height"], header["width"], 3)
    return header, audio, pixels


@pytest.mark.slow
def test_a_client_that_asks_for_media_gets_every_frame_with_its_audio_and_the_interrupt_is_answered(served, voice):
    """{"type": "media"}: a binary message per presented frame, the same pixels (RGB) and audio the other outputs
    get, 25 a second; the speech comes back as sent, resampled; an interrupt is answered in order, and after the
    answer no frame carries speech."""
    server, sink, presenter = served
    pcm, rate, _ = voice
    pcm = pcm[:int(2.5 * rate)]  # enough speech to compare, and to be playing when interrupted
    expected = PcmStream("int16", 1, rate)
    expected = np.concatenate([expected.feed(pcm.tobytes()), expected.flush()])

    async def client():
        media, events = [], []
        async with aiohttp.ClientSession() as session, session.ws_connect(url(server, "/ws", "ws")) as ws:
            await ws.send_json({"type": "media", "on": True})
            async def until(condition, seconds: float):
                deadline = time.monotonic() + seconds
                while not condition() and time.monotonic() < deadline:
                    try:
                        message = await ws.receive(timeout=deadline - time.monotonic())
                    except asyncio.TimeoutError:
                        return
                    if message.type == aiohttp.WSMsgType.BINARY:
                        media.append(read_media(message.data) + (len(events),))
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        events.append(json.loads(message.data))
                    else:
                        raise AssertionError(f"socket closed: {message}")
            await until(lambda: len(media) >= 10, 10)
            await ws.send_json({"type": "start", "sample_rate": rate, "format": "int16"})
            await stream(ws, pcm, rate, realtime=False)
            await ws.send_json({"type": "end"})
            await until(lambda: any(e["type"] == "speech_ended" for e in events), 30)
            await until(lambda: False, 1.0)
            await ws.send_json({"type": "start", "sample_rate": rate, "format": "int16"})
            await stream(ws, pcm, rate, realtime=False)
            await until(lambda: any(e["type"] == "speech_started" for e in events[-3:]), 10)
            await until(lambda: False, 0.5)
            await ws.send_json({"type": "interrupt"})
            await until(lambda: any(e["type"] == "interrupted" for e in events), 10)
            await until(lambda: False, 1.0)
            return media, events

    media, events = asyncio.run(client())
    kinds = [e["type"] for e in events]
    assert events[0] == {"type": "subscription", "media": True, "fps": 25, "sample_rate": 16000,
                         "width": presenter.width, "height": presenter.height}
    numbers = [h["frame"] for h, *_ in media]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # every frame, in order
    assert all(h["pts"] == pytest.approx(h["frame"] / 25) and h["samples"] == 640 for h, *_ in media)
    index = {n: i for i, n in enumerate(sink.numbers)}
    for header, _, pixels, _ in media[::25]:  # the pixels the other outputs got
        assert np.array_equal(pixels, sink.frames[index[header["frame"]]][..., ::-1])
    first = kinds.index("speech_ended")
    audio = np.concatenate([a for h, a, _, seen in media if seen <= first]).astype(np.int32)
    want = np.frombuffer(to_int16(expected), np.int16).astype(np.int32)
    start = np.flatnonzero(audio)[0] - np.flatnonzero(want)[0]
    assert np.array_equal(audio[start:start + len(want)], want)  # the speech as sent, resampled, once
    assert not audio[start + len(want):].any() and not audio[:start].any()  # and nothing else
    answered = kinds.index("interrupted")
    assert kinds.index("speech_started", first) < answered
    speaking_before = [a.any() for h, a, _, seen in media if seen <= answered][-10:]
    after = [a.any() for h, a, _, seen in media if seen > answered]
    assert sum(speaking_before) >= 5 and len(after) >= 20 and not any(after)  # from the answer on: silent


def test_a_connection_that_carries_no_media_says_so():
    """The Ray Serve router's sockets connect to a session's desk without a way to send media, and a desk may have
    no feed (a session with no server loop): asking for media is then an error event, not a silent nothing."""
    desk = SpeechDesk(None)
    for client in (desk.connect(lambda event: None), desk.connect(lambda event: None, lambda data, backlog: True)):
        with pytest.raises(ProtocolError, match="carries no media"):
            desk.on_text(client, '{"type": "media", "on": true}')
