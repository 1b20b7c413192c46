#!/usr/bin/env bash
# The main job: install the project and run the rendezvous service (embedded store unless REDIS_URL is set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
echo "rendezvous on http://127.0.0.1:${PORT:-8080}  (try: curl http://127.0.0.1:${PORT:-8080}/peers)" >&2
exec .venv/bin/rendezvous
