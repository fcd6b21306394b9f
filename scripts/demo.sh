#!/usr/bin/env bash
# A 3-node flannel cluster (vxlan backend) in network namespaces on this machine.
#   scripts/demo.sh [up]   set up (scripts/setup.sh), build, start etcd + 3 flanneld + 1 pod per node,
#                          show the leases and pod-to-pod pings, and leave it all running
#   scripts/demo.sh down   stop every process and delete every namespace the demo recorded in .demo/
# Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-up}" in
  up)
    if [ -f scripts/setup.sh ]; then bash scripts/setup.sh; else npm run build; fi
    exec npx tsx testbed/demo.ts up
    ;;
  down)
    exec npx tsx testbed/demo.ts down
    ;;
  *)
    echo "usage: $0 [up|down]" >&2
    exit 2
    ;;
esac
