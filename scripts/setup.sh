#!/usr/bin/env bash
# Installs what fabtier needs on a machine that has only Python, pip and Debian's packages:
# mosquitto and its clients, influxdb and chromium (Debian), then fabtier with its test tools in
# ./.venv, and uPlot (the dashboard's charts) from the npm registry into ./.dashboard-vendor.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
# A real InfluxDB (1.x) for the tests of the line-protocol sink.
command -v influxd >/dev/null 2>&1 || need_apt+=(influxdb)
# Debian's chromium for the dashboard's browser tests (Playwright drives it; it never downloads one).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "installing ${need_apt[*]} from Debian's packages"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
log=$(mktemp)
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
  cat "$log"
  echo "pip could not install fabtier (output above)" >&2
  exit 1
fi
rm -f "$log"

# uPlot for the dashboard's charts: served by the dashboard itself, so a browser loads nothing
# from another host. Installed, never committed (.gitignore).
if command -v npm >/dev/null 2>&1; then
  if [ ! -f .dashboard-vendor/node_modules/uplot/dist/uPlot.iife.min.js ]; then
    echo "installing uPlot (npm) into .dashboard-vendor"
    npm install --prefix .dashboard-vendor --no-audit --no-fund --silent uplot@1 >/dev/null
  fi
else
  echo "npm is not installed: the dashboard's charts (uPlot) will be missing; install Node.js and npm" >&2
fi
