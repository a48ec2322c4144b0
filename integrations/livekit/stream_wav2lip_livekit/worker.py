"""The avatar's worker: a process that joins the agent's LiveKit room as the avatar participant and runs
AvatarRunner with the generator there. The agent's speech comes in over a DataStream, and the presenter's video
and audio tracks go out, published on the agent's behalf.

    LIVEKIT_URL=wss://... LIVEKIT_TOKEN=<the avatar's token> STREAM_WAV2LIP_URL=http://127.0.0.1:8765 \\
    STREAM_WAV2LIP_TOKEN=... STREAM_WAV2LIP_PRESENTER=cache/anna python -m stream_wav2lip_livekit.worker

The agent launches it for its room, as LiveKit's avatar plugins do, and sends its speech to it (livekit.api,
livekit.agents.voice.room_io.ATTRIBUTE_PUBLISH_ON_BEHALF, livekit.agents.voice.avatar.DataStreamAudioOutput):

    token = (api.AccessToken().with_identity("stream-wav2lip-avatar").with_kind("agent")
             .with_grants(api.VideoGrants(room_join=True, room=ctx.room.name))
             .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: ctx.room.local_participant.identity}).to_jwt())
    # start this worker with LIVEKIT_URL and LIVEKIT_TOKEN=token; before session.start():
    session.output.audio = DataStreamAudioOutput(ctx.room, destination_identity="stream-wav2lip-avatar",
                                                 wait_remote_track=rtc.TrackKind.KIND_VIDEO)

The worker ends when the agent leaves or the room closes; it exits 2 with a one-line reason when a setting is
missing, and 1 when the room or the stream-wav2lip server cannot be reached, or the server goes away.
AvatarRunner publishes the tracks at the first frame and reads no more frames until someone subscribes to them,
while the server stops sending frames to a client 2 s behind: the agent's room connection subscribes to them
(ctx.connect()'s default) in time.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys

from livekit import rtc
from livekit.agents import utils
from livekit.agents.voice.avatar import AvatarRunner, DataStreamAudioReceiver

from stream_wav2lip_livekit import AvatarError, StreamWav2LipVideoGenerator


async def run_avatar(room: rtc.Room, generator: StreamWav2LipVideoGenerator) -> None:
    """In a connected room, until the agent leaves or the room disconnects; the generator's AvatarError if it
    fails."""
    agent = await utils.wait_for_participant(room, kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
    gone = asyncio.Event()

    def on_left(participant: rtc.RemoteParticipant) -> None:
        if participant.identity == agent.identity:
            gone.set()
    room.on("participant_disconnected", on_left)
    room.on("disconnected", lambda *_: gone.set())
    async with generator:  # opened once the agent is here: its frames flow from then on and must be read
        runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room, sender_identity=agent.identity),
                              video_gen=generator, options=generator.avatar_options())
        await runner.start()
        working, leaving = asyncio.ensure_future(runner.wait_for_complete()), asyncio.ensure_future(gone.wait())
        done, _ = await asyncio.wait({working, leaving}, return_when=asyncio.FIRST_COMPLETED)
        leaving.cancel()
        await runner.aclose()
        if working in done:
            working.result()


async def join(url: str, token: str, generator: StreamWav2LipVideoGenerator) -> None:
    room = rtc.Room()
    await room.connect(url, token)
    try:
        await run_avatar(room, generator)
    finally:
        await room.disconnect()


def main() -> None:
    """`python -m stream_wav2lip_livekit.worker` (or stream-wav2lip-livekit-worker), set by the environment above;
    STREAM_WAV2LIP_URL defaults to http://127.0.0.1:8765, the presenter to the server's own."""
    env = os.environ
    missing = [name for name in ("LIVEKIT_URL", "LIVEKIT_TOKEN") if not env.get(name)]
    if missing:  # bad input: exit code 2, as for every command of the project
        print(f"stream-wav2lip avatar worker: set {' and '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    generator = StreamWav2LipVideoGenerator(url=env.get("STREAM_WAV2LIP_URL", "http://127.0.0.1:8765"),
                                            token=env.get("STREAM_WAV2LIP_TOKEN"),
                                            presenter=env.get("STREAM_WAV2LIP_PRESENTER"))
    try:
        asyncio.run(join(env["LIVEKIT_URL"], env["LIVEKIT_TOKEN"], generator))
    except (AvatarError, rtc.ConnectError) as exc:
        sys.exit(f"stream-wav2lip avatar worker: {exc}")


if __name__ == "__main__":
    main()
