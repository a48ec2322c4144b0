#!/usr/bin/env bash
# The Pipecat avatar's own venv: bash integrations/pipecat/setup.sh [VENV]   (default: integrations/pipecat/.venv)
exec bash "$(dirname "$0")/../venv.sh" pipecat "$@"
