"""Drive OBS over obs-websocket v5 (obsws-python): show our stream in the current scene, set its audio sync.

Everything here is best effort: if OBS is not running or refuses us, one clear line is logged and the engine keeps
streaming (OBS picks the stream up whenever its Media Source is there)."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger("engine.outputs.obs")

INPUT_NAME = "stream-wav2lip"


@dataclass(frozen=True)
class ObsSettings:
    host: str = "127.0.0.1"
    port: int = 4455
    password: str = ""
    timeout: float = 3.0


def media_source_settings(url: str, input_format: str = "mpegts") -> dict:
    """An OBS ffmpeg_source that plays our stream (MPEG-TS, or WebM with alpha) with as little buffering as it
    allows."""
    input_url = url if "overrun_nonfatal" in url or not url.startswith("udp://") else \
        url.split("?")[0] + "?overrun_nonfatal=1&fifo_size=50000000"
    return {"is_local_file": False, "input": input_url, "input_format": input_format, "buffering_mb": 0,
            "hw_decode": False, "restart_on_activate": True, "clear_on_media_end": False, "reconnect_delay_sec": 1}


def connect(settings: ObsSettings):
    """A ReqClient, or None (logged once, clearly) when OBS cannot be reached."""
    try:
        import obsws_python  # obs-websocket: only when OBS is asked for
    except ImportError as exc:
        log.error("obsws-python is not installed (%s); run scripts/setup.sh", exc)
        return None
    try:
        with library_quiet():
            return obsws_python.ReqClient(host=settings.host, port=settings.port, password=settings.password,
                                          timeout=settings.timeout)
    except Exception as exc:  # refused connection, wrong password, timeout: all mean "not now"
        log.error("OBS is not reachable at %s:%d (%s). Start OBS with its WebSocket server enabled "
                  "(Tools > WebSocket Server Settings); the stream keeps running and OBS can pick it up later.",
                  settings.host, settings.port, one_line(exc))
        return None


@contextmanager
def library_quiet():
    """obsws-python logs a full traceback even for errors we handle and report in one line ourselves."""
    library_log = logging.getLogger("obsws_python")
    level = library_log.level
    library_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        library_log.setLevel(level)


def setup_media_source(settings: ObsSettings, url: str, audio_offset_ms: int = 0,
                       client=None, input_format: str = "mpegts") -> Optional[list[str]]:
    """Create or refresh the input playing `url` in the current program scene; return what was done (None: no OBS)."""
    client = client or connect(settings)
    if client is None:
        return None
    try:
        with library_quiet():
            return _place_media_source(client, url, audio_offset_ms, input_format)
    except Exception as exc:  # obsws-python raises OBSSDKRequestError, timeouts, closed sockets: one line each
        log.error("OBS refused a request (%s); the stream keeps running, and `stream_out.py obs-setup` can try "
                  "again", one_line(exc))
        return None


def _place_media_source(client, url: str, audio_offset_ms: int, input_format: str) -> list[str]:
    done = []
    scene = client.get_current_program_scene().current_program_scene_name
    existing = {i["inputName"] for i in client.get_input_list().inputs}
    wanted = media_source_settings(url, input_format)
    if INPUT_NAME in existing:
        client.set_input_settings(INPUT_NAME, wanted, True)
        done.append(f"updated input '{INPUT_NAME}' to play {wanted['input']}")
        items = {i["sourceName"] for i in client.get_scene_item_list(scene).scene_items}
        if INPUT_NAME not in items:
            client.create_scene_item(scene, INPUT_NAME, True)
            done.append(f"added it to scene '{scene}'")
    else:
        client.create_input(scene, INPUT_NAME, "ffmpeg_source", wanted, True)
        done.append(f"created input '{INPUT_NAME}' in scene '{scene}' playing {wanted['input']}")
    client.set_input_audio_sync_offset(INPUT_NAME, int(audio_offset_ms))
    done.append(f"set its audio sync offset to {int(audio_offset_ms)} ms")
    return done


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def start_virtual_camera(settings: ObsSettings, client=None) -> bool:
    client = client or connect(settings)
    if client is None:
        return False
    try:
        with library_quiet():
            if not client.get_virtual_cam_status().output_active:
                client.start_virtual_cam()
        return True
    except Exception as exc:
        log.error("OBS could not start its virtual camera: %s", one_line(exc))
        return False
