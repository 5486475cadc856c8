#!/usr/bin/env bash
# Set up everything live-stack needs on a fresh Debian/Ubuntu machine, idempotently:
# system packages (when run as root or with sudo) and a virtual environment in .venv
# with live-stack installed in editable mode with its viewer, INDI and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  indi-bin            # indiserver and indi_simulator_ccd, for the INDI source and its tests
  libindi-dev swig libcfitsio-dev libnova-dev zlib1g-dev  # to build pyindi-client
  libdbus-1-dev libglib2.0-dev   # pyindi-client's dependency dbus-python builds against these
  systemd             # systemd-analyze, to verify the units in systemd/
  libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3  # Qt offscreen rendering
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[viewer,indi,test]'
