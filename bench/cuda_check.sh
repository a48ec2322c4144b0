#!/usr/bin/env bash
# The GPU checks in one run, for a machine lent for minutes (no network, no apt, no espeak-ng, no ffmpeg, no
# mediapipe there): what it cannot make is made here first and carried.
#
#   here:  bash bench/cuda_check.sh prepare .cuda          presenter caches (720p and 1080p at 288 px, the test
#                                                          clip at 96 px), espeak-ng speech, an ffmpeg wheel
#   there: bash bench/cuda_check.sh run .cuda "$OUT" [STEP ...]   the CUDA tests, then the benches (or only the
#                                                                 named steps); logs into $OUT
#
# The default steps print every figure of the GPU targets in about 7 minutes, most telling first: the tests, the
# 720p engine eager and with CUDA graphs (enhance none and face), the device steps alone (paste-back, graphs
# against eager), sessions with CUDA graphs (none and face), 1080p with face, --compile. `models`, `cold_start`
# and `profile` run only when named.
#
# `run` calls the CUDA tests' own functions (tests/test_device_pipeline.py) on the carried test clip: their pytest
# fixtures would need mediapipe and espeak-ng to rebuild it. Every bench prints its command and machine first.
set -uo pipefail
mode=${1:?prepare or run}
carry=${2:?the carried folder}
here=$(cd "$(dirname "$0")/.." && pwd)

if [ "$mode" = prepare ]; then
    set -e
    mkdir -p "$carry"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$carry" imageio-ffmpeg==0.7.0
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$carry" spandrel==0.4.2  # GFPGAN's network
    PYTHONPATH="$here:$here/tests:$here/bench" "$here/.venv/bin/python" - "$carry" <<'EOF'
import sys
from pathlib import Path

from bench.engine import TEXT, RESOLUTIONS
from conftest import CLIP_SECONDS, COVER
from demo.presenter import FacePath, make_presenter_clip, speak
from preprocess.pipeline import PreprocessConfig, preprocess_video

carry = Path(sys.argv[1])
speak(TEXT, carry / "speech.wav")
test_speech = speak("Testing one two three. The quick brown fox jumps over the lazy dog.", carry / "test_speech.wav")
clip = make_presenter_clip(carry / "clip25.mp4", CLIP_SECONDS, 25, cover=COVER, audio=test_speech)
preprocess_video(clip, carry / "test", PreprocessConfig(), progress=False)
for name in ("720p", "1080p"):
    width, height, scale = RESOLUTIONS[name]
    clip = make_presenter_clip(carry / f"{name}.mp4", 1.6, 25, FacePath(width=width, height=height, scale=scale))
    preprocess_video(clip, carry / name, PreprocessConfig(face_size=288), progress=False)
for clip in carry.glob("*.mp4"):
    clip.unlink()
EOF
    du -sh "$carry"
    exit 0
fi

out=${3:?a folder for the logs}
only=" ${*:4} "  # step names to run (default: all)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$carry"/*.whl || exit 1
mkdir -p /tmp/bin && ln -sf "$(ls /tmp/site/imageio_ffmpeg/binaries/ffmpeg-*)" /tmp/bin/ffmpeg
export PATH=/tmp/bin:$PATH PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/xdg
cd "$here"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: one check, its log in $OUT/NAME.log, bounded in time
    local name=$1 limit=$2; shift 2
    if [ "$only" = "  " ]; then
        [[ " models cold_start profile " == *" $name "* ]] && return 0
    else
        [[ "$only" == *" $name "* ]] || return 0
    fi
    echo "== $name: $*" | tee -a "$out/summary.log"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "== $name: exit $?" | tee -a "$out/summary.log"
    grep -E "^20[0-9-]+ |per-stage|file render|live loop|resident|presenter |sessions|paste-back|batch [0-9]|held|^\| |PASS|FAIL|Error|error" \
        "$out/$name.log" | tail -n 14 | tee -a "$out/summary.log"
}

step tests 100 python3 - "$carry" <<'EOF'
import sys, traceback
from pathlib import Path
sys.path[:0] = [".", "tests"]
from engine.render.presenter import Presenter
import test_device_pipeline as t

carry = Path(sys.argv[1])
presenter = Presenter(next((carry / "test").iterdir()), 96, load_heads=True)
media = {"speech": carry / "test_speech.wav"}
checks = [("test_the_device_pipeline_on_cuda_equals_the_host_path[none]",
           lambda: t.test_the_device_pipeline_on_cuda_equals_the_host_path(presenter, media, "none")),
          ("test_the_device_pipeline_on_cuda_equals_the_host_path[face]",
           lambda: t.test_the_device_pipeline_on_cuda_equals_the_host_path(presenter, media, "face")),
          ("test_presenter_images_fall_back_to_pinned_host_memory_when_they_do_not_fit",
           lambda: t.test_presenter_images_fall_back_to_pinned_host_memory_when_they_do_not_fit(presenter)),
          ("test_captured_cuda_graphs_replay_the_eager_steps_padded_and_never_overwrite_a_result",
           t.test_captured_cuda_graphs_replay_the_eager_steps_padded_and_never_overwrite_a_result)]
failed = 0
for name, check in checks:
    try:
        check()
        print("PASS", name)
    except Exception:
        failed += 1
        print("FAIL", name)
        traceback.print_exc()
sys.exit(1 if failed else 0)
EOF

p720=$(ls -d "$carry"/720p/*) p1080=$(ls -d "$carry"/1080p/*)
common=(--device cuda --size 288 --speech "$carry/speech.wav" --seconds 20 --live_seconds 10)
step engine_none 60 python3 bench/engine.py "${common[@]}" --data_dir "$p720" --enhance none
step engine_graphs 60 python3 bench/engine.py "${common[@]}" --data_dir "$p720" --enhance none --cuda_speedup graphs
step engine_face 70 python3 bench/engine.py "${common[@]}" --data_dir "$p720" --enhance face --cuda_speedup graphs
step device_steps 45 python3 bench/device_steps.py --device cuda --data_dir "$p720" --batches 1,2,16
sessions=(--device cuda --size 288 --speech "$carry/speech.wav" --data_dir "$p720" --cuda_graphs --hold 5)
step sessions 90 python3 bench/sessions.py "${sessions[@]}" --step 8 --max 64
step sessions_face 75 python3 bench/sessions.py "${sessions[@]}" --enhance face --step 2 --max 16
step engine_1080 50 python3 bench/engine.py "${common[@]}" --data_dir "$p1080" --enhance face --cuda_speedup graphs \
    --live_seconds 0
step engine_compile 150 python3 bench/engine.py "${common[@]}" --data_dir "$p720" --enhance none \
    --cuda_speedup compile --stages 0
step models 100 python3 bench/models.py --device cuda --seconds 0.5
step cold_start 40 python3 bench/thread_cold_start.py
step profile 60 python3 bench/engine.py "${common[@]}" --data_dir "$p720" --enhance none --stages 0 --live_seconds 0 \
    --profile
exit 0
