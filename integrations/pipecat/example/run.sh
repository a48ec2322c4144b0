#!/usr/bin/env bash
# The example bot in one command: both venvs, the demo presenter if there is none, the engine's server on it,
# and the bot's page at http://127.0.0.1:7860/ (Ctrl-C stops both).
# PRESENTER=CACHE picks another presenter cache; CHECKPOINT=wav2lip_gan.pth uses Wav2Lip instead of the animator.
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/setup.sh
bash integrations/pipecat/setup.sh
presenter=${PRESENTER:-out/demo/cache/presenter}
[ -d "$presenter" ] || .venv/bin/python stream_out.py demo
.venv/bin/python stream_out.py serve --data_dir "$presenter" ${CHECKPOINT:+--checkpoint_path "$CHECKPOINT"} \
    --listen 127.0.0.1:8765 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
.venv/bin/python - <<'PY'
import time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen("http://127.0.0.1:8765/health", timeout=1)
        break
    except OSError:
        time.sleep(0.2)
else:
    raise SystemExit("the server did not start within 2 minutes")
PY
integrations/pipecat/.venv/bin/python integrations/pipecat/example/bot.py --presenter "$presenter" \
    ${CHECKPOINT:+--checkpoint "$CHECKPOINT"}
