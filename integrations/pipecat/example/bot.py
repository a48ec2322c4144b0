"""An offline voice bot with a lip-synced face: type a line on the page, espeak-ng says it, and the presenter on a
local stream-wav2lip server speaks it back over Pipecat's SmallWebRTC transport. A new line interrupts the one
being said. Nothing leaves this machine.

    bash integrations/pipecat/example/run.sh       # the server, this bot; then open http://127.0.0.1:7860/
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import sys
import wave
from pathlib import Path
from typing import AsyncGenerator

from aiohttp import web
from loguru import logger
from pipecat.frames.frames import Frame, InterruptionFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from stream_wav2lip_pipecat import AvatarError, StreamWav2LipVideoService

PAGE = Path(__file__).with_name("index.html")


class EspeakTTSService(TTSService):
    """Text to speech with Debian's espeak-ng: a local TTS, so the example runs offline."""

    def __init__(self, voice: str = "en-us", **kwargs):
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         settings=TTSSettings(model=None, voice=voice, language=None), **kwargs)
        self.voice = voice

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        espeak = await asyncio.create_subprocess_exec("espeak-ng", "-v", self.voice, "--stdout", text,
                                                      stdout=asyncio.subprocess.PIPE,
                                                      stderr=asyncio.subprocess.DEVNULL)
        data, _ = await espeak.communicate()
        with wave.open(io.BytesIO(data)) as speech:
            rate, pcm = speech.getframerate(), speech.readframes(speech.getnframes())

        async def chunks():
            for i in range(0, len(pcm), rate // 10 * 2):  # 100 ms at a time, as a streaming TTS gives it
                yield pcm[i:i + rate // 10 * 2]
        async for frame in self._stream_audio_frames_from_iterator(chunks(), in_sample_rate=rate,
                                                                   context_id=context_id):
            yield frame


async def start_bot(connection: SmallWebRTCConnection, args: argparse.Namespace, runner: WorkerRunner) -> None:
    """One page: its own avatar session, a pipeline [page in, TTS, avatar, page out], typed lines as speech."""
    avatar = StreamWav2LipVideoService(url=args.server, token=os.environ.get("STREAM_WAV2LIP_TOKEN"),
                                       presenter=args.presenter, checkpoint=args.checkpoint)
    await avatar.avatar.open()  # first: the transport's video takes the presenter's size
    transport = SmallWebRTCTransport(connection, TransportParams(
        audio_out_enabled=True, video_out_enabled=True,  # each image is shown once the audio before it is sent
        video_out_width=avatar.avatar.width, video_out_height=avatar.avatar.height,
        video_out_framerate=avatar.avatar.fps))
    worker = PipelineWorker(Pipeline([transport.input(), EspeakTTSService(), avatar, transport.output()]),
                            idle_timeout_secs=None, enable_rtvi=False)

    @transport.event_handler("on_app_message")
    async def on_line(transport, message, *rest):
        if isinstance(message, dict) and message.get("type") == "say" and isinstance(message.get("text"), str):
            await worker.queue_frames([InterruptionFrame(), TTSSpeakFrame(message["text"][:500])])

    @transport.event_handler("on_client_disconnected")
    async def on_gone(transport, client):
        await worker.cancel()

    await runner.add_workers(worker)


def app(args: argparse.Namespace, runner: WorkerRunner) -> web.Application:
    async def page(request):
        return web.FileResponse(PAGE)

    async def offer(request):
        body = await request.json()
        connection = SmallWebRTCConnection(ice_servers=[])  # this machine or the LAN: no STUN server
        await connection.initialize(sdp=body["sdp"], type=body["type"])
        try:
            await start_bot(connection, args, runner)
        except AvatarError as exc:
            await connection.disconnect()
            return web.json_response({"error": str(exc)}, status=502)
        return web.json_response(connection.get_answer())

    application = web.Application()
    application.add_routes([web.get("/", page), web.post("/api/offer", offer)])
    return application


async def main(args: argparse.Namespace) -> None:
    runner = WorkerRunner(handle_sigint=True, handle_sigterm=True)  # either way, its sessions end on the server
    site_runner = web.AppRunner(app(args, runner))
    await site_runner.setup()
    host, port = args.listen.rsplit(":", 1)
    await web.TCPSite(site_runner, host, int(port)).start()
    print(f"open http://{args.listen}/", flush=True)
    try:
        await runner.run(auto_end=False)
    finally:
        await site_runner.cleanup()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8765", help="the stream-wav2lip server")
    parser.add_argument("--presenter", required=True, help="the presenter cache folder, as the server sees it")
    parser.add_argument("--checkpoint", help="a Wav2Lip checkpoint, as the server sees it (default: the animator)")
    parser.add_argument("--listen", default="127.0.0.1:7860", help="where this page is served")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        parser.exit(2, "bot.py: error: espeak-ng is not installed (apt-get install espeak-ng)\n")
    return args


if __name__ == "__main__":
    logger.remove()  # Pipecat's DEBUG lines name every frame processor: INFO and above is what a user reads
    logger.add(sys.stderr, level="INFO")
    asyncio.run(main(parse(sys.argv[1:])))
