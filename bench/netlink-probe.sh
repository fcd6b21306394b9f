#!/bin/sh
# Same N peers' FDB, neighbour and route entries programmed two ways in fresh namespaces: the
# `bridge`/`ip -force -batch` processes the vxlan backend runs, and batched rtnetlink messages
# (bench/netlink-probe.c). Prints both timings. Usage: sh bench/netlink-probe.sh [N] (default 5000).
set -eu
N=${1:-5000}
cc -O2 -o /tmp/netlink-probe "$(dirname "$0")/netlink-probe.c"
setup() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip -n "$1" link add flannel.1 type vxlan id 1 dstport 8472 nolearning
  ip -n "$1" addr add 198.19.0.0/32 dev flannel.1
  ip -n "$1" link set flannel.1 up
}
A=fl-probe-$$-a
B=fl-probe-$$-b
trap 'ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true' EXIT
setup "$A"
setup "$B"
python3 - "$N" > /tmp/probe-ip-$$.txt <<'EOF'
import sys
n = int(sys.argv[1])
for i in range(n):
    a = (64 + i) * 8
    print(f'neigh replace 198.19.{a >> 8}.{a & 255} lladdr 02:00:00:{i >> 16:02x}:{(i >> 8) & 255:02x}:{i & 255:02x} dev flannel.1 nud permanent')
for i in range(n):
    a = (64 + i) * 8
    print(f'route replace 198.19.{a >> 8}.{a & 255}/29 via 198.19.{a >> 8}.{a & 255} dev flannel.1 onlink')
EOF
python3 - "$N" > /tmp/probe-br-$$.txt <<'EOF'
import sys
n = int(sys.argv[1])
for i in range(n):
    print(f'fdb replace 02:00:00:{i >> 16:02x}:{(i >> 8) & 255:02x}:{i & 255:02x} dev flannel.1 dst 198.18.0.{10 + i % 240} self permanent')
EOF
ms() { date +%s%N | cut -c1-13; }
t0=$(ms); bridge -n "$A" -force -batch /tmp/probe-br-$$.txt; t1=$(ms); ip -n "$A" -force -batch /tmp/probe-ip-$$.txt; t2=$(ms)
echo "ip -batch: fdb $((t1 - t0)) ms, neigh+route $((t2 - t1)) ms, all $((t2 - t0)) ms"
t0=$(ms); ip -n "$A" -4 route show table main root 198.19.0.0/16 > /dev/null; ip -n "$A" -4 neigh show dev flannel.1 nud all > /dev/null; bridge -n "$A" fdb show dev flannel.1 > /dev/null; t1=$(ms)
echo "text dumps: $((t1 - t0)) ms"
echo "netlink:"
/tmp/netlink-probe "$B" "$N"
rm -f /tmp/probe-ip-$$.txt /tmp/probe-br-$$.txt
