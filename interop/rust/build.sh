#!/usr/bin/env bash
# Builds the rust-libp2p interop peer and rendezvous client (interop contract: see tests/interop.py).
# Quiet and idempotent; the build cache lives outside the clone, so a second run rebuilds nothing.
# Last line of stdout: the command that runs the peer. The rendezvous client is `rendezvous-client` beside it.
# Exit 3 with "skip: <reason>" when there is no Rust toolchain to build with.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/holepunch-services/interop/rust"

# rustup installs into ~/.cargo/bin, which a non-login shell's PATH may lack
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
    echo "skip: cargo and rustc are not installed (rustup or Debian's cargo brings them)"
    exit 3
fi
# libp2p 0.57 declares rust-version 1.88: an older compiler cannot build it, which is a missing toolchain
# rather than a failing build.
version="$(rustc --version | awk '{print $2}')"
if [ "$(printf '%s\n' 1.88.0 "$version" | sort -V | head -n1)" != 1.88.0 ]; then
    echo "skip: rustc $version is older than the 1.88 that rust-libp2p 0.57 needs"
    exit 3
fi

export CARGO_TARGET_DIR="$cache/target"
mkdir -p "$cache"
# nice: the machine's two cores are shared with the tests running beside the build
nice -n 10 cargo build --release --locked --quiet --manifest-path "$here/Cargo.toml" >&2
echo "$CARGO_TARGET_DIR/release/peer"
