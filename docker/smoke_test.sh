#!/usr/bin/env bash
# Smoke test of the image's install and start steps, without Docker: install the project into a fresh
# virtual environment with docker/install.sh, start it with docker/start.sh against a small bundle, wait
# until docker/healthcheck.py passes (GET /ready = 200), POST one generated WAV to /v1/predict, then
# send SIGTERM and require a clean exit (status 0).
#
# Usage: docker/smoke_test.sh [--bundle DIR] [--venv DIR] [--keep]
#   --bundle DIR  bundle folder or artifacts root to serve (default: fit a small eGeMAPS bundle on
#                 generated clips with the fresh environment, via tests/support.py)
#   --venv DIR    where to install (default: a new temporary folder); an existing one is reused
#   --keep        keep the temporary folder (server log, venv) for inspection
#
# Environment: TORCH_INDEX (default empty: pip's own index and configuration), TORCH_VERSION,
# EXTRAS (extras to install), SMOKE_READY_TIMEOUT (seconds to wait for /ready, default 120),
# SMOKE_STOP_TIMEOUT (seconds to wait for the exit after SIGTERM, default 60).
#
# Like the image, it installs from a copy of the build context (the entries .dockerignore lets in) and
# runs the service from a folder outside the repository, so only the installed package is imported.
# Prints "smoke test passed" and exits 0 on success.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle=
venv=
keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --bundle) bundle=$(cd "$2" && pwd); shift 2 ;;
        --venv) venv=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "smoke_test.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

ready_timeout=${SMOKE_READY_TIMEOUT:-120}
stop_timeout=${SMOKE_STOP_TIMEOUT:-60}
work=$(mktemp -d "${TMPDIR:-/tmp}/ser-smoke.XXXXXX")
venv=${venv:-$work/venv}
server_pid=

cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [[ $keep == 1 ]]; then
        echo "smoke_test.sh: kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

fail() {
    echo "smoke_test.sh: FAILED: $*" >&2
    if [[ -f $work/server.log ]]; then
        echo "---- server log (last 60 lines) ----" >&2
        tail -n 60 "$work/server.log" >&2
    fi
    exit 1
}

step() { echo "smoke_test.sh: $*"; }

# Install from a copy of what `docker build` would send (the entries .dockerignore lets in), as the
# image does: this proves the build context is enough, and pip's in-tree build leaves the checkout clean.
context=$work/context
mkdir -p "$context"
kept=()
while IFS= read -r entry; do
    [[ -e $repo/$entry ]] && kept+=("$entry")
done < <(sed -n 's#^!\(.*\)$#\1#p' "$repo/.dockerignore")
((${#kept[@]} > 0)) || fail "no '!name' entries in .dockerignore"
tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - "${kept[@]}" \
    | tar -C "$context" -xf -
step "build context: ${kept[*]}"

step "installing into $venv"
TORCH_INDEX=${TORCH_INDEX-} PROJECT_DIR=$context "$repo/docker/install.sh" "$venv" "${EXTRAS:-}"
vpython=$venv/bin/python

# Everything below runs from $work: only the installed package is importable, plus tests/support.py.
cd "$work"
export PYTHONPATH=$repo/tests

if [[ -z $bundle ]]; then
    step "fitting a small eGeMAPS bundle on generated clips"
    bundle=$work/artifacts
    "$vpython" - "$bundle" <<'EOF'
import sys
from pathlib import Path

from shared.backbones import BackboneSpec
from support import build_synthetic_bundle

print(build_synthetic_bundle(Path(sys.argv[1]), BackboneSpec(kind="egemaps")))
EOF
fi

port=$("$vpython" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
step "starting docker/start.sh on 127.0.0.1:$port with bundle $bundle"
env PATH="$venv/bin:$PATH" HF_HOME="$work/hf-cache" HF_HUB_OFFLINE=1 \
    SER_BUNDLE="$bundle" SER_HOST=127.0.0.1 SER_PORT="$port" SER_DEVICE=cpu SER_HF_OFFLINE=true \
    "$repo/docker/start.sh" >"$work/server.log" 2>&1 &
server_pid=$!

step "waiting up to ${ready_timeout}s for docker/healthcheck.py to pass"
started=$SECONDS
deadline=$((started + ready_timeout))
until SER_PORT=$port "$vpython" "$repo/docker/healthcheck.py" >/dev/null 2>"$work/health.err"; do
    kill -0 "$server_pid" 2>/dev/null || fail "the server exited before it was ready"
    ((SECONDS < deadline)) || fail "not ready after ${ready_timeout}s: $(cat "$work/health.err")"
    sleep 1
done
step "ready after $((SECONDS - started))s"

step "POST /v1/predict with a generated WAV"
"$vpython" - "$port" <<'EOF' || fail "prediction request"
import json
import sys

import httpx
from support import wav_bytes

from shared.constants import EMOTIONS
from shared.signals import speech_like

url = f"http://127.0.0.1:{sys.argv[1]}/v1/predict"
# voiced enough for the speech check (SER_REQUIRE_SPEECH)
files = {"file": ("voiced.wav", wav_bytes(speech_like(1.5, seed=3)), "audio/wav")}
response = httpx.post(url, files=files, timeout=60, trust_env=False)
print(response.status_code, response.text[:500])
if response.status_code != 200:
    sys.exit(f"{url} answered {response.status_code}")
body = response.json()
if body.get("label") not in EMOTIONS:
    sys.exit(f"no emotion label in the reply: {json.dumps(body)[:300]}")
EOF

step "sending SIGTERM"
kill -TERM "$server_pid"
# A watchdog turns a hang into SIGKILL (status 137), which fails below. Its output goes nowhere, so a
# caller reading ours never waits on it.
(sleep "$stop_timeout" && kill -KILL "$server_pid") >/dev/null 2>&1 &
watchdog=$!
status=0
wait "$server_pid" || status=$?
server_pid=
kill "$watchdog" 2>/dev/null || true
((status != 137)) || fail "still running ${stop_timeout}s after SIGTERM"
((status == 0)) || fail "exit status $status after SIGTERM (expected 0)"

step "smoke test passed"
