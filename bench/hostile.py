"""The live server and the command line, used as a hostile web page and a careless user would (issue 15).

python bench/hostile.py [--root CHECKOUT] [--data_dir CACHE] [--bomb_hours 10]
Starts `stream_out.py serve` from --root (default: this checkout; pass an older checkout to measure it the same
way) on a generated 540p presenter, sends every attack below one at a time, and prints for each what the server
answered, how long it took and how much the server's resident memory grew (now, and at its peak). Then it measures
the idle server's CPU share and runs the command-line mistakes, printing their exit code and stderr line count.
The session attacks POST bodies to /sessions on a --session_root set up with a linked, a forged and a broken cache.
The last attack has a server of its own, limited to 256 open files, and 300 slowloris connections.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

import aiohttp  # noqa: E402

from core.net import free_port  # noqa: E402
from core.processes import cpu_seconds, descendants  # noqa: E402
from machine import header  # noqa: E402
from demo.presenter import FacePath, make_presenter_clip, speak  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402

EVIL = "http://evil.example"


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class Served:
    """`stream_out.py serve` from a checkout, as a child process."""

    def __init__(self, root: Path, cache: Path, *extra: str, open_files: int = 0):
        """open_files: the server's open-file limit (0: this process's)."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))) if open_files else None
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "stream_out.py", "serve", "--data_dir", str(cache), "--listen",
                                      f"127.0.0.1:{self.port}", *extra], cwd=root, stdout=subprocess.DEVNULL,
                                     stderr=self.log, preexec_fn=limit)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        time.sleep(1.0)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def tracebacks(self) -> int:
        self.log.seek(0)
        return self.log.read().count("Traceback")


async def exhaustion(served: Served, connections: int = 300, seconds: float = 15.0) -> str:
    """Issue 36 row 6, scaled down to a server with 256 open files: `connections` from 127.0.0.2-5 that send a
    request head's first line and then one header every 4 s (slowloris); meanwhile /health from 127.0.0.1 every
    0.5 s. How many the server refused at once, how many it held and cut later, and what /health answered."""
    async def closed(reader) -> bool:
        """Closed by the server (read() ends only there)."""
        try:
            await asyncio.wait_for(reader.read(), 0.01)
            return True
        except asyncio.TimeoutError:
            return False
        except OSError:
            return True

    held = []
    for i in range(connections):
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", served.port, local_addr=(f"127.0.0.{2 + i % 4}", 0)), 2)
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append((reader, writer))
        except (OSError, asyncio.TimeoutError):
            pass
    await asyncio.sleep(1.0)
    refused = sum([await closed(reader) for reader, _ in held])
    waits, failed = [], 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
        for tick in range(int(seconds / 0.5)):
            if tick % 8 == 0:
                for _, writer in held:
                    if not writer.is_closing():
                        writer.write(b"X-Slow: 1\r\n")
            started = time.monotonic()
            try:
                async with http.get(served.base + "/health") as response:
                    await response.read()
                    failed += response.status != 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                failed += 1
            waits.append(time.monotonic() - started)
            await asyncio.sleep(0.5)
    cut = sum([await closed(reader) for reader, _ in held]) - refused
    for _, writer in held:
        writer.close()
    return (f"{refused} of {connections} closed at once, {len(held) - refused} held, of which {cut} cut within "
            f"{seconds + 1:.0f} s; /health {len(waits) - failed} of {len(waits)} ok, worst {1000 * max(waits):.0f} ms; "
            f"{served.tracebacks()} tracebacks in the server's log")


async def attack(served: Served, name: str, work) -> tuple:
    if served.proc.poll() is not None:
        return name, "server is gone", 0.0, 0.0, 0.0
    before, hwm_before = memory_mb(served.proc.pid)
    started = time.monotonic()
    try:
        answer = await asyncio.wait_for(work(), timeout=120)
    except Exception as exc:  # noqa: BLE001 - the answer is whatever happened
        answer = f"{type(exc).__name__}: {str(exc)[:80]}"
    seconds = time.monotonic() - started
    if served.proc.poll() is not None:
        return name, f"{answer}; server died", seconds, 0.0, 0.0
    after, hwm_after = memory_mb(served.proc.pid)
    return name, answer, seconds, after - before, hwm_after - hwm_before


