#!/usr/bin/env bash
# Our interop peer needs no build: it runs from this repo's venv (scripts/setup-venv.sh makes it). The last
# stdout line is the command to run it (interop contract); exit 3 with "skip: <reason>" without the venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="$root/.venv/bin/python"
if [ ! -x "$python" ]; then
  echo "skip: no venv at $root/.venv (scripts/setup-venv.sh test makes it)"
  exit 3
fi
"$python" -c "import libp2p, shared.host, worker.holepunch" 2>&1 >/dev/null | tail -3 >&2 || { echo "skip: the venv lacks py-libp2p or this repo's packages"; exit 3; }
echo "$python $root/interop/py/peer.py"
