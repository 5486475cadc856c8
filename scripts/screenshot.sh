#!/usr/bin/env bash
# The viewer's screenshot in docs/: a daemon fed by the replay of a simulated capture
# (looping at 30 frames/s), the viewer grabbing its window once a stack has arrived.
#
#   bash scripts/screenshot.sh [OUT.png] [moon|planet|sun] [--colour]
#
# Everything runs on loopback ports chosen by the system; nothing is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/viewer.png}
scene=${2:-moon}
colour=${3:-}
bin=.venv/bin
[ -x "$bin/live-stack" ] || bash scripts/setup.sh
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { "$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ingest="tcp://127.0.0.1:$(port)"; publish="tcp://127.0.0.1:$(port)"; control="tcp://127.0.0.1:$(port)"
# shellcheck disable=SC2086  # $colour is empty or one option
"$bin/live-stack" simulate "$scene" --frames 300 --size 640x480 --seeing poor --drift 6 \
  $colour --out "$work/capture" >/dev/null
"$bin/live-stack" daemon --ingest "$ingest" --publish "$publish" --control "$control" \
  --output "$work/out" --save-interval 5 --log-level warning &  # saves: the history fills
pids+=($!)
"$bin/live-stack" source replay "$work/capture/video.ser" --fps 30 --loop --to "$ingest" &
pids+=($!)
"$bin/live-stack" ctl --control "$control" --timeout 30 status >/dev/null  # the daemon is up
QT_QPA_PLATFORM=offscreen "$bin/live-stack" view "$publish" --screenshot "$out" \
  --screenshot-delay 20 --size 1600x1000 --timeout 60  # 20 s: the graphs fill
