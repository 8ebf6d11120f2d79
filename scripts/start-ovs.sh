#!/usr/bin/env bash
# Start the host's Open vSwitch (userspace datapath is used everywhere) if it is not running.
set -euo pipefail
if ovs-vsctl --timeout=2 show >/dev/null 2>&1; then exit 0; fi
mkdir -p /var/run/openvswitch /var/log/openvswitch
/usr/share/openvswitch/scripts/ovs-ctl start --system-id=random --no-monitor >/dev/null 2>&1 || \
  /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random
ovs-vsctl --timeout=5 show >/dev/null
