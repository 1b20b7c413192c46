#!/usr/bin/env bash
# The main job: install the project and run a local stack (the rendezvous on the embedded store unless
# REDIS_URL is set, a relay, three workers), printing how each worker reached the others.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
exec .venv/bin/python scripts/stack.py "$@"
