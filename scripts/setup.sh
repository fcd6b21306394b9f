#!/usr/bin/env bash
# Installs everything the daemon, its tests and its demo need on Debian 12 (run as root), then builds.
# Idempotent: packages already present are not reinstalled, and the build is redone each time.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(etcd-server etcd-client iproute2 iputils-ping iperf3 iptables nftables kmod containernetworking-plugins
  openssl procps curl python3 make g++ ca-certificates
  prometheus  # promtool and a real Prometheus server for the /metrics tests
  wireguard-tools wireguard-go)  # wg(8); userspace WireGuard where the kernel has no wireguard module

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (it installs packages and the tests create network namespaces)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "setup: Node.js 20 or newer is required (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

# The native addon builds against the local Node headers (no download): point node-gyp at them.
if [ -f /usr/include/node/node.h ] && [ -z "${npm_config_nodedir:-}" ]; then
  export npm_config_nodedir=/usr
fi

# flanneld in iptables mode refuses to start without br_netfilter, as upstream does (traffic between pods
# on one bridge would bypass iptables); Docker loads it on its hosts, a fresh machine may not have it.
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  echo "setup: loading the br_netfilter kernel module"
  modprobe br_netfilter || echo "setup: cannot load br_netfilter; flanneld in iptables mode will not start" >&2
fi

# Debian's etcd-server enables and starts a system etcd on 127.0.0.1:2379; tests and the demo start
# their own, so leave the system one alone but never depend on it.

# npm ci (which also builds the native addon) only when the lock file or the native sources changed
# since the last install here; a fresh clone always installs.
stamp=node_modules/.flanneld-ts-install
want=$(cat package-lock.json binding.gyp src/native/* | sha256sum | cut -d' ' -f1)
if [ ! -f build/Release/flannel_native.node ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund
  echo "$want" > "$stamp"
else
  echo "setup: node_modules and the native addon are up to date"
fi
npm run build
echo "setup: done ($(node --version), $(etcd --version | head -1))"
