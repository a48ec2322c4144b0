"""The live server and the command line, used as a hostile web page and a careless user would (issue 15).

python bench/hostile.py [--root CHECKOUT] [--data_dir CACHE] [--bomb_hours 10]
Starts `stream_out.py serve` from --root (default: this checkout; pass an older checkout to measure it the same
way) on a generated 540p presenter, sends every attack below one at a time, and prints for each what the server
answered, how long it took and how much the server's resident memory grew (now, and at its peak). Then it measures
the idle server's CPU share and runs the command-line mistakes, printing their exit code and stderr line count.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

import aiohttp  # noqa: E402

from core.net import free_port  # noqa: E402
from machine import header  # noqa: E402
from demo.presenter import FacePath, make_presenter_clip, speak  # noqa: E402
from preprocess.pipeline import PreprocessConfig, preprocess_video  # noqa: E402

EVIL = "http://evil.example"


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


class Served:
    """`stream_out.py serve` from a checkout, as a child process."""

    def __init__(self, root: Path, cache: Path, *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "stream_out.py", "serve", "--data_dir", str(cache), "--listen",
                                      f"127.0.0.1:{self.port}", *extra], cwd=root, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
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
        ]
        for name, work in attacks:
            rows.append(await attack(served, name, work))
    return rows


def cli_rows(root: Path, cache: Path, files: dict[str, Path], work: Path) -> list[tuple]:
    """Command-line mistakes: (what, exit code, whether a traceback was printed, the error line)."""
    def run(name: str, *args: str, env: dict | None = None) -> tuple:
        result = subprocess.run([sys.executable, "stream_out.py", *args], cwd=root, capture_output=True, text=True,
                                env=env)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        error = next((line for line in lines if line.startswith("error:")), lines[-1] if lines else "")
        return name, result.returncode, "Traceback" in result.stderr, error[:110]

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
            run("no ffmpeg on PATH", *common, env={**os.environ, "PATH": str(work / "empty")})]
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
    served = Served(args.root, cache)
    try:
        idle_before = cpu_seconds(served.proc.pid)
        time.sleep(args.idle_seconds)
        idle = 100 * (cpu_seconds(served.proc.pid) - idle_before) / args.idle_seconds
        rows = asyncio.run(server_attacks(served, files, args.bomb_hours))
    finally:
        served.close()
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
