#!/usr/bin/env bash
# Build the go rendezvous interop programs (seal, rendezvous-client) from this module, pinned by go.sum.
# Caches live outside the clone, under ~/.cache/holepunch-services/interop/go (shared with interop/go);
# a second run only relinks. Exit 3 with "skip: <reason>" when there is no Go toolchain.
# The last line on stdout is the directory holding the binaries.
set -euo pipefail
cd "$(dirname "$0")"
GO="$(command -v go || true)"
[ -z "$GO" ] && [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go
if [ -z "$GO" ]; then
  echo "skip: no go toolchain on PATH (nor /usr/local/go/bin/go); install Go 1.26 to run the go rendezvous interop"
  exit 3
fi
cache="${HOLEPUNCH_CACHE:-$HOME/.cache/holepunch-services}/interop"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
# -modcacherw: the module cache stays deletable; -mod=readonly: go.sum is the pin, never rewritten here
export GOFLAGS="-modcacherw -mod=readonly -buildvcs=false"
bin="$cache/go-rendezvous/bin"
mkdir -p "$bin"
nice "$GO" build -o "$bin/" ./cmd/seal ./cmd/rendezvous-client >&2
echo "$bin"
