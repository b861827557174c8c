#!/usr/bin/env bash
# Make sure the base image has a Python 3.10+ that can create virtual environments.
#
# python:3.x-slim images already do, and this script then changes nothing. Bare Debian/Ubuntu images
# (nvidia/cuda:*-ubuntu22.04 and the like) get python3, python3-venv and CA certificates from apt.
# The audio and feature libraries need nothing else: their wheels bundle libsndfile, FFmpeg and openSMILE.
set -euo pipefail

if command -v python3 >/dev/null 2>&1 \
    && python3 -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "system-deps.sh: $(python3 --version) with venv is present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps.sh: no usable python3 and no apt-get; use a Debian/Ubuntu base image" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv ca-certificates
rm -rf /var/lib/apt/lists/*
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "system-deps.sh: $(python3 --version) is older than 3.10" >&2
    exit 1
}
