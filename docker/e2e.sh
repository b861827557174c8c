#!/usr/bin/env bash
# Build the image for real and run the compose stack end to end, on a machine with no image registry:
#
#   1. start a Docker engine (dockerd) when none answers;
#   2. make a base image locally when it is missing: Debian bookworm by debootstrap, then `docker import`;
#   3. build docker/Dockerfile against it (a CPU torch wheel from $SER_E2E_WHEELS, and the CA bundle
#      $SER_E2E_CA for a TLS-inspecting proxy, are handed to pip in the build stage when given);
#   4. `docker compose up -d api` (docker-compose v1 works too) with an empty artifacts volume: the demo
#      model; wait until the container is healthy;
#   5. post a clip to /v1/predict, check the demo model answered and that the service is not root;
#   6. stop it (SIGTERM) and check it exited 0, then remove the stack and its volumes.
#
# Usage: docker/e2e.sh CLIP
#   CLIP   an audio file to post
# Environment: SER_E2E_BASE (default ser-base:bookworm), SER_E2E_PORT (default 18000),
#   SER_E2E_WHEELS (a folder of wheels, e.g. /opt/wheels), SER_E2E_CA (a PEM bundle, e.g. the host's
#   /etc/ssl/certs/ca-certificates.crt), DEBIAN_MIRROR (default http://deb.debian.org/debian).
# Exit status: 0 passed, 1 a check failed, 3 no Docker engine or debootstrap here (nothing was checked).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
clip=${1:?usage: docker/e2e.sh CLIP}
base=${SER_E2E_BASE:-ser-base:bookworm}
port=${SER_E2E_PORT:-18000}
tag=e2e
project=ser-e2e
say() { echo "e2e: $*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}

if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || {
        say "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
        exit 3
    }
    say "starting dockerd"
    dockerd --storage-driver overlay2 >"${TMPDIR:-/tmp}/ser-e2e-dockerd.log" 2>&1 &
    for _ in $(seq 60); do
        if docker info >/dev/null 2>&1; then break; fi
        sleep 1
    done
    docker info >/dev/null 2>&1 || {
        say "dockerd did not start: see ${TMPDIR:-/tmp}/ser-e2e-dockerd.log"
        exit 3
    }
fi

if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
        say "no base image $base and no debootstrap to make one (apt-get install debootstrap)"
        exit 3
    }
    rootfs=$(mktemp -d)
    say "making the base image $base with debootstrap (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"${TMPDIR:-/tmp}/ser-e2e-debootstrap.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
    rm -rf "$rootfs"
fi

cleanup_files=()
if [[ -n ${SER_E2E_WHEELS:-} ]]; then
    for wheel in "$SER_E2E_WHEELS"/torch-*.whl; do
        [[ -e $wheel ]] || continue
        cp "$wheel" "$root/docker/wheels/" && cleanup_files+=("$root/docker/wheels/$(basename "$wheel")")
    done
fi
if [[ -n ${SER_E2E_CA:-} ]]; then
    cp "$SER_E2E_CA" "$root/docker/build-ca/e2e-ca.crt" && cleanup_files+=("$root/docker/build-ca/e2e-ca.crt")
fi
compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -p "$project" "$@"
    else
        docker-compose -p "$project" "$@"
    fi
}
finish() {
    compose down -v >/dev/null 2>&1 || true
    rm -f "${cleanup_files[@]}"
}
trap finish EXIT

say "building ser-service:$tag from $base"
docker build --network host -f "$root/docker/Dockerfile" --build-arg BASE="$base" --build-arg TORCH_INDEX= \
    -t "ser-service:$tag" "$root" >"${TMPDIR:-/tmp}/ser-e2e-build.log" 2>&1 \
    || fail "the build failed: see ${TMPDIR:-/tmp}/ser-e2e-build.log"

cd "$root"
export SER_IMAGE_TAG=$tag SER_PUBLISH_PORT=$port
compose up -d --no-build api
container=$(compose ps -q api)
say "waiting for $container to be healthy"
for _ in $(seq 120); do
    status=$(docker inspect --format '{{.State.Health.Status}}' "$container")
    [[ $status == healthy ]] && break
    [[ $(docker inspect --format '{{.State.Running}}' "$container") == true ]] || fail "the api exited: $(docker logs --tail 20 "$container" 2>&1)"
    sleep 2
done
[[ $status == healthy ]] || fail "not healthy after 4 minutes: $(docker logs --tail 20 "$container" 2>&1)"

answer=$(curl -fsS -F "file=@$clip" "http://127.0.0.1:$port/v1/predict") || fail "the prediction failed"
say "prediction: $answer"
[[ $answer == *'"model":{"name":"demo-ravdess-egemaps"'* ]] || fail "the demo model did not answer"
info=$(curl -fsS "http://127.0.0.1:$port/v1/info")
[[ $info == *'"demo":true'* ]] || fail "/v1/info does not say the demo model is served"
uid=$(docker exec "$container" sh -c 'cat /proc/1/status /proc/self/status | grep "^Uid" | sort -u')
say "uids: $uid"
[[ $uid != *$'\t0\t'* ]] || fail "a process runs as root"

say "stopping (SIGTERM)"
compose stop -t 45 api >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' "$container")
[[ $code == 0 ]] || fail "the api exited with $code after SIGTERM: $(docker logs --tail 20 "$container" 2>&1)"
docker logs "$container" 2>&1 | grep -q '"stopped"\|stopped' || fail "the log does not show a clean stop"
say "passed: built, healthy, predicted with the demo model, not root, stopped cleanly on SIGTERM"
