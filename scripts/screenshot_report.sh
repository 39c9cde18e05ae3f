#!/usr/bin/env bash
# Render an lpo report (a static HTML file, e.g. BENCH/report/index.html) in headless
# Chromium and save a screenshot, to check that it renders without a server or network.
#
#   scripts/screenshot_report.sh BENCH/report/index.html [OUT.png] [WIDTH,HEIGHT]
#
# OUT.png defaults to screenshot.png beside the HTML file; the window is 1280,4000 unless
# given. Needs Debian's chromium (`apt-get install chromium`); set CHROMIUM to use another
# binary (chromium-browser, google-chrome). --no-sandbox because containers usually run as
# root, where Chromium's sandbox refuses to start. A throwaway profile folder keeps runs
# independent of each other and of any user profile. Exit status: 0 and the PNG written, or
# non-zero with Chromium's messages on stderr.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
  echo "usage: $0 REPORT.html [OUT.png] [WIDTH,HEIGHT]" >&2
  exit 2
fi
html_file=$1
if [[ ! -f "$html_file" ]]; then
  echo "no such report: $html_file (render it first: python -c 'from lpo.bench.report import render_report; render_report(\"BENCH\")')" >&2
  exit 2
fi
html_abs=$(cd "$(dirname "$html_file")" && pwd)/$(basename "$html_file")
out=${2:-$(dirname "$html_abs")/screenshot.png}
size=${3:-1280,4000}
browser=${CHROMIUM:-}
if [[ -z "$browser" ]]; then
  for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then browser=$candidate; break; fi
  done
fi
if [[ -z "$browser" ]]; then
  echo "no chromium on PATH; install it with: apt-get install chromium (or set CHROMIUM=/path/to/browser)" >&2
  exit 3
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$out"
# --virtual-time-budget lets the page finish decoding its embedded images before the shot.
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
  --no-first-run --user-data-dir="$profile" --virtual-time-budget=5000 \
  --window-size="$size" --screenshot="$out" "file://$html_abs" 2> "$profile/stderr.log" || {
  status=$?
  cat "$profile/stderr.log" >&2
  echo "chromium failed (exit $status)" >&2
  exit "$status"
}
if [[ ! -s "$out" ]]; then
  cat "$profile/stderr.log" >&2
  echo "chromium wrote no screenshot at $out" >&2
  exit 1
fi
echo "$out"
