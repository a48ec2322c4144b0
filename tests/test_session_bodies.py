"""A session body is checked whole before anything is made (engine/serve/sessions.py: session_spec): paths stay
inside the session root after every symlink and the choice of a child cache, outputs are an allow-list, every
mistake is a 400 naming its field, and a refused body leaves no folder behind. The serve flags' ranges too."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from configs.spec import EngineSpec
from engine.serve.sessions import BadSession, OutputPolicy, release_outputs, reserve_outputs, session_spec


@pytest.fixture(scope="module")
def shared_root(built, tmp_path_factory) -> Path:
    """A session root holding one real cache (copied in) and one symlinked in from outside."""
    root = tmp_path_factory.mktemp("bodies") / "root"
    shutil.copytree(built["cache"] / "clip25", root / "own" / "clip25")
    (root / "linked").mkdir()
    (root / "linked" / "clip30").symlink_to(built["cache"] / "clip30")
    return root


@pytest.fixture()
def root(shared_root, tmp_path) -> Path:
    """The shared root for a test that only reads it; see `own_root` for one that changes it."""
    return shared_root


@pytest.fixture()
def own_root(shared_root, tmp_path) -> Path:
    """A copy of the shared root, for a test that changes it."""
    root = tmp_path / "root"
    shutil.copytree(shared_root, root, symlinks=True)
    return root


def refused(body: dict, root: Path, policy: OutputPolicy = OutputPolicy()) -> BadSession:
    with pytest.raises(BadSession) as caught:
        session_spec(EngineSpec(), body, root, policy)
    return caught.value


def test_a_cache_root_inside_whose_child_links_outside_is_refused_and_its_own_child_is_named(root):
    spec = session_spec(EngineSpec(), {"data_dir": "own"}, root)
    assert Path(spec.data_dir) == (root / "own" / "clip25").resolve()  # the child the engine will load
    assert refused({"data_dir": "linked"}, root).field == "data_dir"
    assert refused({"data_dir": "linked/clip30"}, root).field == "data_dir"


def test_a_file_in_a_cache_that_links_outside_the_root_is_refused(own_root, built):
    frame = next((own_root / "own" / "clip25").rglob("*.jpg"))
    frame.unlink()
    frame.symlink_to(next((built["cache"] / "clip25").rglob("*.jpg")))
    error = refused({"data_dir": "own/clip25"}, own_root)
    assert error.field == "data_dir" and "links outside" in str(error)


@pytest.mark.parametrize("url", [
    "tcp://127.0.0.1:9000?listen=1",          # anyone who connects would get the stream, no token
    "srt://127.0.0.1:9000?mode=listener",
    "udp://169.254.169.254:80",               # the cloud metadata address
    "udp://255.255.255.255:9000",             # broadcast
    "udp://239.1.2.3:9000",                   # multicast
    "udp://192.168.1.20:9000",                # not loopback, not allowed
    "rtp://example.com:9000",                 # a name: only loopback names by default
    "udp://127.0.0.1:0",                      # no port
])
def test_stream_outputs_outside_the_allow_list_or_listening_are_refused(root, url):
    error = refused({"data_dir": "own", "outfile": [url]}, root)
    assert error.field == "outfile" and url.split("?")[0][:30] in str(error)


def test_loopback_streams_pass_and_allow_output_adds_a_host_or_one_port(root):
    body = {"data_dir": "own"}
    ok = session_spec(EngineSpec(), {**body, "outfile": ["udp://127.0.0.1:9000", "srt://localhost:9001"]}, root)
    assert ok.outfile == ("udp://127.0.0.1:9000", "srt://localhost:9001")
    policy = OutputPolicy(allowed=("192.168.1.20:9000", "10.0.0.5"))
    assert session_spec(EngineSpec(), {**body, "outfile": ["udp://192.168.1.20:9000"]}, root, policy).outfile
    assert session_spec(EngineSpec(), {**body, "outfile": ["rtp://10.0.0.5:7000"]}, root, policy).outfile
    assert refused({**body, "outfile": ["udp://192.168.1.20:9001"]}, root, policy).field == "outfile"
    too_many = refused({**body, "outfile": ["udp://127.0.0.1:9000", "udp://127.0.0.1:9001", "x.ts"]}, root)
    assert too_many.field == "outfile" and "at most 2" in str(too_many)
    assert not (root / "x.ts").exists()


def test_recordings_get_the_server_s_cap_and_a_body_may_ask_for_less_not_more(root, media, tmp_path, capsys):
    from stream_out import main as stream_out_main
    body = {"data_dir": "own", "outfile": ["rec/x.mp4"]}
    assert session_spec(EngineSpec(), body, root).record_minutes == 60
    assert session_spec(EngineSpec(record_minutes=30), body, root).record_minutes == 30  # serve --record_minutes
    policy = OutputPolicy(max_record_minutes=5)
    assert session_spec(EngineSpec(), {**body, "record_minutes": 2}, root, policy).record_minutes == 2
    assert session_spec(EngineSpec(record_minutes=30), body, root, policy).record_minutes == 5
    more = refused({**body, "record_minutes": 6}, root, policy)
    assert more.field == "record_minutes" and "at most 5 (serve --max_record_minutes)" in str(more)
    assert stream_out_main(["serve", "--record_minutes", "90", "--listen", "127.0.0.1:0"]) == 2
    assert "--record_minutes 90 is past --max_record_minutes 60" in capsys.readouterr().err
    render = ["--data_dir", str(root / "own" / "clip25"), "--audio_files", str(media["speech"]),
              "--outfile", str(tmp_path / "x.mp4"), "--record_minutes", "1"]
    assert stream_out_main(render) == 2 and "a file render writes every frame" in capsys.readouterr().err


@pytest.mark.parametrize("body, field", [
    ({"data_dir": "a" * 300}, "data_dir"),                                     # too long a name for the disk
    ({"data_dir": "own", "checkpoint_path": "own"}, "checkpoint_path"),          # a folder, not a file
    ({"data_dir": "own", "gfpgan_path": "nosuch.pth", "enhance": "face"}, "gfpgan_path"),
    ({"data_dir": "own", "outfile": ["own/clip25/manifest.json/x.mp4"]}, "outfile"),  # under a file
    ({"data_dir": "own/clip25/manifest.json"}, "data_dir"),                    # a file, not a cache
])
def test_bad_paths_are_one_400_line_naming_the_field(root, body, field):
    error = refused(body, root)
    assert error.field == field and "\n" not in str(error)


def test_a_refused_body_leaves_no_folder_and_a_session_that_never_starts_takes_its_own_away(own_root):
    refused({"data_dir": "own", "outfile": ["recordings/new/x.mp4"], "latency_ms": 9000.0}, own_root)
    refused({"data_dir": "own", "outfile": ["recordings/new/x.mp4"], "checkpoint_path": "nosuch.pth"}, own_root)
    assert not (own_root / "recordings").exists()
    (own_root / "kept").mkdir()
    spec = session_spec(EngineSpec(), {"data_dir": "own", "outfile": ["recordings/new/x.mp4", "kept/y.ts"]},
                        own_root)
    assert not (own_root / "recordings").exists()  # checking makes nothing
    folders = reserve_outputs(spec.outfile)
    assert (own_root / "recordings" / "new" / "x.mp4").is_file() and (own_root / "kept" / "y.ts").is_file()
    with pytest.raises(BadSession, match="exists already"):  # taken: another session cannot write it too
        reserve_outputs(spec.outfile[:1])
    release_outputs(spec.outfile, folders)  # the session never started: its empty files and the folders made go
    assert not (own_root / "recordings").exists() and (own_root / "kept").is_dir()
    assert not (own_root / "kept" / "y.ts").exists()


@pytest.mark.parametrize("flag, value", [("--max_peers", "-1"), ("--max_peers", "0"), ("--max_queue_seconds", "0"),
                                         ("--max_client_queue_seconds", "-5"), ("--max_sessions", "0"),
                                         ("--cpu_cores", "0"), ("--max_outputs", "-1")])
def test_serve_flags_out_of_range_are_one_line_and_exit_2(flag, value, capsys):
    from engine.cli import parse_args
    with pytest.raises(SystemExit) as exited:
        parse_args([flag, value])
    assert exited.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def forged_png(width: int, height: int) -> bytes:
    """A PNG header claiming this size (the decoder would allocate for it), and nothing else."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def test_a_cache_image_of_another_size_or_a_forged_header_is_refused_at_load_in_one_line(own_root):
    import cv2
    import numpy as np
    from engine.render.presenter import Presenter, PresenterError
    cache = own_root / "own" / "clip25"
    background = sorted((cache / "bg").iterdir())[3]
    original = background.read_bytes()
    for data, found in ((cv2.imencode(".jpg", np.zeros((64, 80, 3), np.uint8))[1].tobytes(), "80x64"),
                        (forged_png(50000, 50000), "50000x50000"), (b"not an image", "not a PNG or JPEG")):
        background.write_bytes(data)
        with pytest.raises(PresenterError) as caught:
            Presenter(cache, 96)
        assert background.name in str(caught.value) and found in str(caught.value) and "\n" not in str(caught.value)
    background.write_bytes(original)
    assert Presenter(cache, 96).frames > 0


@pytest.mark.parametrize("change", [{"width": None}, {"face_size": "96"}, {"height": 10 ** 6}])
def test_a_manifest_with_a_key_missing_or_of_the_wrong_type_is_a_400_not_a_500(own_root, change):
    import json
    from engine.serve.sessions import Sessions, SessionsConfig, create_answer
    manifest = own_root / "own" / "clip25" / "manifest.json"
    values = {**json.loads(manifest.read_text()), **change}
    manifest.write_text(json.dumps({k: v for k, v in values.items() if v is not None}))
    sessions = Sessions(EngineSpec(), SessionsConfig(root=own_root))
    try:
        status, body = create_answer(sessions, {"data_dir": "own"})
    finally:
        sessions.close()
    assert status == 400 and "manifest" in body["error"], body
