#!/usr/bin/env bash
# The LiveKit avatar's own venv: bash integrations/livekit/setup.sh [VENV]   (default: integrations/livekit/.venv)
exec bash "$(dirname "$0")/../venv.sh" livekit "$@"
