"""A real OBS Studio for tests: Xvfb + OBS with a throw-away profile and obs-websocket on 127.0.0.1.

OBS 29 keeps its websocket settings in global.ini; without that file it opens a first-run wizard and keeps the
websocket off. Processes are ended by their own pids.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from core.net import free_port
from engine.outputs.obs import ObsSettings

PASSWORD = "obs-test-pass"
GLOBAL_INI = """[General]
FirstRun=true
LastVersion=486539266
EnableAutoUpdates=false
Pre19Defaults=false
Pre21Defaults=false
Pre23Defaults=false
Pre24.1Defaults=false

[BasicWindow]
SysTrayEnabled=false

[OBSWebSocket]
FirstLoad=false
ServerEnabled=true
ServerPort={port}
AlertsEnabled=false
AuthRequired=true
ServerPassword={password}
DebugEnabled=false
"""


def ensure_installed() -> str | None:
    """None when obs and Xvfb are there (installing them with apt if we can), else why not."""
    if shutil.which("obs") and shutil.which("Xvfb"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "OBS Studio and Xvfb are not installed and this user cannot apt-get install them"
    result = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                            "--no-install-recommends obs-studio xvfb", shell=True, capture_output=True, text=True)
    if result.returncode != 0 or not (shutil.which("obs") and shutil.which("Xvfb")):
        return f"apt-get could not install obs-studio and xvfb: {result.stderr.strip()[-300:]}"
    return None


def free_display() -> int:
    return next(n for n in range(90, 200) if not Path(f"/tmp/.X{n}-lock").exists())


class ObsStudio:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.settings = ObsSettings(port=free_port(), password=PASSWORD, timeout=5)
        config = self.home / ".config" / "obs-studio"
        config.mkdir(parents=True)
        (config / "global.ini").write_text(GLOBAL_INI.format(port=self.settings.port, password=PASSWORD))
        self.display = free_display()
        self._xvfb = subprocess.Popen(["Xvfb", f":{self.display}", "-screen", "0", "1280x800x24", "+extension", "GLX",
                                       "-nolisten", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._obs = None

    def start(self, timeout: float = 30) -> None:
        # opencv's import points QT_QPA_* at its own bundled Qt plugins, which OBS's Qt cannot load
        env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
        env.update(HOME=str(self.home), DISPLAY=f":{self.display}", LIBGL_ALWAYS_SOFTWARE="1")
        log = open(self.root / "obs.log", "ab")
        self._obs = subprocess.Popen(["obs", "--disable-missing-files-check", "--minimize-to-tray"], cwd=self.home,
                                     env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._obs.poll() is not None:
                raise RuntimeError(f"OBS exited with {self._obs.returncode}; see {self.root / 'obs.log'}")
            try:  # ready = the scene collection is loaded, not just the socket open
                client = self.client()
                client.get_version()
                client.get_current_program_scene()
                client.get_input_list()
                client.disconnect()
                time.sleep(0.5)
                return
            except Exception:
                time.sleep(0.3)
        raise RuntimeError(f"OBS's websocket did not answer within {timeout} s")

    def client(self):
        import obsws_python
        logging.getLogger("obsws_python").setLevel(logging.CRITICAL)
        return obsws_python.ReqClient(host=self.settings.host, port=self.settings.port, password=PASSWORD, timeout=5)

    def stop_obs(self) -> None:
        if self._obs is not None and self._obs.poll() is None:
            self._obs.terminate()
            try:
                self._obs.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._obs.kill()
                self._obs.wait()
        self._obs = None

    def close(self) -> None:
        self.stop_obs()
        self._xvfb.terminate()
        try:
            self._xvfb.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._xvfb.kill()
