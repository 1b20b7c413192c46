#!/usr/bin/env bash
# The main job: install the project and run a local stack (the rendezvous on the embedded store unless
# REDIS_URL is set, with the browser demo page; a relay; three workers and a chat worker for the page),
# printing how each worker reached the others.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
scripts/build-web.sh || echo "the browser demo page is not built (needs Node.js and npm); the rest runs" >&2
exec .venv/bin/python scripts/stack.py "$@"
