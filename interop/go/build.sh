#!/usr/bin/env bash
# Build the go-libp2p interop peer (interop contract: the last stdout line is the command to run it; exit 3
# with "skip: <reason>" when Go is absent). Every cache lives outside the clone, so a second run with
# nothing changed only checks and rebuilds nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/holepunch-services/interop/go"
go_bin="$(command -v go || true)"
[ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ] && go_bin=/usr/local/go/bin/go
if [ -z "$go_bin" ]; then
  echo "skip: the Go toolchain is not installed (go not on PATH nor in /usr/local/go)"
  exit 3
fi
export GOMODCACHE="$cache/mod" GOCACHE="$cache/build" GOPATH="$cache/gopath" GOFLAGS=-mod=readonly
mkdir -p "$cache/bin"
cd "$here"
# nice: the build machines are small and shared; a first build takes minutes of CPU
nice "$go_bin" build -o "$cache/bin/go-peer" . >&2
echo "$cache/bin/go-peer"
