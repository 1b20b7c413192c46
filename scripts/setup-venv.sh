#!/usr/bin/env bash
# Create .venv (if missing) and install the project into it; extra arguments name pip extras, e.g. "test".
# Nothing is installed when .venv holds a stamp for these extras newer than pyproject.toml: the install is
# editable, so code changes need none; only pyproject.toml (dependencies, entry points) calls for another.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras=""
stamp=.venv/.installed
if [ "$#" -gt 0 ]; then
  extras="[$(IFS=,; echo "$*")]"
  stamp="$stamp-$(IFS=-; echo "$*")"
fi
if [ -e "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
echo "setup-venv.sh: installing the project${extras} into .venv" >&2
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras}"
touch "$stamp" .venv/.installed  # with extras the project itself is installed too