async def server_attacks(served: Served, files: dict[str, Path], bomb_hours: float) -> list[tuple]:
    rows = []
    async with aiohttp.ClientSession() as http:
        async def cross_origin_socket():
            try:
                async with http.ws_connect(served.base + "/ws", origin=EVIL) as ws:
                    await ws.send_json({"type": "start", "sample_rate": 16000})
                    return f"accepted: {json.loads((await ws.receive(timeout=5)).data)['type']}"
            except aiohttp.WSServerHandshakeError as exc:
                return f"{exc.status}"

        async def post(path: str, data: bytes, **headers):
            async with http.post(served.base + path, data=data, headers=headers) as response:
                return f"{response.status} {(await response.text())[:70]}"

        async def get(path: str, **headers):
            async with http.get(served.base + path, headers=headers) as response:
                return f"{response.status}"

        async def odd_rate():
            async with http.ws_connect(served.base + "/ws") as ws:
                await ws.send_json({"type": "start", "sample_rate": 47999})
                first = json.loads((await ws.receive(timeout=30)).data)["type"]
                waits = []

                async def flood():
                    for _ in range(300):
                        await ws.send_bytes(b"\x01\x00")
                    await ws.send_json({"type": "end"})

                async def health():
                    for _ in range(20):
                        t = time.monotonic()
                        async with http.get(served.base + "/health") as response:
                            await response.read()
                        waits.append(time.monotonic() - t)

                await asyncio.gather(flood(), health())
                return f"{first}; /health worst {1000 * max(waits):.0f} ms"

        async def queue_flood():
            pcm = np.zeros(300 * 16000, np.int16).tobytes()
            async with http.ws_connect(served.base + "/ws", max_msg_size=0) as ws:
                for _ in range(4):
                    await ws.send_json({"type": "start", "sample_rate": 16000})
                    for i in range(0, len(pcm), 1 << 19):
                        await ws.send_bytes(pcm[i:i + (1 << 19)])
                    await ws.send_json({"type": "end"})
                await asyncio.sleep(1.0)
                async with http.get(served.base + "/status") as response:
                    queue = (await response.json())["queue"]["seconds"]
                await ws.send_json({"type": "interrupt"})
                return f"{queue:.0f} s queued"

        async def bad_fields():
            answers = []
            async with http.ws_connect(served.base + "/ws") as ws:
                for text in ('{"type": "start", "channels": 1.0}', '{"type": "start", "channels": true}',
                             '{"type": "start", "format": []}', "[" * 100_000 + "]" * 100_000):
                    await ws.send_str(text)
                    message = await ws.receive(timeout=5)
                    answers.append(json.loads(message.data)["type"] if message.type == aiohttp.WSMsgType.TEXT
                                   else message.type.name)
            return ", ".join(answers)

        async def bad_offers():
            for _ in range(321):
                async with http.post(served.base + "/offer", json={"sdp": "v=0 nonsense", "type": "offer"}) as r:
                    await r.read()
            async with http.get(served.base + "/status") as response:
                return f"{(await response.json())['webrtc_peers']} peers left"

        async def talk_offer(origin: str | None = None) -> str:
            """A page's offer that sends its microphone (an aiortc peer, closed once answered)."""
            from aiortc import RTCPeerConnection
            peer = RTCPeerConnection()
            try:
                peer.addTransceiver("audio", direction="sendrecv")
                peer.addTransceiver("video", direction="recvonly")
                await peer.setLocalDescription(await peer.createOffer())
                headers = {"Origin": origin} if origin else {}
                async with http.post(served.base + "/offer", json={"sdp": peer.localDescription.sdp, "type": "offer"},
                                     headers=headers) as response:
                    return f"{response.status}"
            finally:
                await peer.close()

        async def bad_talk_offers():
            talks = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n"  # sends audio, but is no offer
            for _ in range(321):
                async with http.post(served.base + "/offer", json={"sdp": talks, "type": "offer"}) as r:
                    await r.read()
            async with http.get(served.base + "/status") as response:
                peers = (await response.json())["webrtc_peers"]
            return f"{peers} peers left; then a real talker {await talk_offer()}, a second one {await talk_offer()}"

        async def media_never_read():
            """Media asked for on five sockets that then read nothing for 10 s: the server may hold at most 2 s of
            frames for each of the four a session allows, then stops their media and says so."""
            sockets = [await http.ws_connect(served.base + "/ws", max_msg_size=0) for _ in range(5)]

            async def told(ws) -> str:
                while (message := await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.BINARY,
                                                                         aiohttp.WSMsgType.TEXT):
                    event = json.loads(message.data) if message.type == aiohttp.WSMsgType.TEXT else {}
                    if "error" in event or event.get("type") == "error":
                        return (event.get("error") or event["message"]).split(":")[0]
                return message.type.name
            try:
                for ws in sockets:
                    await ws.send_json({"type": "media", "on": True})
                await asyncio.sleep(10.0)
                answers = [await told(ws) for ws in sockets]
                return "; ".join(f"{answers.count(a)} x {a[:40]}" for a in sorted(set(answers)))
            finally:
                for ws in sockets:
                    await ws.close()

        async def health_waits(seconds: float) -> list[float]:
            waits = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.monotonic()
                async with http.get(served.base + "/health") as response:
                    await response.read()
                waits.append(time.monotonic() - started)
                await asyncio.sleep(0.1)
            return waits

        async def huge_json():
            """Row 7: a 57 MB JSON body, and /health meanwhile."""
            body = b"[" + b"[]," * 19_000_000 + b"[]]"
            answer, waits = await asyncio.gather(post("/sessions", body, **{"Content-Type": "application/json"}),
                                                 health_waits(3.0))
            return f"{answer[:60]}; /health worst {1000 * max(waits):.0f} ms"

        async def start_flood():
            """Row 8: 10,000 start messages a second from one socket for up to 2 s, and /health meanwhile."""
            sent = 0
            async with http.ws_connect(served.base + "/ws") as ws:
                async def flood():
                    nonlocal sent
                    for _ in range(20):
                        for _ in range(1000):
                            if ws.closed:
                                return
                            await ws.send_str('{"type": "start", "sample_rate": 16000}')
                            sent += 1
                        await asyncio.sleep(0.1)
                _, waits = await asyncio.gather(flood(), health_waits(2.5))
                while not ws.closed and (await ws.receive(timeout=5)).type not in (
                        aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    pass
                return f"closed with {ws.close_code} after {sent} sent; /health worst {1000 * max(waits):.0f} ms"

        async def extreme_floats():
            """Row 12: float32 stereo at +-3.4e38 (48 kHz, 1 s); the default session's state 2 s later."""
            async with http.get(served.base + "/status") as response:
                before = (await response.json())["frames"]
            async with http.ws_connect(served.base + "/ws") as ws:
                await ws.send_json({"type": "start", "sample_rate": 48000, "format": "float32", "channels": 2})
                await ws.send_bytes(np.tile(np.array([3.4e38, -3.4e38], np.float32), 48000).tobytes())
                await ws.send_json({"type": "end"})
                await asyncio.sleep(2.0)
            async with http.get(served.base + "/status") as response:
                status = await response.json()
            return (f"state {status.get('state', '?')}, {status['frames'] - before} frames in 2 s, "
                    f"error {status.get('error')}")

        speech = files["speech"].read_bytes()
        attacks = [
            ("WebSocket from another origin", cross_origin_socket),
            ("POST /speak from another origin", lambda: post("/speak", speech, Origin=EVIL)),
            ("rebound DNS name (Host: evil.example)", lambda: get("/status", Host="evil.example")),
            (f"POST /speak: {files['bomb'].stat().st_size / 2**20:.1f} MB FLAC of {bomb_hours:g} h silence",
             lambda: post("/speak", files["bomb"].read_bytes())),
            ("POST /speak: ffconcat list naming a temp file", lambda: post("/speak", files["playlist"].read_bytes())),
            ("start at 47999 Hz + 300 two-byte chunks", odd_rate),
            ("start + 300 s, four times over", queue_flood),
            ("channels 1.0 / true, format [], deep JSON", bad_fields),
            ("321 POST /offer with a bad SDP", bad_offers),
            ("321 more (the first round loads aiortc)", bad_offers),
            ("talk offer (microphone) from another origin", lambda: talk_offer(EVIL)),
            ("321 POST /offer that talk, with a bad SDP", bad_talk_offers),
            ("media on 5 sockets that never read, 10 s", media_never_read),
            ("POST /sessions: a 57 MB JSON body", huge_json),
            ("10,000 start messages a second on one socket", start_flood),
            ("float32 stereo at +-3.4e38", extreme_floats),
        ]
        for name, work in attacks:
            rows.append(await attack(served, name, work))
    return rows


def session_root(work: Path, cache: Path) -> Path:
    """The served --session_root: a copy of the presenter, a folder whose one child links to it from outside, a copy
    with one frame's header forged to 50000 x 50000, one with a frame that is a real 20000 x 20000 PNG, a copy whose
    manifest lacks its width, and a plain file."""
    root = work / "root"
    shutil.copytree(cache, root / "own" / "presenter")
    (root / "linked").mkdir()
    (root / "linked" / "presenter").symlink_to(cache)
    shutil.copytree(cache, root / "forged" / "presenter")
    ihdr = (50000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    frame = sorted((root / "forged" / "presenter" / "bg").iterdir())[0]
    frame.write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + ihdr + bytes(4))
    shutil.copytree(cache, root / "huge" / "presenter")
    frame = sorted((root / "huge" / "presenter" / "bg").iterdir())[0]
    frame.write_bytes(cv2.imencode(".png", np.zeros((20000, 20000), np.uint8))[1].tobytes())
    shutil.copytree(cache, root / "nowidth" / "presenter")
    manifest = root / "nowidth" / "presenter" / "manifest.json"
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "width"}))
    (root / "a_file").write_text("x")
    return root


