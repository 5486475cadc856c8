#!/usr/bin/env bash
# The viewer's screenshot in docs/: a daemon fed by the replay of a simulated capture
# (looping at 30 frames/s), the viewer grabbing its window once a stack has arrived.
# With "indi" instead of a scene, the daemon is fed by `live-stack source indi` from an
# indiserver running the CCD simulator (featureless noise: the daemon says there is
# nothing to stack; the Camera panel shows the simulator's settings).
#
#   bash scripts/screenshot.sh [OUT.png] [moon|planet|sun|indi] [--colour]
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
"$bin/live-stack" daemon --ingest "$ingest" --publish "$publish" --control "$control" \
  --output "$work/out" --save-interval 5 --log-level warning &  # saves: the history fills
pids+=($!)
"$bin/live-stack" ctl --control "$control" --timeout 30 status >/dev/null  # the daemon is up
if [ "$scene" = indi ]; then
  indi=$(port)
  mkdir "$work/home"  # the simulator's saved configuration goes there, not into ~
  HOME="$work/home" indiserver -p "$indi" indi_simulator_ccd 2>"$work/indiserver.log" &
  pids+=($!)
  for _ in 1 2 3 4 5 6 7 8 9 10; do  # indiserver takes a moment to listen
    indi_getprop -p "$indi" -t 1 "CCD Simulator.CONNECTION.*" >/dev/null 2>&1 && break
  done
  indi_setprop -p "$indi" -t 5 "CCD Simulator.SIMULATOR_SETTINGS.SIM_NOISE=3000"
  "$bin/live-stack" source indi --port "$indi" --device "CCD Simulator" --mode stream \
    --exposure 0.01 --binning 2 --to "$ingest" --control "$control" --log-level warning &
  pids+=($!)
else
  # shellcheck disable=SC2086  # $colour is empty or one option
  "$bin/live-stack" simulate "$scene" --frames 300 --size 640x480 --seeing poor --drift 6 \
    $colour --out "$work/capture" >/dev/null
  "$bin/live-stack" source replay "$work/capture/video.ser" --fps 30 --loop --to "$ingest" &
  pids+=($!)
fi
QT_QPA_PLATFORM=offscreen "$bin/live-stack" view "$publish" --screenshot "$out" \
  --screenshot-delay 20 --size 1600x1000 --timeout 60  # 20 s: the graphs fill
