#!/usr/bin/env bash
# The browser demo's bundle: npm packages from the committed lock file (once), then esbuild (~0.3 s).
set -euo pipefail
cd "$(dirname "$0")/../web"
command -v npm >/dev/null || { echo "build-web: npm is not installed" >&2; exit 1; }
[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error
npm run --silent build > /dev/null
