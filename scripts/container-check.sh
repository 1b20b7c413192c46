#!/usr/bin/env bash
# Build the Dockerfile with podman and run the image, offline: no registry is reachable, so the base image
# (python:3.11-slim-bookworm) is made locally with debootstrap from Debian's packages, and the Python
# dependencies are fetched as wheels beforehand (prebuilt where PyPI has only source). Then: the container
# runs as uid 10001, answers /healthz with 200 on $PORT, and takes a signed registration (201). It leaves
# only the base image behind (a cache worth a minute of debootstrap): the image and its container are
# removed on the way out, and the build keeps no layers, which would be left dangling once the code changes.
# Exit 77: cannot run here (not root, or podman/debootstrap missing); scripts/test.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "container check skipped: $1"; exit 77; }
[ -z "${HOLEPUNCH_SKIP_CONTAINER_CHECK:-}" ] || skip "HOLEPUNCH_SKIP_CONTAINER_CHECK is set (Cloud Build builds the image in its own step)"
[ "$(id -u)" -eq 0 ] || skip "podman builds here need root"
for cmd in podman debootstrap runc; do command -v "$cmd" >/dev/null || skip "$cmd is not installed"; done

export CONTAINERS_CONF="$PWD/scripts/podman-containers.conf"
BASE=docker.io/library/python:3.11-slim-bookworm
IMAGE=localhost/holepunch-services:check
CACHE=${HOLEPUNCH_CACHE:-/var/tmp/holepunch-services}
PY=.venv/bin/python

if ! podman image exists "$BASE"; then
  echo "making the base image with debootstrap (about a minute)"
  rm -rf "$CACHE/rootfs" && mkdir -p "$CACHE"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$CACHE/rootfs" http://deb.debian.org/debian > "$CACHE/debootstrap.log"
  tar -C "$CACHE/rootfs" -c . | podman import - "$BASE" > /dev/null
  rm -rf "$CACHE/rootfs"
fi

echo "fetching wheels"
mkdir -p wheels
"$PY" -m pip download -q -d wheels -c constraints.txt . "setuptools>=68" wheel "async-timeout>=4.0.3"
shopt -s nullglob
sdists=(wheels/*.tar.gz)
if [ "${#sdists[@]}" -gt 0 ]; then "$PY" -m pip wheel -q --no-deps -w wheels "${sdists[@]}"; rm -f "${sdists[@]}"; fi

echo "building the browser bundle"
scripts/build-web.sh 2> /dev/null || skip "npm is not installed (the image carries the browser bundle)"
name="hp-check-$$"
cleanup() {
  podman rm -f "$name" > /dev/null 2>&1 || true
  podman rmi -f "$IMAGE" > /dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup  # what a run that was killed left
echo "building"
podman build -q --layers=false --pull=never --network=none --build-arg PIP_NO_INDEX=1 -t "$IMAGE" . > /dev/null

port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
podman run -d --pull=never --network=host --name "$name" -e HOST=127.0.0.1 -e PORT="$port" "$IMAGE" > /dev/null
podman exec "$name" id
for _ in $(seq 50); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz" || true)
  [ "$code" = 200 ] && break
  sleep 0.2
done
echo "healthz $code"
echo "demo page $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/") bundle $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/app.js")"
code=$("$PY" - "$port" <<'PY'
import sys, urllib.request
import nacl.signing
from shared.registration import sign_registration
body = sign_registration(nacl.signing.SigningKey.generate(), "container-check", ["/ip4/192.0.2.1/tcp/4001"], 60)
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/peers", data=body, method="POST")
with urllib.request.urlopen(request, timeout=5) as answer:
    print(answer.status)
PY
)
echo "registration $code"
[ "$code" = 201 ] || { podman logs "$name" | tail -20; exit 1; }
podman image inspect "$IMAGE" --format 'image size {{.Size}} bytes'
