#!/usr/bin/env bash
# Run the image and check it from inside: it runs as uid 10001, answers /healthz with 200, serves the demo
# page and its bundle, and takes a signed registration (201), signed by the image's own Python.
#
# By default the image is built first, with podman and offline: no registry is reachable, so the base image
# (python:3.11-slim-bookworm) is made locally with debootstrap from Debian's packages, and the Python
# dependencies are fetched as wheels beforehand (prebuilt where PyPI has only source). It leaves only the
# base image behind (a cache worth a minute of debootstrap): the image and its container are removed on the
# way out, and the build keeps no layers, which would be left dangling once the code changes.
# With HOLEPUNCH_IMAGE set, that image is checked as it is, with $CONTAINER_ENGINE (default podman; Cloud
# Build's check-image step uses docker, as its steps may not run podman) and kept.
# Exit 77: cannot run here (not root, or podman/debootstrap missing); scripts/test.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "container check skipped: $1"; exit 77; }
[ -z "${HOLEPUNCH_SKIP_CONTAINER_CHECK:-}" ] || skip "HOLEPUNCH_SKIP_CONTAINER_CHECK is set (Cloud Build checks the image it builds in its check-image step)"
ENGINE=${CONTAINER_ENGINE:-podman}
IMAGE=${HOLEPUNCH_IMAGE:-}
name="hp-check-$$"
if [ "$ENGINE" = podman ]; then
  export CONTAINERS_CONF="$PWD/scripts/podman-containers.conf"
fi

if [ -n "$IMAGE" ]; then
  command -v "$ENGINE" >/dev/null || skip "$ENGINE is not installed"
  cleanup() { "$ENGINE" rm -f "$name" > /dev/null 2>&1 || true; }
  trap cleanup EXIT
else
  [ "$ENGINE" = podman ] || skip "only podman builds the image here; set HOLEPUNCH_IMAGE to check a built one"
  [ "$(id -u)" -eq 0 ] || skip "podman builds here need root"
  for cmd in podman debootstrap runc; do command -v "$cmd" >/dev/null || skip "$cmd is not installed"; done
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
  cleanup() {
    podman rm -f "$name" > /dev/null 2>&1 || true
    podman rmi -f "$IMAGE" > /dev/null 2>&1 || true
  }
  trap cleanup EXIT
  cleanup  # what a run that was killed left
  echo "building"
  podman build -q --layers=false --pull=never --network=none --build-arg PIP_NO_INDEX=1 -t "$IMAGE" . > /dev/null
fi

# The checks run inside the container (exec), so they need no published port nor any network of the host's.
"$ENGINE" run -d --name "$name" -e HOST=127.0.0.1 -e PORT=8080 "$IMAGE" > /dev/null
"$ENGINE" exec "$name" id
report=$("$ENGINE" exec -i "$name" python3 - <<'PY'
import time
import urllib.error
import urllib.request

import nacl.signing

from shared.registration import sign_registration

def status(path: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:8080{path}", data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code

deadline = time.monotonic() + 15
while True:
    try:
        healthz = status("/healthz")
        break
    except OSError:  # not listening yet
        if time.monotonic() > deadline:
            healthz = "never answered"
            break
        time.sleep(0.2)
print(f"healthz {healthz}")
print(f"demo page {status('/')} bundle {status('/app.js')}")
body = sign_registration(nacl.signing.SigningKey.generate(), "container-check", ["/ip4/192.0.2.1/tcp/4001"], 60)
print(f"registration {status('/peers', body)}")
PY
) || true
echo "$report"
case "$report" in
  *"healthz 200"*"registration 201"*) ;;
  *) "$ENGINE" logs "$name" 2>&1 | tail -20; exit 1 ;;
esac
"$ENGINE" image inspect "$IMAGE" --format 'image size {{.Size}} bytes'
