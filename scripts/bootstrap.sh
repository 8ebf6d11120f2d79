#!/usr/bin/env bash
# Install what tenantflow needs on a fresh Debian machine, idempotently:
# Debian's Open vSwitch, Mininet and etcd, and a venv with the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="openvswitch-switch mininet iputils-ping iperf3 tcpdump ethtool arping iproute2 procps traceroute etcd-server etcd-client nftables udhcpc isc-dhcp-client chromium chromium-driver util-linux e2fsprogs"
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "bootstrap: apt-get install$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.tenantflow-installed"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  log=$(mktemp)
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
    grep -v 'WARNING: Location' "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi
# Keystone for the authentication tests (tests/keystone_fixtures.py), in a venv of its own: its pins
# are not ours. Served by waitress; state in SQLite per test session.
KEYSTONE_VENV=${TENANTFLOW_KEYSTONE_VENV:-/var/cache/tenantflow/keystone-venv}
if [ ! -x "$KEYSTONE_VENV/bin/keystone-manage" ] || [ ! -x "$KEYSTONE_VENV/bin/waitress-serve" ]; then
  echo "bootstrap: Keystone venv in $KEYSTONE_VENV"
  mkdir -p "$(dirname "$KEYSTONE_VENV")"
  "$PY" -m venv "$KEYSTONE_VENV"
  log=$(mktemp)
  if ! "$KEYSTONE_VENV/bin/pip" install -q --disable-pip-version-check 'keystone==30.0.0' 'waitress==3.0.2' \
      >"$log" 2>&1; then
    grep -v 'WARNING: Location' "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
fi
# Debian's Mininet (the PyPI one lacks mnexec) without the rest of dist-packages.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
shim="$PWD/$VENV/debian-mininet"
mkdir -p "$shim"
ln -sfn /usr/lib/python3/dist-packages/mininet "$shim/mininet"
echo "$shim" > "$site/debian-mininet.pth"
