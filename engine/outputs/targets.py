"""The outputs an engine spec names (--outfile): a sink for each, and the GPU encoder where frames are on a GPU."""
from __future__ import annotations

import logging

from configs.spec import EngineSpec
from core.ffmpeg import encoder_works

from .sinks import Mp4Sink, MpegTsSink, PreviewSink, SinkError, VirtualCameraSink, WebmAlphaSink

log = logging.getLogger("engine.outputs")
OBS_URL = "udp://127.0.0.1:23000?pkt_size=1316"
OBS_ALPHA_URL = "udp://127.0.0.1:23001?pkt_size=1316"  # --background alpha: WebM with VP9 alpha
MIXED = "mix of a file and a live output: run them separately (a file renders faster than live)"
CSV_LIVE = ("--blendshapes_csv goes with a file render (--outfile x.mp4, or --blendshapes_only); live, serve with "
            "--blendshapes and read the WebSocket events")


def stream_url(target: str, alpha: bool) -> str:
    """'obs' is our local UDP port for OBS's Media Source (WebM with alpha on its own port); a URL is itself."""
    return (OBS_ALPHA_URL if alpha else OBS_URL) if target == "obs" else target


def make_sinks(spec: EngineSpec) -> list:
    alpha = spec.alpha
    sinks = []
    for target in spec.outfile:
        if target == "vcam":
            if alpha:
                raise SinkError("a virtual camera carries no alpha: fill a key colour instead (--background green) "
                                "and key it in OBS, or stream the alpha with --outfile obs")
            sinks.append(VirtualCameraSink(spec.audio_device, spec.audio_delay_ms, fps=spec.fps))
        elif target == "obs" or "://" in target or target.endswith(".ts"):
            if alpha and target.endswith(".ts"):
                raise SinkError(f"{target}: MPEG-TS (H.264) carries no alpha; stream WebM with alpha to a URL "
                                f"(--outfile obs, or udp://…), or fill a key colour (--background green)")
            url = stream_url(target, alpha)
            recording = spec.record_minutes if target.endswith(".ts") and "://" not in target else None
            sinks.append(WebmAlphaSink(url, fps=spec.fps) if alpha else
                         MpegTsSink(url, fps=spec.fps, max_minutes=recording))
        else:
            sinks.append(Mp4Sink(target, fps=spec.fps, alpha=alpha, max_minutes=spec.record_minutes))
    if spec.preview:
        sinks.append(PreviewSink())
    return sinks


def use_gpu_encoder(sinks: list, compositor) -> None:
    """Frames rendered on a CUDA GPU are encoded there too (NVENC) when this ffmpeg can; else x264 on the CPU."""
    on_gpu = getattr(compositor, "on_device", False) and compositor.device.type == "cuda"
    if on_gpu and any(getattr(s, "nvenc_capable", False) for s in sinks) and encoder_works("h264_nvenc"):
        for sink in sinks:
            if getattr(sink, "nvenc_capable", False):
                sink.video_codec = "h264_nvenc"
        log.info("encoding with NVENC (h264_nvenc)")


def obs_control(spec: EngineSpec) -> None:
    """--obs_control: point OBS's Media Source at each stream we send it, or start its virtual camera."""
    from .obs import ObsSettings, setup_media_source, start_virtual_camera  # obsws-python, only when asked
    settings = ObsSettings(spec.obs_host, spec.obs_port, spec.obs_password)
    for target in spec.outfile:
        if target == "obs" or "://" in target:
            done = setup_media_source(settings, stream_url(target, spec.alpha), int(spec.audio_delay_ms),
                                      input_format="webm" if spec.alpha else "mpegts")
            for line in done or []:
                log.info("OBS: %s", line)
        elif target == "vcam" and start_virtual_camera(settings):
            log.info("OBS: virtual camera started")
