#!/usr/bin/env bash
# Install what the browser test (tests/service/test_web_browser.py, marker `browser`) needs on Debian:
# Debian's Chromium (driven by the Python playwright package from the dev extra through
# executable_path=/usr/bin/chromium; `playwright install` is never used) and a basic font so text
# renders in screenshots. Run as root (or through sudo). Safe to re-run.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        exec sudo -- "$0" "$@"
    fi
    echo "install-browser.sh: run as root (apt-get needs it)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium fonts-dejavu-core

dpkg-query --show chromium
test -x /usr/bin/chromium
