#!/usr/bin/env bash
# The js-libp2p interop peer: npm packages from the committed lock file, installed once outside the clone
# (node_modules and npm's cache under ~/.cache/holepunch-services/interop/js), and peer.mjs copied beside
# them, since Node resolves an ES module's imports from the module's own directory (NODE_PATH is ignored for
# `import`). Nothing compiles. Last line of stdout: the command that runs the peer. Exit 3: node/npm absent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/holepunch-services/interop/js"

node="$(command -v node || true)"
[ -n "$node" ] || { echo "skip: node is not installed (scripts/test.sh installs Debian's nodejs and npm)"; exit 3; }
command -v npm >/dev/null || { echo "skip: npm is not installed (scripts/test.sh installs Debian's nodejs and npm)"; exit 3; }
major="$("$node" -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || { echo "skip: node $("$node" --version) is too old: js-libp2p 3 needs Node 20 or later"; exit 3; }

mkdir -p "$cache"
stamp="$cache/installed.sha256"
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ ! -d "$cache/node_modules" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -f "$stamp"
  cp "$here/package.json" "$here/package-lock.json" "$cache/"
  npm ci --prefix "$cache" --cache "$cache/npm-cache" --no-audit --no-fund --loglevel=error >&2
  echo "$want" > "$stamp"
fi
cmp -s "$here/peer.mjs" "$cache/peer.mjs" || cp "$here/peer.mjs" "$cache/peer.mjs"
echo "$node $cache/peer.mjs"
