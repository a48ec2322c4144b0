#!/usr/bin/env bash
# The virtual environment of one integration (pipecat, livekit): its framework pins clash with the engine's
# (numpy, protobuf), so each gets its own. Idempotent: skipped when its requirements have not changed; a venv
# left half-made by a failed run is made again.
# Usage: bash integrations/venv.sh NAME [VENV]     (default VENV: integrations/NAME/.venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
name="$1"
venv="${2:-$here/$name/.venv}"
PYTHON=${PYTHON:-python3}

want=$(cat "$here/$name/requirements.txt" "$here/$name/pyproject.toml" "$here/client/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
  echo "[$name] ready: $venv/bin/python"
  exit 0
fi
if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
  echo "[$name] $venv exists and is not a venv: give another folder" >&2
  exit 2
fi
echo "[$name] installing into $venv (first time: a minute or two)"
rm -rf "$venv"
trap 'rm -rf "$venv"' ERR
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r "$here/$name/requirements.txt" -e "$here/client" -e "$here/$name"
echo "$want" > "$venv/.requirements.sha256"
echo "[$name] ready: $venv/bin/python"