async def session_attacks(served: Served, root: Path) -> list[tuple]:
    """Session bodies a client with the token could send (issue 36, rows 1-4, 9-11): what POST /sessions answers,
    and for a session that was created, what became of it and of /health."""
    async with aiohttp.ClientSession() as http:
        async def room(seconds: float = 20.0) -> None:
            """Until the measured admission has room again (the sessions of the attacks before were ended)."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                async with http.get(served.base + "/status") as response:
                    if (await response.json())["capacity"]["sessions_left"] > 0:
                        return
                await asyncio.sleep(0.5)

        async def create(body: dict, watch: float = 0.0) -> str:
            await room()
            async with http.post(served.base + "/sessions", json=body) as response:
                status, text = response.status, await response.text()
            try:
                answer = json.loads(text)
            except ValueError:  # an unhandled error's plain-text page
                answer = {"error": " ".join(text.split())}
            said = f"{status} {(answer.get('error') or '')[:90]}".strip()
            if status != 201:
                return said
            await asyncio.sleep(watch)
            async with http.get(served.base + f"/sessions/{answer['id']}/status") as response:
                state = (await response.json()).get("error") or "running"
            async with http.get(served.base + "/health") as response:
                health = response.status
            async with http.delete(served.base + f"/sessions/{answer['id']}") as response:
                await response.read()
            return f"{said}; after {watch:g} s: {state[:40]}, /health {health}"

        async def behind() -> int:
            async with http.get(served.base + "/status") as response:
                statuses = (await response.json())["sessions"].values()
            return sum(status["late"] + status["skipped"] for status in statuses)

        async def burst() -> str:
            """50 POST /sessions at once: how many are admitted, and the running sessions' late or skipped frames
            over the next 5 s."""
            await room()
            before = await behind()

            async def post():
                async with http.post(served.base + "/sessions", json={"data_dir": "own"}) as response:
                    return response.status, await response.json()
            answers = await asyncio.gather(*(post() for _ in range(50)))
            await asyncio.sleep(5.0)
            late = await behind() - before
            for status, answer in answers:
                if status == 201:
                    async with http.delete(served.base + f"/sessions/{answer['id']}") as response:
                        await response.read()
            admitted = sum(status == 201 for status, _ in answers)
            return f"{admitted} admitted, {50 - admitted} refused; late or skipped frames in the next 5 s: {late}"

        async def deleted() -> str:
            """A session with a stream and a recording: how long DELETE takes, and its encoders left after."""
            await room()
            encoders = set(descendants(served.proc.pid))
            async with http.post(served.base + "/sessions", json={"data_dir": "own", "outfile": [
                    f"udp://127.0.0.1:{free_port()}", "deleted.ts"]}) as response:
                sid = (await response.json())["id"]
            await asyncio.sleep(2.0)
            encoders = set(descendants(served.proc.pid)) - encoders
            started = time.monotonic()
            async with http.delete(served.base + f"/sessions/{sid}") as response:
                await response.read()
            took = time.monotonic() - started
            return (f"DELETE answered in {took:.2f} s; {len(encoders)} encoders before, "
                    f"{len(encoders & set(descendants(served.proc.pid)))} left after")

        async def capped_recording() -> str:
            """A recording asking for a 3 s cap: its size 4 s and 8 s in."""
            await room()
            async with http.post(served.base + "/sessions", json={"data_dir": "own", "outfile": ["capped.ts"],
                                                                   "record_minutes": 0.05}) as response:
                status, answer = response.status, await response.json()
            if status != 201:
                return f"{status} {answer.get('error', '')[:90]}"
            sizes = []
            for _ in range(2):
                await asyncio.sleep(4.0)
                sizes.append((root / "capped.ts").stat().st_size / 1e6)
            async with http.delete(served.base + f"/sessions/{answer['id']}") as response:
                await response.read()
            return f"201; the recording 4 s in: {sizes[0]:.2f} MB, 8 s in: {sizes[1]:.2f} MB"

        async def leaves_no_folder() -> str:
            said = await create({"data_dir": "own", "outfile": ["recordings/x.mp4"], "silence_db": 7000.0})
            return f"{said}; folder left: {'yes' if (root / 'recordings').exists() else 'no'}"

        attacks = [
            ("data_dir: a folder whose one child links outside the root", lambda: create({"data_dir": "linked"}, 1)),
            ("outfile tcp://127.0.0.1:P?listen=1", lambda: create({"data_dir": "own", "outfile": [
                f"tcp://127.0.0.1:{free_port()}?listen=1"]}, 1)),
            ("outfile srt://127.0.0.1:P?mode=listener", lambda: create({"data_dir": "own", "outfile": [
                f"srt://127.0.0.1:{free_port()}?mode=listener"]}, 1)),
            ("outfile udp://169.254.169.254:80", lambda: create({"data_dir": "own", "outfile": [
                "udp://169.254.169.254:80"]}, 1)),
            ("outfile udp://255.255.255.255:9000", lambda: create({"data_dir": "own", "outfile": [
                "udp://255.255.255.255:9000"]}, 1)),
            ("twelve udp:// outputs", lambda: create({"data_dir": "own", "outfile": [
                f"udp://127.0.0.1:{40000 + i}" for i in range(12)]}, 1)),
            ("silence_db 7000", lambda: create({"data_dir": "own", "silence_db": 7000.0}, 1)),
            ("outfile tcp://127.0.0.1:1 (nothing listens)", lambda: create({"data_dir": "own", "outfile": [
                "tcp://127.0.0.1:1"]}, 2)),
            ("a cache frame's header forged to 50000x50000", lambda: create({"data_dir": "forged"}, 1)),
            ("a cache frame that is a real 20000x20000 PNG", lambda: create({"data_dir": "huge"}, 3)),
            ("a 300-character data_dir", lambda: create({"data_dir": "a" * 300})),
            ("outfile under an existing file", lambda: create({"data_dir": "own", "outfile": ["a_file/x.mp4"]})),
            ("checkpoint_path naming a folder", lambda: create({"data_dir": "own", "checkpoint_path": "own"})),
            ("a cache whose manifest lacks its width", lambda: create({"data_dir": "nowidth"}, 1)),
            ("a refused body naming recordings/x.mp4", leaves_no_folder),
            ("50 POST /sessions at once", burst),
            ("DELETE a session with a udp:// stream and a recording", deleted),
            ("a recording with record_minutes 0.05 (3 s)", capped_recording),
        ]
        return [await attack(served, name, work) for name, work in attacks]


def cli_rows(root: Path, cache: Path, files: dict[str, Path], work: Path) -> list[tuple]:
    """Command-line mistakes: (what, exit code, whether a traceback was printed, the error line)."""
    def run(name: str, *args: str, env: dict | None = None) -> tuple:
        try:
            result = subprocess.run([sys.executable, "stream_out.py", *args], cwd=root, capture_output=True,
                                    text=True, env=env, timeout=60)
        except subprocess.TimeoutExpired:  # a server that accepted its flags
            return name, "-", False, "still running after 60 s: the flags were accepted"
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        error = next((line for line in lines if line.startswith("error:")), lines[-1] if lines else "")
        return name, result.returncode, "Traceback" in result.stderr, error[:110]

    def stopped(name: str, ready, *args: str) -> tuple:
        """Row 14: SIGTERM once ready() says so."""
        proc = subprocess.Popen([sys.executable, "stream_out.py", *args], cwd=root, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        lines = [line for line in err.splitlines() if line.strip()]
        return name, proc.returncode, "Traceback" in err, (lines[-1] if lines else "")[:110]

    common = ["--data_dir", str(cache), "--audio_files", str(files["speech"]), "--outfile", str(work / "x.mp4")]
    (work / "noise.pth").write_bytes(np.random.default_rng(0).integers(0, 256, 1 << 20, np.uint8).tobytes())
    (work / "a_file").write_text("x")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    rows = [run("random 1 MB file as --checkpoint_path", "--checkpoint_path", str(work / "noise.pth"), *common),
            run("--device cuda without a GPU", "--device", "cuda", *common),
            run("--outfile under a file", *common[:-1], str(work / "a_file" / "x.mp4")),
            run("port in use", "serve", "--data_dir", str(cache), "--listen", f"127.0.0.1:{busy.getsockname()[1]}"),
            run("checkpoint whose pickle runs code", "--checkpoint_path", str(files["evil"]), *common),
            run("truncated wav", *common[:3], str(files["truncated"]), *common[4:]),
            run("no ffmpeg on PATH", *common, env={**os.environ, "PATH": str(work / "empty")}),
            run("serve --max_peers -1", "serve", "--data_dir", str(cache), "--max_peers", "-1", "--listen",
                f"127.0.0.1:{free_port()}"),
            run("serve --max_queue_seconds 0", "serve", "--data_dir", str(cache), "--max_queue_seconds", "0",
                "--listen", f"127.0.0.1:{free_port()}"),
            stopped("SIGTERM to a render before its first frame", lambda: any(work.glob(".render-x.mp4*")), *common)]
    started = time.monotonic()
    rows.append(stopped("SIGTERM to a live run 3 s in", lambda: time.monotonic() - started > 3, *common[:4],
                        str(files["speech"]), str(files["speech"]), "--outfile", f"udp://127.0.0.1:{free_port()}"))
    busy.close()
    return rows


def make_files(work: Path, hours: float) -> dict[str, Path]:
    files = {"speech": speak("A short sentence for the server.", work / "speech.wav")}
    files["bomb"] = work / "bomb.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t",
                    str(int(hours * 3600)), "-c:a", "flac", "-compression_level", "0", str(files["bomb"])], check=True)
    secret = Path(tempfile.gettempdir()) / "hostile-secret.wav"
    shutil.copy(files["speech"], secret)
    files["playlist"] = work / "list.txt"
    files["playlist"].write_text(f"ffconcat version 1.0\nfile {secret.name}\n")
    files["truncated"] = work / "truncated.wav"
    files["truncated"].write_bytes(files["speech"].read_bytes()[: files["speech"].stat().st_size // 2])
    files["evil"] = work / "evil.pth"
    payload = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."  # os.system("true")
    files["evil"].write_bytes(payload)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout whose stream_out.py is attacked")
    parser.add_argument("--data_dir", type=Path, help="a presenter cache (default: a generated 540p one)")
    parser.add_argument("--bomb_hours", type=float, default=10.0)
    parser.add_argument("--idle_seconds", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    cache = args.data_dir
    if cache is None:
        clip = make_presenter_clip(work / "presenter.mp4", 4.0, 25, FacePath(width=960, height=540, scale=1.2))
        cache = work / "cache" / preprocess_video(clip, work / "cache", PreprocessConfig(), progress=False).name
    files = make_files(work, args.bomb_hours)
    root = session_root(work, cache)
    served = Served(args.root, cache, "--session_root", str(root))
    try:
        idle_before = cpu_seconds(served.proc.pid)
        time.sleep(args.idle_seconds)
        idle = 100 * (cpu_seconds(served.proc.pid) - idle_before) / args.idle_seconds
        rows = asyncio.run(server_attacks(served, files, args.bomb_hours))
        rows += asyncio.run(session_attacks(served, root))
    finally:
        served.close()
    small = Served(args.root, cache, open_files=256)
    try:
        rows.append(asyncio.run(attack(small, "300 slowloris connections to a server with 256 open files",
                                       lambda: exhaustion(small))))
    finally:
        small.close()
    print(header())
    print(f"server: {args.root} (`stream_out.py serve`, 540p presenter, mouth animator)")
    print(f"idle server, nobody talking, {args.idle_seconds:.0f} s: {idle:.1f}% of one core")
    print("| attack | answer | time | RSS growth kept / at peak |")
    print("|---|---|---|---|")
    for name, answer, seconds, kept, peak in rows:
        print(f"| {name} | {answer} | {seconds:.2f} s | {kept:+.0f} / {peak:+.0f} MB |")
    print("\n| command-line mistake | exit code | traceback | last line |")
    print("|---|---|---|---|")
    for name, code, traceback, message in cli_rows(args.root, cache, files, work):
        print(f"| {name} | {code} | {'yes' if traceback else 'no'} | {message} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
