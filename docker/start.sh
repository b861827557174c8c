#!/usr/bin/env bash
# Start the SER service in the foreground: `python -m service`, configured by the SER_* environment
# (SER_BUNDLE, SER_HOST, SER_PORT, SER_DEVICE, ...). exec hands the process over, so SIGTERM from
# `docker stop` reaches the server and it shuts down gracefully.
#
# The interpreter is the first `python` on PATH (the image puts /opt/venv/bin first); set PYTHON to
# use another, for example PYTHON=/opt/venv/bin/python.
set -euo pipefail

exec "${PYTHON:-python}" -m service "$@"
